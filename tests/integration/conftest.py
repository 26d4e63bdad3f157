"""A real `bentoml serve` of a tiny locally built model, in a temporary BentoML home, on a loopback port."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
from transformers import AutoTokenizer

from tests.conftest import REPO

API_KEY = "test-key-0123456789"
FILE_KEY = "file-key-abcdef-0123"
MODEL_NAME = "tiny-gpt2"
# Server settings a test gives explicitly; stray ones in the environment are dropped.
KEY_SETTINGS = ("API_KEY", "API_KEYS", "API_KEYS_FILE", "ADMIN_API_KEYS", "KEY_LIMITS", "DEFAULT_KEY_LIMITS")
FAULT_MARKER = "__inject_fault__"  # prompts starting with it fail mid-generation (see textgen.serving.faults)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bentoml_bin() -> str:
    return str(Path(sys.executable).with_name("bentoml"))


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    keys_file: Path

    def post(self, path: str, key: str | None = API_KEY, **kwargs) -> requests.Response:
        headers = {"x-api-key": key} if key else {}
        kwargs.setdefault("timeout", 120)
        return requests.post(self.url + path, headers=headers | kwargs.pop("headers", {}), **kwargs)

    def get(self, path: str, key: str | None = API_KEY, **kwargs) -> requests.Response:
        headers = {"x-api-key": key} if key else {}
        return requests.get(self.url + path, headers=headers | kwargs.pop("headers", {}), timeout=30, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_idle(self, timeout: float = 15) -> dict:
        """Wait until no generation holds a slot; returns the admission snapshot from /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            load = self.get("/health", key=None).json()["generations"]
            if load["running"] == 0:
                return load
            time.sleep(0.1)
        raise AssertionError(f"slot not freed: {load}")

    def wait_running(self, count: int, timeout: float = 30) -> None:
        """Wait until `count` generations hold slots (the requests are in the engine)."""
        deadline = time.monotonic() + timeout
        while self.get("/health", key=None).json()["generations"]["running"] < count:
            assert time.monotonic() < deadline, f"{count} generations never ran at once"
            time.sleep(0.05)


def server_env(store_home: Path, log: Path, env: dict[str, str]) -> dict[str, str]:
    """This process's environment with `env`, a BentoML home of the server's own, and no stray server settings."""
    # Each server gets its own BentoML home sharing the model store: servers sharing a home share (and wipe)
    # one Prometheus multiprocess directory.
    home = log.parent / f"bentoml-home-{log.stem}"
    home.mkdir(exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(store_home / "models")
    full_env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **env}
    for name in (*KEY_SETTINGS, "AUTH_DISABLED", "MODEL_TAG", "HOST", "PORT"):
        if name not in env:
            full_env.pop(name, None)
    return full_env


def start_server(store_home: Path, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [bentoml_bin(), "serve", "service:TextGeneration", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=server_env(store_home, log, env),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or busy loading
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@contextmanager
def serving(home: Path, tag: str, workdir: Path, **env: str) -> Iterator[str]:
    """`bentoml serve` of store model `tag` from BentoML home `home`, ready; yields its URL and stops it after."""
    log = workdir / "serve.log"
    process, url = start_server(home, log, {"MODEL_TAG": tag, "API_KEY": API_KEY, **env})
    try:
        wait_ready(process, url, log)
        yield url
    finally:
        stop(process)


def import_model(
    home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """scripts/import_model.py ARGS into the store of BentoML home `home` (`env`: more variables)."""
    return subprocess.run(
        [sys.executable, "scripts/import_model.py", *args],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **(env or {})},
        check=check,
        capture_output=True,
        text=True,
    )


def stored_version(home: Path, name: str) -> Path:
    """The folder of the one version of `name` in the store of BentoML home `home`."""
    [version] = [p for p in (home / "models" / name).iterdir() if p.is_dir()]
    return version


@pytest.fixture(scope="session")
def store_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A BentoML home whose store holds the tiny model, imported by the project's own script."""
    home = tmp_path_factory.mktemp("bentoml-home")
    import_model(home, "--source", str(tiny_model_dir), "--name", MODEL_NAME)
    return home


@contextlib.contextmanager
def served(store_home: Path, workdir: Path, env: dict[str, str]) -> Iterator[Server]:
    """A `bentoml serve` with settings `env`, ready, logging to `workdir`/serve.log; stopped afterwards."""
    log = workdir / "serve.log"
    process, url = start_server(store_home, log, env)
    try:
        wait_ready(process, url, log)
        yield Server(url, process, log, workdir / "keys.txt")
    finally:
        stop(process)


@pytest.fixture(scope="session")
def server(store_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("server")
    keys_file = workdir / "keys.txt"
    keys_file.write_text(FILE_KEY + "\n")
    env = {
        "MODEL_TAG": f"{MODEL_NAME}:latest",
        "API_KEY": API_KEY,
        "API_KEYS_FILE": str(keys_file),
        "MAX_CONCURRENCY": "5",
        "MAX_QUEUE": "8",
        "QUEUE_TIMEOUT_S": "600",  # a busy CI machine must not turn waiting into 503s
        "MAX_BODY_BYTES": "65536",
        "FAULT_INJECTION_MARKER": FAULT_MARKER,
    }
    with served(store_home, workdir, env) as running:
        yield running


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def chat_server(tiny_model_dir, tmp_path_factory) -> Iterator[str]:
    """The tiny model again, with a chat template, in a store of its own."""
    folder = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    home = tmp_path_factory.mktemp("chat-store")
    subprocess.run(
        [sys.executable, "scripts/import_model.py", "--source", str(folder), "--name", "tiny-chat"],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    with serving(home, "tiny-chat:latest", tmp_path_factory.mktemp("chat-server")) as url:
        yield url


@pytest.fixture(scope="module")
def oai(server: Server) -> openai.OpenAI:
    """The official SDK on the tiny model's server."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat(chat_server: str) -> openai.OpenAI:
    """The official SDK on the chat model's server."""
    return openai.OpenAI(base_url=chat_server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


# A second server with named keys (one given by its digest), an admin key, per-key limits and short client
# timeouts: the key, quota, usage and slow-client tests share it.
NAMED_KEYS = {
    "trickle": "trickle-key-0123456789",
    "flood": "flood-key-0123456789",
    "rpm-limited": "rpm-limited-key-0123456789",
    "tpm-limited": "tpm-limited-key-0123456789",
    "hashed": "hashed-key-0123456789",
}
ADMIN_KEY = "admin-key-0123456789"
KEY_LIMITS = "flood:concurrency=2;rpm-limited:rpm=3;tpm-limited:tpm=20"
SHORT_TIMEOUT_S = 2.0  # BODY_TIMEOUT_S, HEADER_TIMEOUT_S and KEEPALIVE_TIMEOUT_S of the keyed server


def keys_file_text(keys: dict[str, str]) -> str:
    """`name:key` lines, and `name:sha256:HEX` for the key named `hashed`."""
    lines = ["# named keys"]
    for name, key in keys.items():
        secret = "sha256:" + hashlib.sha256(key.encode()).hexdigest() if name == "hashed" else key
        lines.append(f"{name}:{secret}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def keyed_server(store_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("keyed-server")
    keys_file = workdir / "keys.txt"
    keys_file.write_text(keys_file_text(NAMED_KEYS))
    env = {
        "MODEL_TAG": f"{MODEL_NAME}:latest",
        "API_KEYS_FILE": str(keys_file),
        "ADMIN_API_KEYS": f"ops:{ADMIN_KEY}",
        "KEY_LIMITS": KEY_LIMITS,
        "MAX_CONCURRENCY": "5",
        "MAX_QUEUE": "16",
        "QUEUE_TIMEOUT_S": "600",
        "BODY_TIMEOUT_S": str(SHORT_TIMEOUT_S),
        "HEADER_TIMEOUT_S": str(SHORT_TIMEOUT_S),
        "KEEPALIVE_TIMEOUT_S": str(SHORT_TIMEOUT_S),
        "MAX_HEADER_BYTES": "8192",
    }
    with served(store_home, workdir, env) as running:
        yield running
