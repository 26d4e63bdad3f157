#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies of a profile; does nothing when they are already installed.
#   source scripts/setup_env.sh serve   # what serving needs: requirements.txt (serve.sh)
#   source scripts/setup_env.sh dev     # that plus the test tools and the optional import sources:
#                                       # requirements-dev.txt, which includes requirements-import.txt (test.sh; the default)
# A venv set up for dev serves as it is; one set up for serve gets the dev set when tests run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# One stamp per profile, each the hash of the files that define it. The dev stamp keeps its old name and
# contents, so that venvs set up before profiles existed are not installed again.
setup_profile="${1:-dev}"
dev_stamp="$VENV/.requirements.sha256"
dev_hash="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" "$ROOT/requirements-import.txt" \
  | sha256sum | cut -d' ' -f1)"
serve_stamp="$VENV/.requirements-serve.sha256"
serve_hash="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
case "$setup_profile" in
  dev) stamp="$dev_stamp" wanted="$dev_hash" requirements=requirements-dev.txt ;;
  serve) stamp="$serve_stamp" wanted="$serve_hash" requirements=requirements.txt ;;
  *)
    echo "error: setup_env.sh: unknown profile '$setup_profile' (serve or dev)" >&2
    return 2 2>/dev/null || exit 2
    ;;
esac

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# The dev set includes the serve set, so a current dev stamp satisfies both profiles.
if [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" && "$(cat "$dev_stamp" 2>/dev/null)" != "$dev_hash" ]]; then
  echo "==> installing the $setup_profile dependencies into $VENV ($requirements)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/$requirements" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  echo "$wanted" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export BENTOML_DO_NOT_TRACK=true
