"""Opt-in int8: every linear layer (the LM head included) as PyTorch's dynamic int8 quantization, on the CPU.

Weights are quantized once to int8, with a scale per output channel; activations are quantized per call (fbgemm
kernels). A step reads a quarter of the fp32 weight bytes, at some cost in quality: `scripts/measure_quantization.py`
measures greedy-token agreement and perplexity against fp32, and docs/benchmark.md has the figures. Never the
default. GPT-2's `Conv1D` (weight [in, out]) becomes an `nn.Linear` first, which dynamic quantization knows.
Modules keep their names, `in_features` and `out_features`, so LoRA hooks still attach (their deltas stay fp32).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from transformers.pytorch_utils import Conv1D

QUANTIZATIONS = ("none", "int8")


class QuantizationError(ValueError):
    """The model cannot be quantized as asked (the message names the setting)."""


def check_quantizable(device: torch.device, dtype: torch.dtype | str) -> None:
    if device.type != "cpu" or dtype != torch.float32:
        raise QuantizationError(
            f"MODEL_QUANTIZATION=int8 runs on the CPU in float32 only; this model loads on {device} as {dtype} "
            "(set MODEL_DEVICE=cpu and MODEL_DTYPE=float32, or MODEL_QUANTIZATION=none)"
        )


def quantize_int8(model: nn.Module) -> int:
    """Replace every `nn.Linear` and `Conv1D` by a dynamically quantized int8 linear; returns how many."""
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            linear = _as_linear(child)
            if linear is not None:
                setattr(parent, name, _quantized(linear))
                replaced += 1
    return replaced


def _as_linear(module: nn.Module) -> nn.Linear | None:
    if type(module) is nn.Linear:
        return module
    if type(module) is Conv1D:  # x @ W + b with W [in, out]: the same product as nn.Linear with W transposed
        in_features, out_features = module.weight.shape
        linear = nn.Linear(in_features, out_features, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        return linear
    return None


def _quantized(linear: nn.Linear) -> DynamicInt8Linear:
    linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # a scale per output row: closer to fp32
    with warnings.catch_warnings():
        # torch 2.13 marks its quantized tensor types deprecated (pytorch#184982); they still work, and the server
        # should not print that at every start. Dropping them from torch would need another int8 path (torchao).
        warnings.filterwarnings("ignore", message=".*quantize_per_.*deprecated", category=UserWarning)
        return DynamicInt8Linear.from_float(linear)
