"""LoRA adapters applied per row: rows with different adapters (or none) share one forward pass of the base model.

Each adapted module (a `Linear` or GPT-2's `Conv1D`) gets a forward hook that adds, for the rows of each adapter
in the batch, that adapter's low-rank delta `(x A^T) B^T * scaling`, exactly as PEFT's LoRA layer computes it
(`result + lora_B(lora_A(x)) * scaling`); rows without an adapter get nothing added and cost nothing. Adapters
are read from a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`); only what this can
apply exactly is accepted (plain LoRA on Linear/Conv1D layers), anything else is refused with `LoraError`.

Hooks are added and removed on the engine thread only (between steps), never during a forward pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.pytorch_utils import Conv1D

from .packed_linear import PackedLinear
from .quantization import Int8Linear

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
KEY_PREFIX = "base_model.model."
UNSUPPORTED = {  # config keys whose non-default values change what LoRA computes
    "use_dora": False,
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "bias": "none",
    "layer_replication": None,
}


class LoraError(ValueError):
    """An adapter this engine cannot apply to this model; the message says why."""


@dataclass(frozen=True, eq=False)
class LoraLayer:
    a_t: torch.Tensor  # lora_A.weight transposed: [in, r]
    b_t: torch.Tensor  # lora_B.weight transposed: [r, out]


@dataclass(frozen=True, eq=False)
class LoraWeights:
    """One adapter, ready to apply: per adapted module, its two low-rank factors."""

    name: str
    rank: int
    scaling: float
    layers: dict[str, LoraLayer]  # module name in the base model -> factors


def read_lora(folder: Path, name: str, model: torch.nn.Module) -> LoraWeights:
    """A PEFT LoRA adapter folder, checked against `model` (module names, layer types and shapes)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraError(f"adapter {name} is a {config.get('peft_type')} adapter; only LoRA is supported")
    for key, default in UNSUPPORTED.items():
        if config.get(key, default) not in (default, None, {}, []):
            raise LoraError(f"adapter {name} uses {key}={config[key]!r}, which this server does not apply")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(folder / WEIGHTS_FILE))
    modules = dict(model.named_modules())
    parameter = next(model.parameters())
    layers: dict[str, LoraLayer] = {}
    for key, lora_a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module_name = key.removeprefix(KEY_PREFIX).removesuffix(".lora_A.weight")
        lora_b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        module = modules.get(module_name)
        if lora_b is None or module is None:
            raise LoraError(f"adapter {name} adapts {module_name}, which the served model does not have")
        in_features, out_features = _features(module, module_name, name)
        if lora_a.shape != (rank, in_features) or lora_b.shape != (out_features, rank):
            raise LoraError(
                f"adapter {name}: {module_name} has factors {tuple(lora_a.shape)} and {tuple(lora_b.shape)}; the "
                f"served model's layer needs ({rank}, {in_features}) and ({out_features}, {rank})"
            )
        as_model = {"dtype": parameter.dtype, "device": parameter.device}
        layers[module_name] = LoraLayer(lora_a.t().contiguous().to(**as_model), lora_b.t().contiguous().to(**as_model))
    if not layers:
        raise LoraError(f"adapter {name} has no LoRA weights in {WEIGHTS_FILE}")
    return LoraWeights(name, rank, scaling, layers)


def _features(module: torch.nn.Module, module_name: str, adapter: str) -> tuple[int, int]:
    if isinstance(module, (torch.nn.Linear, PackedLinear, Int8Linear)):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):  # GPT-2's transposed linear layer: weight [in, out]
        return module.weight.shape[0], module.weight.shape[1]
    raise LoraError(f"adapter {adapter} adapts {module_name}, a {type(module).__name__}; only linear layers are")


class BatchedLora:
    """The model's adapters and, during a forward pass, which rows use which.

    Each row's delta is computed on its own, over its own positions only (not the batch's left padding), so its
    matrix shapes are those it has when it runs alone: its output is the same bit for bit whatever shares its
    batch (a grouped product over several rows rounds differently, and sampling at temperature 1 amplifies that).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._modules = dict(model.named_modules())
        self.adapters: dict[str, LoraWeights] = {}
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._rows: list[tuple[int, int, LoraWeights]] = []  # (row, its positions, adapter) for adapted rows

    def add(self, weights: LoraWeights) -> None:
        """Engine thread only."""
        self.adapters[weights.name] = weights
        for module_name in weights.layers:
            if module_name not in self._hooks:
                self._hooks[module_name] = self._modules[module_name].register_forward_hook(self._hook(module_name))

    def remove(self, name: str) -> None:
        """Engine thread only; the caller makes sure no job still uses it."""
        self.adapters.pop(name, None)
        still_adapted = {m for weights in self.adapters.values() for m in weights.layers}
        for module_name in [m for m in self._hooks if m not in still_adapted]:
            self._hooks.pop(module_name).remove()

    @contextmanager
    def rows(self, adapters: Sequence[LoraWeights | None], lengths: Sequence[int]) -> Iterator[None]:
        """During the forward pass inside, row i's last `lengths[i]` positions get adapter `adapters[i]`'s delta."""
        self._rows = [(row, n, w) for row, (w, n) in enumerate(zip(adapters, lengths, strict=True)) if w is not None]
        try:
            yield
        finally:
            self._rows = []

    def _hook(self, module_name: str):
        def add_deltas(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            for row, length, weights in self._rows:
                layer = weights.layers.get(module_name)
                if layer is not None:
                    x = inputs[0][row, -length:]
                    output[row, -length:] += (x @ layer.a_t) @ layer.b_t * weights.scaling

        return add_deltas
