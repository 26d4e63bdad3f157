"""scripts/serve.sh itself, as a user runs it: it must listen on loopback only unless HOST says otherwise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from tests.conftest import REPO
from tests.integration.conftest import API_KEY, MODEL_NAME, free_port, server_env, stop, wait_ready


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The TCP (address, port) pairs that process `pid` and its descendants listen on."""
    parent = psutil.Process(pid)
    tree = {pid, *(child.pid for child in parent.children(recursive=True))}
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections(kind="tcp")
        if conn.pid in tree and conn.status == psutil.CONN_LISTEN
    }


def test_serve_sh_binds_loopback_by_default(store_home: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve-sh.log"
    # No HOST: the default is what is under test. The store model and API_KEY skip the import and key steps.
    env = server_env(store_home, log, {"MODEL_TAG": f"{MODEL_NAME}:latest", "API_KEY": API_KEY, "PORT": str(port)})
    process = subprocess.Popen(
        ["bash", "scripts/serve.sh"],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # stop() signals the process group
    )
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", log, timeout=60)
        listening = listening_addresses(process.pid)
        assert ("127.0.0.1", port) in listening, listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, f"not on loopback only: {listening}"
        assert f"==> http://127.0.0.1:{port}  (try: curl" in log.read_text()  # the printed URL is the bound one
    finally:
        stop(process)
    assert process.returncode == 0, log.read_text()[-3000:]
