#!/usr/bin/env bash
# The main job: builds PyTorch SE layers, converts them to Flax, runs both, prints the differences.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python examples/convert_se_block.py "$@"
