#!/usr/bin/env bash
# Sets up a virtual environment (once) and runs the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# Lint (rules and line length in pyproject.toml); under `set -e` a finding fails the script.
ruff check .
# Headless Chromium renders report.html in tests/test_predict.py; install it once where apt-get can.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) \
        || echo "could not install chromium: the report-rendering test will be skipped" >&2
fi
python -m pytest -q "$@"
