"""Start and stop the servers under test, each on a free loopback port, in its own process group.

Also puts the random-weight model into the store when a run needs it and it is missing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

# scripts/textgen_bench/common/servers.py: the project is installed editable, so this is the checkout.
REPO_ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
RANDOM_MODEL_NAME = "distilgpt2-random"  # what `import_model.py --random-weights` stores


class ServerFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str  # 200 once the model is loaded


@dataclass(frozen=True)
class RunningServer:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_note(self) -> str | None:
        """Why the server is gone, if it is: a run's failures then say so instead of only 'ConnectError'."""
        code = self.process.poll()
        if code is None:
            return None
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return f"{self.name} process ended during the run ({how}, not stopped by the benchmark); see {self.log}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _bentoml_cli() -> str:
    # The `bentoml` entry point of the interpreter running us, so server and client share one environment.
    candidate = Path(sys.executable).parent / "bentoml"
    return str(candidate) if candidate.exists() else "bentoml"


def batched_server_spec(
    port: int,
    model_tag: str,
    api_key: str,
    limit: int,
    request_timeout_s: float,
    extra_env: Mapping[str, str] | None = None,
) -> ServerSpec:
    """`extra_env` overrides or adds settings (the soak sets its own queue bounds and a fault marker)."""
    env = {
        "MODEL_TAG": model_tag,
        "API_KEY": api_key,
        "MAX_CONCURRENCY": str(limit),
        "MAX_BATCH_SIZE": str(limit),
        "MAX_QUEUE": str(max(64, 4 * limit)),  # the load generator never queues more than it sends
        "QUEUE_TIMEOUT_S": str(request_timeout_s),
        "BENTOML_DO_NOT_TRACK": "true",
        **(extra_env or {}),
    }
    argv = [_bentoml_cli(), "serve", "service:TextGeneration", "--host", HOST, "--port", str(port)]
    return ServerSpec("server", argv, env, "/readyz")


def ensure_random_model(model_tag: str) -> None:
    """Import DistilGPT-2's architecture with random weights (the project's script) if the store lacks it.

    Only the script's own random-weight tag can be made here; any other tag must already be in the store.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(model_tag)
        return
    except NotFound:
        pass
    if model_tag not in (RANDOM_MODEL_NAME, f"{RANDOM_MODEL_NAME}:latest"):
        raise ServerFailed(f"{model_tag} is not in the model store; import it with scripts/import_model.py")
    source = os.environ.get("OFFLINE_MODEL_DIR", str(REPO_ROOT.parent / "shared/models/distilgpt2-no-weights"))
    script = str(REPO_ROOT / "scripts" / "import_model.py")
    subprocess.run([sys.executable, script, "--source", source, "--random-weights"], cwd=REPO_ROOT, check=True)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"server exited with {proc.returncode} while starting; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise ServerFailed(f"server not ready within {timeout_s:.0f} s; see {log}")


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the server's own process group (it was started as its leader), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def serve(spec: ServerSpec, port: int, log: Path, startup_timeout_s: float = 180.0) -> Iterator[RunningServer]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            spec.argv,
            cwd=REPO_ROOT,
            env={**os.environ, **spec.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it reaches its workers, and nothing else
        )
        try:
            base_url = f"http://{HOST}:{port}"
            _wait_ready(proc, base_url + spec.ready_path, startup_timeout_s, log)
            yield RunningServer(spec.name, base_url, proc, log)
        finally:
            _stop(proc)
