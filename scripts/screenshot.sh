#!/usr/bin/env bash
# Builds the documentation site (scripts/docs.sh), serves site/ on 127.0.0.1 and takes
# headless-Chromium screenshots of its home page, the model table and an API page:
#   ./scripts/screenshot.sh [DIR]     (default /tmp/docs-shots; needs chromium:
#                                      apt-get install -y chromium)
# PORT (default 8765) and SIZE (width,height; default 1280,1800) change the server's port and
# the window.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/docs-shots}"
port="${PORT:-8765}"
size="${SIZE:-1280,1800}"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) || {
    echo "screenshot: no chromium found; install it: apt-get install -y chromium" >&2
    exit 1
}
mkdir -p "$out"
scripts/docs.sh
.venv/bin/python -m http.server "$port" --bind 127.0.0.1 --directory site >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
.venv/bin/python - "$port" <<'PY'
import sys, time, urllib.request

for _ in range(100):  # up to 10 s for the server to answer
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("screenshot: the server did not start")
PY
for page in home: models:models/ api-se_common:api/se_common/; do
    name=${page%%:*}
    # --no-sandbox: Chromium refuses to run as root with its sandbox; the budget lets the
    # page's scripts and styles settle before the shot
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
        --virtual-time-budget=5000 --window-size="$size" \
        --screenshot="$out/$name.png" "http://127.0.0.1:$port/${page#*:}" 2>/dev/null
    echo "screenshot: $out/$name.png (http://127.0.0.1:$port/${page#*:})" >&2
done
