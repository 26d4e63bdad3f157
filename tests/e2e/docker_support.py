"""What the container tests share: the docker CLI, the textgen image (built or reused), the load balancer's image,
and the replicas' JSON logs."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
LB_DIR = ROOT / "deploy/lb"

Completed = subprocess.CompletedProcess[str]


def docker(*args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> Completed:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout, input=stdin)


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logs_of(name: str) -> str:
    logs = docker("logs", name, check=False)
    return logs.stdout + logs.stderr


def textgen_image() -> str:
    """TEXTGEN_IMAGE if set (it must exist), else a fresh build with scripts/build_image.py (random weights)."""
    if tag := os.environ.get("TEXTGEN_IMAGE"):
        docker("image", "inspect", tag)  # fails the test run if it is not there
        return tag
    cmd = [sys.executable, str(ROOT / "scripts/build_image.py"), "--random-weights"]
    extra_ca = os.environ.get("TEXTGEN_EXTRA_CA") or (str(LOCAL_CA_DIR) if any(LOCAL_CA_DIR.glob("*.crt")) else "")
    cmd += [arg for ca in filter(None, extra_ca.split(":")) for arg in ("--extra-ca", ca)]
    subprocess.run(cmd, check=True, timeout=1800)
    built = dict(line.split("=", 1) for line in (ROOT / "build/image.env").read_text().split())
    return built["IMAGE"]


def lb_image() -> str:
    """The HAProxy image of deploy/lb, tagged by a hash of that folder: built once, rebuilt only when it changes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in LB_DIR.rglob("*") if p.is_file()):
        digest.update(path.relative_to(LB_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    tag = f"textgen-lb:{digest.hexdigest()[:12]}"
    if docker("image", "inspect", tag, check=False).returncode != 0:
        env = dict(os.environ)
        if "DOCKER_BUILDKIT" not in env and docker("buildx", "version", check=False).returncode != 0:
            env["DOCKER_BUILDKIT"] = "0"  # the legacy builder: no buildx plugin here
        built = subprocess.run(["docker", "build", "-t", tag, str(LB_DIR)], capture_output=True, text=True, env=env)
        if built.returncode != 0:
            raise RuntimeError(f"building {tag} from {LB_DIR} failed:\n{(built.stdout + built.stderr)[-3000:]}")
    return tag


def json_log(name: str) -> list[dict[str, Any]]:
    """A container's JSON log lines, oldest first, each with `ts`: when docker received it (epoch seconds).

    stdout and stderr come back as two streams; docker's own timestamps put them back in one order."""
    logs = docker("logs", "-t", name, check=False)
    lines = []
    for raw in (logs.stdout + logs.stderr).splitlines():
        stamp, _, text = raw.partition(" ")
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue  # BentoML prints a few plain lines before the service sets up JSON logging
        if isinstance(record, dict):
            lines.append({**record, "ts": docker_timestamp(stamp)})
    return sorted(lines, key=lambda r: r["ts"])  # stable: lines of one stream keep their order


def docker_timestamp(stamp: str) -> float:
    """`2026-11-23T20:35:38.4958748Z` (RFC 3339, up to nanoseconds, trailing zeros cut) as epoch seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")
