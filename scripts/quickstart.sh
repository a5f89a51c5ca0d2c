#!/usr/bin/env bash
# Sets up a virtual environment (once) and trains on the bundled synthetic dataset (offline; about 37 minutes on 2 idle CPU cores, install included).
# Extra arguments go to train.py, e.g. `bash scripts/quickstart.sh --num_train_epochs 8`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# accelerate launch sets OMP_NUM_THREADS=1 unless told otherwise (its --cpu flag aside), so torch ran on one thread:
# give it every core.
accelerate launch --num_processes 1 --num_cpu_threads_per_process "${OMP_NUM_THREADS:-$(nproc)}" \
  train.py --config configs/quickstart.yaml "$@"
