#!/usr/bin/env bash
# Sets up a virtual environment (once) and runs the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
python -m pytest -q "$@"
