#!/usr/bin/env bash
# Creates .venv (once) and installs se-flax with the pinned versions of constraints.txt.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "se-flax needs Python >= 3.11, got " + sys.version' 
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.se-flax-installed
want="$(cat pyproject.toml constraints.txt | sha256sum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setting up .venv (pinned versions from constraints.txt) ..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
        -c constraints.txt -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
    echo "$want" > "$stamp"
fi
