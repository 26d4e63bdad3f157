#!/usr/bin/env bash
# What the browser test (`scripts/test.sh -m browser`) needs besides the dev venv: Chromium from the
# distribution (Debian: the `chromium` package, /usr/bin/chromium) and Playwright's Python driver in .venv.
# Playwright's own browser downloads are never used (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD). Idempotent.
#   sudo scripts/setup_browser.sh        # or as root; apt needs it
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [[ ! -x "$CHROMIUM" ]]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $CHROMIUM is missing and this is not a Debian-like system: install Chromium, set CHROMIUM" >&2
    exit 1
  fi
  echo "==> installing chromium (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
"$CHROMIUM" --version

source "$ROOT/scripts/setup_env.sh" dev
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
python -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-browser.txt" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
python -c "import playwright; print('playwright', __import__('importlib.metadata').metadata.version('playwright'))"
