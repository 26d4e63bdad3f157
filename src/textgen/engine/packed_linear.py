"""Linear layers through oneDNN with weights packed once, for float32 models on the CPU.

PyTorch runs `nn.Linear` and GPT-2's `Conv1D` through MKL's sgemm, which on this class of machine (AMD EPYC,
AVX2) reaches about 10 GFLOP/s for the LM head's skinny products; oneDNN with a weight reordered once into its
blocked layout does the same product 3-5x faster (scripts/profile_engine.py measures it). This is the path
inductor takes for frozen CPU linears (`mkldnn._linear_pointwise`), without compiling anything.

Modules keep their names, `in_features`, `out_features` and a `weight` in `nn.Linear`'s [out, in] orientation
(a view of the original, no copy), so forward hooks (LoRA) and code that reads the vocabulary size still work.

A decoding step at a small batch multiplies a few rows by every weight, so its cost is reading the weights. How fast
oneDNN reads them depends on the row count: on an AVX-512 EPYC, 1 or 2 rows streamed the weights 12-20 % slower
than 5 rows did (its kernels for a handful of rows differ). `pad_small_products` times the LM head once at load
and, where a few more rows are faster, pads smaller products with rows of zeros up to that count: they cost
nothing in a product that waits for memory, and their outputs are dropped.

An MLP's first layer also applies the activation that follows it (GPT-2's tanh GELU, Llama's SiLU) as a oneDNN
post-op, in the same pass: GPT-2's `gelu_new` alone is eight element-wise ops, 0.5 ms of a 13 ms batch-1 step.
A layer with a forward hook (a LoRA adapter adds its delta before the activation) runs the activation apart.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .timing import time_in_turns


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W held in oneDNN's packed layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # [out, in], a view of the original (no copy) kept for readers: tied embeddings, shapes, parameter counts.
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.min_rows = 1  # products of fewer rows are padded up to this many (pad_small_products)
        self.activation: tuple[str, str] | None = None  # oneDNN's name and algorithm of an activation it applies
        self._zeros = torch.zeros(0)  # the padding: never written, so threads sharing the layer may share it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows >= self.min_rows:
            return self._product(x)
        if self._zeros.shape != (self.min_rows, self.in_features):
            with torch.inference_mode(False):  # an ordinary tensor, usable in and out of inference mode
                self._zeros = torch.zeros(self.min_rows, self.in_features, dtype=x.dtype)
        padded = torch.cat((x.reshape(rows, self.in_features), self._zeros[rows:]))
        return self._product(padded)[:rows].view(*x.shape[:-1], self.out_features)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        name, algorithm = self.activation if self.fuses_activation else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, name, [], algorithm)

    @property
    def fuses_activation(self) -> bool:
        """Applies the activation in its product, unless a forward hook must see the product before it."""
        return self.activation is not None and not self._forward_hooks

    def extra_repr(self) -> str:
        activation = f", activation={'-'.join(filter(None, self.activation))}" if self.activation else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
            f"{activation}, min_rows={self.min_rows}"
        )


class ActivationInLinear(nn.Module):
    """Stands where an activation was: passes the product through when the linear layer before it applied the
    activation already, and applies it otherwise."""

    def __init__(self, activation: nn.Module, linear: PackedLinear) -> None:
        super().__init__()
        self.activation = activation
        self.__dict__["linear"] = linear  # not a submodule: the layer has its own place in the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.linear.fuses_activation else self.activation(x)


def can_pack(model: nn.Module) -> bool:
    """oneDNN packing pays on the CPU in float32 (the default there); other devices and dtypes keep their path."""
    parameter = next(model.parameters())
    return (
        parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")  # a build without it keeps PyTorch's own path
    )


# An MLP's first linear layer, and the activation applied to its output and to nothing else, in the GPT-2 and Llama
# families (Llama: down_proj(act_fn(gate_proj(x)) * up_proj(x))).
ACTIVATION_AFTER = {"c_fc": "act", "gate_proj": "act_fn"}
ONEDNN_ACTIVATIONS = {  # transformers' activation classes as oneDNN post-ops: (name, algorithm)
    "NewGELUActivation": ("gelu", "tanh"),
    "GELUTanh": ("gelu", "tanh"),
    "PytorchGELUTanh": ("gelu", "tanh"),
    "FastGELUActivation": ("gelu", "tanh"),
    "GELUActivation": ("gelu", "none"),
    "SiLUActivation": ("swish", ""),
    "SiLU": ("swish", ""),
}


def pack_linears(model: nn.Module, fuse_activations: bool = True) -> int:
    """Replace every `nn.Linear` and `Conv1D` (the LM head included) by a PackedLinear, and with `fuse_activations`
    let an MLP's first layer apply the activation that follows it; returns how many layers were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            packed = _packed(child)
            if packed is not None:
                setattr(parent, name, packed)
                replaced += 1
        if fuse_activations:
            _fuse_activation(parent)
    return replaced


def _fuse_activation(parent: nn.Module) -> None:
    for linear_name, activation_name in ACTIVATION_AFTER.items():
        linear, activation = getattr(parent, linear_name, None), getattr(parent, activation_name, None)
        post_op = ONEDNN_ACTIVATIONS.get(type(activation).__name__)
        if isinstance(linear, PackedLinear) and isinstance(activation, nn.Module) and post_op is not None:
            linear.activation = post_op
            setattr(parent, activation_name, ActivationInLinear(activation, linear))


def _packed(module: nn.Module) -> PackedLinear | None:
    if type(module) is nn.Linear:
        return PackedLinear(module.weight, module.bias)
    if type(module) is Conv1D:  # weight [in, out]: x @ W + b
        return PackedLinear(module.weight.t(), module.bias)
    return None


def fastest_row_count(layer: PackedLinear, most: int = 8, rounds: int = 5) -> tuple[int, dict[int, float]]:
    """The row count from 1 to `most` for which `layer`'s product takes least time (seconds: the best of `rounds`,
    taken in turns so that a machine's drift touches every count alike); 1 unless another is 5 % faster."""
    inputs = {rows: torch.zeros(rows, layer.in_features) for rows in range(1, most + 1)}
    taken = time_in_turns({rows: functools.partial(layer._product, x) for rows, x in inputs.items()}, rounds)
    best = {rows: min(times) for rows, times in taken.items()}
    fastest = min(best, key=best.__getitem__)
    return (fastest if best[fastest] < 0.95 * best[1] else 1), best


def pad_small_products(model: nn.Module, rows: int | None = None) -> tuple[int, dict[int, float]]:
    """Make every packed layer pad products of fewer than `rows` rows up to `rows`; by default `rows` is the fastest
    count for the model's largest packed layer (the LM head), timed at 1 to 8 rows. Returns the count and the times
    (seconds) it was chosen from."""
    layers = [module for module in model.modules() if isinstance(module, PackedLinear)]
    times: dict[int, float] = {}
    if rows is None:
        rows = 1
        if layers:
            rows, times = fastest_row_count(max(layers, key=lambda layer: layer.in_features * layer.out_features))
    for layer in layers:
        layer.min_rows = rows
    return rows, times
