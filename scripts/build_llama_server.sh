#!/usr/bin/env bash
# llama.cpp's llama-server, the CPU server users would pick instead of ours, built from source for the benchmark,
# and the store model converted to GGUF with llama.cpp's own converter, so both serve the same weights.
#   scripts/build_llama_server.sh                          # build only (about 17 min on 2 cores, once)
#   scripts/build_llama_server.sh distilgpt2-random:latest # and convert that store model to f32, f16 and q8_0
# The sources come from the llama-cpp-python sdist on the package index (its vendor/llama.cpp); everything lands
# in .cache/llama.cpp (or $LLAMA_CACHE): bin/llama-server and gguf/<model>-<type>.gguf. Nothing is committed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh dev

VERSION=0.3.36
CACHE="${LLAMA_CACHE:-$ROOT/.cache/llama.cpp}"
SRC="$CACHE/llama_cpp_python-$VERSION"
LLAMA="$SRC/vendor/llama.cpp"
mkdir -p "$CACHE/bin" "$CACHE/gguf"

if [[ ! -d "$LLAMA" ]]; then
  echo "==> downloading the llama-cpp-python==$VERSION sdist"
  python -m pip download -q --no-binary :all: --no-deps --dest "$CACHE" "llama-cpp-python==$VERSION" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
fi

if [[ ! -x "$CACHE/bin/llama-server" ]]; then
  echo "==> building llama-server (about 17 min on 2 cores)"
  cmake -S "$LLAMA" -B "$LLAMA/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build "$LLAMA/build" --target llama-server -j "$(nproc)"
  # The binary links llama.cpp's shared libraries by rpath, so it is linked into place rather than copied.
  ln -sf "$LLAMA/build/bin/llama-server" "$CACHE/bin/llama-server"
fi
echo "llama-server: $CACHE/bin/llama-server"

[[ $# -ge 1 ]] || exit 0
TAG="$1"
NAME="${TAG%%:*}"
# A store model is a save_pretrained folder, which the converter reads in place.
HF_DIR="$(python -c 'import bentoml, sys; print(bentoml.models.get(sys.argv[1]).path)' "$TAG")"
for type in f32 f16 q8_0; do
  out="$CACHE/gguf/$NAME-$type.gguf"
  [[ -f "$out" && "$out" -nt "$HF_DIR/config.json" ]] && continue
  echo "==> converting to $out"
  PYTHONPATH="$LLAMA/gguf-py" python "$LLAMA/convert_hf_to_gguf.py" "$HF_DIR" --outtype "$type" --outfile "$out" \
    >/dev/null
done
ls -la "$CACHE/gguf/$NAME"-*.gguf
