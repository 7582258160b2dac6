#!/usr/bin/env bash
# The test command: sets up .venv, lints, runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -n 2 --dist worksteal "$@"  # idle workers take queued tests
