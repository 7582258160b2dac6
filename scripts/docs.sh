#!/usr/bin/env bash
# Builds the documentation site into site/ (mkdocs build --strict: any warning fails it), or with
# --serve serves it on http://127.0.0.1:8000, rebuilt on every change (warnings shown, not fatal).
# Other arguments go to mkdocs.
set -euo pipefail
export NO_MKDOCS_2_WARNING=1  # mkdocs-material's notice on every build
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${1:-}" = "--serve" ]; then
    shift
    exec .venv/bin/mkdocs serve -a 127.0.0.1:8000 "$@"
fi
exec .venv/bin/mkdocs build --strict --site-dir site "$@"
