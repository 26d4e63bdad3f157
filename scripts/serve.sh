#!/usr/bin/env bash
# One command from a fresh clone to a running server:
#   installs what serving needs into .venv (requirements.txt, no test tools), imports the model into the
#   BentoML store if missing, and runs `bentoml serve` with an API key (API_KEY, else .api-key, else a new one).
# It listens on 127.0.0.1:3000, this machine only; HOST and PORT change that (HOST=0.0.0.0: every interface).
# Without the Hugging Face hub it serves DistilGPT-2's architecture with RANDOM weights (noise text),
# built from the config and tokenizer in $OFFLINE_MODEL_DIR, and says so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh serve

HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-3000}"
OFFLINE_MODEL_DIR="${OFFLINE_MODEL_DIR:-$ROOT/../shared/models/distilgpt2-no-weights}"

if [[ -z "${MODEL_TAG:-}" ]]; then
  if python scripts/import_model.py; then
    export MODEL_TAG="distilgpt2:latest"
  elif [[ -f "$OFFLINE_MODEL_DIR/config.json" ]]; then
    echo "==> the hub is out of reach: importing DistilGPT-2's architecture with RANDOM weights from $OFFLINE_MODEL_DIR"
    python scripts/import_model.py --source "$OFFLINE_MODEL_DIR" --random-weights
    export MODEL_TAG="distilgpt2-random:latest"
  else
    echo "error: no model: the hub is out of reach and $OFFLINE_MODEL_DIR has no config.json. Set OFFLINE_MODEL_DIR to a folder with DistilGPT-2's config.json and tokenizer (random weights), or import a model with scripts/import_model.py --source DIR and set MODEL_TAG" >&2
    exit 2
  fi
fi

if [[ -z "${API_KEY:-}" && -z "${API_KEYS:-}" && -z "${API_KEYS_FILE:-}" && "${AUTH_DISABLED:-false}" != "true" ]]; then
  if [[ ! -s .api-key ]]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(32))' > .api-key)
    echo "==> generated a new API key in .api-key"
  fi
  API_KEY="$(cat .api-key)"
  export API_KEY
  echo "==> API key (from .api-key): $API_KEY"
fi

if [[ "$MODEL_TAG" == *random* ]]; then
  echo "==> SERVING $MODEL_TAG: DistilGPT-2 architecture with RANDOM weights. Its text is noise."
else
  echo "==> serving $MODEL_TAG"
fi
url_host="$HOST"
[[ "$HOST" == *:* ]] && url_host="[$HOST]"  # an IPv6 address goes in brackets in a URL
url="http://$url_host:$PORT"
echo "==> $url  (try: curl -H \"x-api-key: \$(cat .api-key)\" -d '{\"prompt\": \"Hello\"}' $url/generate)"
if [[ "$HOST" == "0.0.0.0" || "$HOST" == "::" ]]; then
  echo "==> HOST=$HOST: listening on every interface, open to other machines that can reach port $PORT"
fi
# On SIGTERM (Ctrl-C) in-flight and queued requests finish first, for at most SHUTDOWN_TIMEOUT_S seconds.
exec bentoml serve service:TextGeneration --host "$HOST" --port "$PORT" \
  --timeout-graceful-shutdown "${SHUTDOWN_TIMEOUT_S:-120}"
