#!/usr/bin/env bash
# Creates .venv (once) and installs se-flax with the pinned versions of constraints.txt.
# Re-running is cheap and silent: nothing is reinstalled unless pyproject.toml or
# constraints.txt changed. An install shows its steps and pip's progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
say() { echo "setup: $*" >&2; }
fresh=
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "se-flax needs Python >= 3.11, got " + sys.version' 
    say "creating .venv with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])') ..."
    "$PYTHON" -m venv .venv
    fresh=1
fi
stamp=.venv/.se-flax-installed
# the kernels (setup.py builds se_flax/_kernels into se_flax/) are rebuilt when they change
want="$(cat pyproject.toml constraints.txt setup.py se_flax/_kernels/* | sha256sum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    pins=$(grep -c '==' constraints.txt)
    # the largest pinned packages, with their versions, for the progress line
    headline=$(for p in jax flax torch optax orbax-checkpoint scikit-learn matplotlib mkdocs-material; do
        v=$(grep -i "^$p==" constraints.txt | cut -d= -f3) && echo "$p $v" || true
    done | paste -sd, - | sed 's/,/, /g; s/torch \([^,]*\)/torch \1 (CPU)/')
    if [ -n "$fresh" ] || [ ! -f "$stamp" ]; then
        say "installing se-flax and its $pins pinned packages ($headline, ...) into .venv;" \
            "the first time takes a minute or two ..."
    else
        say "pyproject.toml, constraints.txt or the kernels changed: updating .venv ($pins pinned packages) ..."
    fi
    start=$SECONDS
    # pip's own lines, one per package file (scripts/pip_progress.py), not its "already
    # satisfied" lines nor progress bars
    # PIP_CONSTRAINT: the pins hold in the isolated build of the kernels too (jaxlib's headers)
    PIP_CONSTRAINT=constraints.txt .venv/bin/python -m pip install --disable-pip-version-check \
        --progress-bar off -c constraints.txt -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2) |
        .venv/bin/python -u scripts/pip_progress.py >&2
    echo "$want" > "$stamp"
    say ".venv ready ($((SECONDS - start)) s)"
fi
