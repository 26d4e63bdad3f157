#!/usr/bin/env bash
# Image size, and time from `docker run` to /readyz 200 over RUNS fresh containers (loopback only).
#   scripts/measure_image.sh [IMAGE (default textgen:latest)] [RUNS (default 3)]
set -euo pipefail
image=${1:-textgen:latest}
runs=${2:-3}

size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image $image: $size bytes ($(awk "BEGIN {printf \"%.2f\", $size / 1e9}") GB)"
key=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
for i in $(seq "$runs"); do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    name="textgen-measure-$$-$i"
    start=$(date +%s.%N)
    docker run -d --rm --name "$name" -p "127.0.0.1:$port:3000" -e API_KEY="$key" "$image" >/dev/null
    trap 'docker rm -f "$name" >/dev/null 2>&1' EXIT
    for _ in $(seq 1800); do # 180 s at most
        curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break
        sleep 0.1
    done
    curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" || { echo "run $i: not ready in 180 s" >&2; exit 1; }
    echo "run $i: ready $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $start}") s after docker run"
    docker stop -t 10 "$name" >/dev/null
done
