"""llama.cpp's llama-server as a system under test: where `scripts/build_llama_server.sh` put it, and how to start it.

The build script leaves `bin/llama-server` and `gguf/<model>-<type>.gguf` (converted from the store model with
llama.cpp's own converter, so both servers hold the same weights) under `.cache/llama.cpp`, or `$LLAMA_CACHE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .servers import HOST, REPO_ROOT, ServerSpec

GGUF_TYPES = ("f32", "f16", "q8_0")
BUILD_HINT = "scripts/build_llama_server.sh {tag}"


def llama_cache() -> Path:
    return Path(os.environ.get("LLAMA_CACHE", REPO_ROOT / ".cache" / "llama.cpp"))


@dataclass(frozen=True)
class LlamaSystem:
    """One GGUF type served by llama-server, or why it cannot be."""

    gguf_type: str
    binary: Path
    gguf: Path

    @property
    def name(self) -> str:
        return f"llama-{self.gguf_type}"

    def missing(self, model_tag: str) -> str | None:
        """Why this system is skipped (the binary or the converted file is not there), with how to make it."""
        for what, path in (("llama-server", self.binary), ("GGUF file", self.gguf)):
            if not path.is_file():
                return f"no {what} at {path}; build it with `{BUILD_HINT.format(tag=model_tag)}`"
        return None

    def spec(self, port: int, slots: int, context_per_slot: int, threads: int) -> ServerSpec:
        """`-np slots` parallel sequences (continuous batching), each with `context_per_slot` tokens of KV cache."""
        argv = [str(self.binary), "-m", str(self.gguf), "--host", HOST, "--port", str(port)]
        argv += ["-np", str(slots), "-c", str(slots * context_per_slot), "-t", str(threads), "--no-webui"]
        return ServerSpec(self.name, argv, {}, "/health")  # /health answers 503 until the model is loaded


def llama_systems(model_tag: str, types: list[str], binary: Path | None = None) -> list[LlamaSystem]:
    cache = llama_cache()
    name = model_tag.split(":")[0]
    return [
        LlamaSystem(t, binary or cache / "bin" / "llama-server", cache / "gguf" / f"{name}-{t}.gguf") for t in types
    ]
