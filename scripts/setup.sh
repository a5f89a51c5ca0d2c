#!/usr/bin/env bash
# Sourced by quickstart.sh and test.sh: creates .venv (once), installs the project with its dev extra, activates it.
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e ".[dev]"
