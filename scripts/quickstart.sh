#!/usr/bin/env bash
# Sets up a virtual environment (once) and trains on the bundled synthetic dataset (offline; about 60 minutes on 2 CPU cores).
# Extra arguments go to train.py, e.g. `bash scripts/quickstart.sh --num_train_epochs 8`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
accelerate launch --num_processes 1 train.py --config configs/quickstart.yaml "$@"
