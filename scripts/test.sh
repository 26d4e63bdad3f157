#!/usr/bin/env bash
# One command from a fresh clone to a test run: installs the dev set into .venv, checks style, runs pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` or `scripts/test.sh tests/unit`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh dev  # explicit: without it the sourced script sees test.sh's arguments

ruff check . && ruff format --check .
exec python -m pytest "$@"
