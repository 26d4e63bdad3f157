"""Linear layers through oneDNN with weights packed once, for float32 models on the CPU.

PyTorch runs `nn.Linear` and GPT-2's `Conv1D` through MKL's sgemm, which on this class of machine (AMD EPYC,
AVX2) reaches about 10 GFLOP/s for the LM head's skinny products; oneDNN with a weight reordered once into its
blocked layout does the same product 3-5x faster (scripts/profile_engine.py measures it). This is the path
inductor takes for frozen CPU linears (`mkldnn._linear_pointwise`), without compiling anything.

Modules keep their names, `in_features`, `out_features` and a `weight` in `nn.Linear`'s [out, in] orientation
(a view of the original, no copy), so forward hooks (LoRA) and code that reads the vocabulary size still work.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W held in oneDNN's packed layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # [out, in], a view of the original (no copy) kept for readers: tied embeddings, shapes, parameter counts.
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(model: nn.Module) -> bool:
    """oneDNN packing pays on the CPU in float32 (the default there); other devices and dtypes keep their path."""
    parameter = next(model.parameters())
    return (
        parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")  # a build without it keeps PyTorch's own path
    )


def pack_linears(model: nn.Module) -> int:
    """Replace every `nn.Linear` and `Conv1D` (the LM head included) by a PackedLinear; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            packed = _packed(child)
            if packed is not None:
                setattr(parent, name, packed)
                replaced += 1
    return replaced


def _packed(module: nn.Module) -> PackedLinear | None:
    if type(module) is nn.Linear:
        return PackedLinear(module.weight, module.bias)
    if type(module) is Conv1D:  # weight [in, out]: x @ W + b
        return PackedLinear(module.weight.t(), module.bias)
    return None
