#!/usr/bin/env bash
# Sets up a virtual environment (once) and runs the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e ".[dev]"
python -m pytest -q "$@"
