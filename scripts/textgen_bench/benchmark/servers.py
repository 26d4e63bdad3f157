"""The benchmark's servers under test: the batched server and the baseline, one process per system at a time."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..common.servers import HOST, RunningServer, ServerSpec, batched_server_spec, free_port, serve
from .records import SystemName


def baseline_server_spec(port: int, model_tag: str, api_key: str, limit: int) -> ServerSpec:
    argv = [sys.executable, "-m", "textgen_bench.baseline_server", "--host", HOST, "--port", str(port)]
    argv += ["--model-tag", model_tag, "--max-concurrency", str(limit)]
    return ServerSpec("baseline", argv, {"API_KEY": api_key}, "/health")


class Servers:
    """At most one running process per system; a new limit replaces it (so --fixed-limit starts each once)."""

    def __init__(self, args: argparse.Namespace, api_key: str, log_dir: Path) -> None:
        self.args, self.api_key, self.log_dir = args, api_key, log_dir
        self._running: dict[str, tuple[int, contextlib.ExitStack, RunningServer]] = {}

    def get(self, system: SystemName, limit: int) -> RunningServer:
        current = self._running.get(system)
        if current and current[0] == limit and current[2].exit_note() is None:
            return current[2]
        self.stop(system)
        port = free_port()
        if system == "server":
            spec = batched_server_spec(port, self.args.model_tag, self.api_key, limit, self.args.request_timeout)
        else:
            spec = baseline_server_spec(port, self.args.model_tag, self.api_key, limit)
        stack = contextlib.ExitStack()
        print(f"  starting {system} (limit {limit}) on port {port} ...", flush=True)
        server = stack.enter_context(serve(spec, port, self.log_dir / f"{system}-limit{limit}.log"))
        self._running[system] = (limit, stack, server)
        return server

    def stop(self, system: str) -> None:
        if system in self._running:
            self._running.pop(system)[1].close()

    def close(self) -> None:
        for system in list(self._running):
            self.stop(system)
