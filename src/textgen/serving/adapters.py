"""The LoRA adapters a worker serves: loaded from the model store only, counted while requests use them.

An adapter is served under its store name (`sql-lora` for `sql-lora:abc123`). Loading reads the store model
(labels from `scripts/import_model.py`: `kind: lora-adapter`, `base_model`, ...), checks it belongs to the served
model, reads its weights off the event loop, and installs it on the engine thread between steps. Unloading stops
new requests from choosing it at once, waits for the requests that use it to finish, then removes it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bentoml

from textgen.engine import BatchEngine
from textgen.engine.lora import LoraError, LoraWeights, read_lora

from .errors import AdapterRefused, UnknownAdapter
from .model_store import ModelInfo, ModelNotInStore, find_model

logger = logging.getLogger(__name__)

ADAPTER_KIND = "lora-adapter"


@dataclass(eq=False)
class Adapter:
    name: str  # what requests choose it by: the store name
    tag: str  # the store tag it was loaded from
    weights: LoraWeights
    base_model: str  # as the adapter records it
    users: int = 0  # requests using it now
    unloading: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


def _short_name(reference: str) -> str:
    """`org/name@rev`, a path or a store tag, as a comparable model name."""
    last = re.split(r"[/\\]", reference.strip().rstrip("/\\"))[-1]
    return re.split(r"[@:]", last)[0].lower()


def check_base(adapter_tag: str, base_model: str, served_tag: str, served_source: str) -> None:
    """An adapter trained on `base_model` belongs to the served model if that is the same name as the served
    store tag's, or as the hub id or folder it was imported from. (Layer shapes are checked when weights are read.)
    """
    source = served_source.removeprefix("local:").removeprefix("hf://")
    if _short_name(base_model) not in {_short_name(served_tag), _short_name(source)}:
        raise AdapterRefused(
            f"adapter {adapter_tag} was trained for base model '{base_model}', but this server serves "
            f"'{served_tag}' (from {served_source})"
        )


def check_adapter_tags(tags: Sequence[str], served: bentoml.Model) -> None:
    """At `bentoml serve`, before any worker starts: every LORA_ADAPTERS tag is a LoRA adapter in the store,
    trained for the served model (its weights are read when the worker loads it)."""
    for tag in tags:
        stored = find_model(tag)  # ModelNotInStore says how to import
        _check_labels(stored, str(served.tag), str(served.info.metadata.get("source", "unknown")))


def _check_labels(stored: bentoml.Model, served_tag: str, served_source: str) -> str:
    """The adapter's base model, once its labels say it is an adapter for the served model."""
    labels = stored.info.labels
    if labels.get("kind") != ADAPTER_KIND:
        raise AdapterRefused(f"{stored.tag} is not a LoRA adapter (import one with scripts/import_model.py)")
    base = labels.get("base_model", "")
    check_base(str(stored.tag), base, served_tag, served_source)
    return base


class AdapterRegistry:
    def __init__(self, engine: BatchEngine, served: ModelInfo, max_loras: int) -> None:
        self.engine = engine
        self.served = served
        self.max_loras = max_loras
        self.loaded: dict[str, Adapter] = {}
        self._loading: set[str] = set()

    def names(self) -> list[str]:
        return [name for name, adapter in self.loaded.items() if not adapter.unloading]

    @contextmanager
    def hold(self, names: Sequence[str | None]) -> Iterator[list[LoraWeights | None]]:
        """Each row's adapter weights (None: the base model), held (never unloaded) until the block ends."""
        adapters = [None if name is None else self._resolve(name) for name in names]
        held = [a for a in adapters if a is not None]
        for adapter in held:
            adapter.users += 1
            adapter.idle.clear()
        try:
            yield [None if a is None else a.weights for a in adapters]
        finally:
            for adapter in held:
                adapter.users -= 1
                if adapter.users == 0:
                    adapter.idle.set()

    def _resolve(self, name: str) -> Adapter:
        adapter = self.loaded.get(name)
        if adapter is None or adapter.unloading:
            raise UnknownAdapter(f"no adapter '{name}' is loaded; loaded: {', '.join(self.names()) or 'none'}")
        return adapter

    # --- loading ------------------------------------------------------------------------------------------------
    def load_now(self, tag: str) -> Adapter:
        """Load from a thread without an event loop (start-up): blocks until the engine has it."""
        name = self._reserve(tag)
        try:
            adapter = self._read(tag, name)
            self._install(adapter).result()
            return self._register(adapter)
        finally:
            self._loading.discard(name)

    async def load(self, tag: str) -> Adapter:
        name = self._reserve(tag)
        try:
            adapter = await asyncio.to_thread(self._read, tag, name)
            await asyncio.wrap_future(self._install(adapter))
            return self._register(adapter)
        finally:
            self._loading.discard(name)

    async def unload(self, name: str) -> None:
        adapter = self._resolve(name)
        adapter.unloading = True  # new requests get 404 from now on
        if adapter.users:
            logger.info("unloading adapter %s once its %d running request(s) finish", name, adapter.users)
            await adapter.idle.wait()
        await asyncio.wrap_future(self.engine.call(lambda: self.engine.lora.remove(name)))
        del self.loaded[name]
        logger.info("unloaded adapter %s", name, extra={"adapter": name})

    def _reserve(self, tag: str) -> str:
        name = _short_name(tag)
        if name in self.loaded or name in self._loading:
            raise AdapterRefused(f"adapter {name} is already loaded")
        if len(self.loaded) + len(self._loading) >= self.max_loras:
            raise AdapterRefused(f"{self.max_loras} adapters are loaded (MAX_LORAS): unload one before loading {name}")
        self._loading.add(name)
        return name

    def _read(self, tag: str, name: str) -> Adapter:
        try:
            stored = find_model(tag)
        except ModelNotInStore:
            raise UnknownAdapter(f"'{tag}' is not in the model store; import it with scripts/import_model.py") from None
        base = _check_labels(stored, self.served.tag, self.served.source)
        try:
            weights = read_lora(Path(stored.path), name, self.engine.model)
        except (LoraError, OSError, KeyError, ValueError) as exc:
            raise AdapterRefused(f"adapter {stored.tag} cannot be applied: {exc}") from None
        return Adapter(name, str(stored.tag), weights, base)

    def _install(self, adapter: Adapter) -> Future[object]:
        return self.engine.call(lambda: self.engine.lora.add(adapter.weights))

    def _register(self, adapter: Adapter) -> Adapter:
        adapter.idle.set()
        self.loaded[adapter.name] = adapter
        logger.info(
            "loaded adapter %s (%s, rank %d, %d layers)",
            adapter.name,
            adapter.tag,
            adapter.weights.rank,
            len(adapter.weights.layers),
            extra={"adapter": adapter.name},
        )
        return adapter
