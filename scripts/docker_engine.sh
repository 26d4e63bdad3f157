#!/usr/bin/env bash
# Make `docker build` / `docker run` work on a Debian machine that ships only the docker CLI:
# install and start dockerd if no engine answers, and create an offline base image when no
# registry can be reached (Debian bookworm's Python 3.11 via debootstrap, tagged like the
# official image so `FROM python:3.11-slim` builds without a pull).
#
#   sudo scripts/docker_engine.sh              # engine + base image (idempotent)
#   scripts/docker_engine.sh --engine-only     # engine only (a registry is reachable)
#   scripts/docker_engine.sh --compose         # also Compose (Debian's docker-compose v1) if missing
#
# Env: BASE_IMAGE (default python:3.11-slim), DEBIAN_MIRROR (default: the mirror apt uses),
#      DOCKERD_LOG (default /tmp/dockerd.log).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
SUITE=bookworm # Debian 12 ships Python 3.11, the version the image is pinned to
engine_only=false
compose=false
for arg in "$@"; do
    case $arg in
        --engine-only) engine_only=true ;;
        --compose) compose=true ;;
        *) echo "usage: $0 [--engine-only] [--compose]" >&2; exit 2 ;;
    esac
done

log() { echo "docker_engine: $*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

debian_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
    # deb822 sources first, then the classic one-line format.
    local uri
    uri=$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -z $uri ]] && uri=$(awk '/^deb / && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

start_engine() {
    if docker info >/dev/null 2>&1; then
        log "engine answers: $(docker version --format '{{.Server.Version}}')"
        return
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    log "starting dockerd (log: $DOCKERD_LOG)"
    rm -f /var/run/docker.pid # left over by a dockerd that did not stop cleanly
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && { log "engine up"; return; }
        sleep 0.5
    done
    log "dockerd did not answer within 30 s; see $DOCKERD_LOG"
    exit 1
}

make_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE present"
        return
    fi
    apt_install debootstrap
    local mirror rootfs
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /tmp/rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' RETURN
    log "building $BASE_IMAGE offline from $mirror ($SUITE, about 90 s)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >/dev/null
    # Behave like the official image: `python`/`pip` on PATH and pip allowed to install
    # system-wide (BentoML's Dockerfile runs `pip install uv`).
    ln -sf python3 "$rootfs/usr/bin/python"
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "offline base made by scripts/docker_engine.sh (debootstrap $SUITE)" \
        - "$BASE_IMAGE" >/dev/null
    log "made $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec))"
}

start_engine
$engine_only || make_base_image
if $compose && ! docker compose version >/dev/null 2>&1; then apt_install docker-compose; fi
