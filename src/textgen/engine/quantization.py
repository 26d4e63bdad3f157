"""Opt-in int8: every linear layer (the LM head included) as PyTorch's dynamic int8 quantization, on the CPU.

Weights are quantized once to int8, with a scale per output channel; activations are quantized per call and per
token (fbgemm kernels). A step reads a quarter of the fp32 weight bytes, at some cost in quality:
`scripts/measure_quantization.py` measures greedy-token agreement and perplexity against fp32 (figures in
docs/benchmark.md). Never the default. GPT-2's `Conv1D` (weight [in, out]) becomes an `nn.Linear` first, which
dynamic quantization knows. Modules keep their names, `in_features` and `out_features`, so LoRA hooks still
attach (their deltas stay fp32).
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

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
    """Replace every `nn.Linear` and `Conv1D` by an Int8Linear; returns how many."""
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


class Int8Linear(nn.Module):
    """A dynamic int8 linear layer whose activations are quantized per row (per token), not per tensor.

    PyTorch's dynamic quantization picks one activation scale for the whole input: in a prefill that is every token
    of the prompt, and in a decoding step every row of the batch, so one token with large activations (Llama-family
    models have such outlier tokens) coarsens all the others, and a row's output would depend on its batch. Scaling
    each row to a maximum of 1 first makes the one scale fit every row; the product is linear, so the row's scale
    is multiplied back afterwards, and the bias (kept fp32) is added then. On SmolLM2-135M this took the perplexity
    of a 440-token text from +197 % over fp32 to +9.5 % (and 8-bit activations, below, to +0.9 %).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        bare = nn.Linear(self.in_features, self.out_features, bias=False)
        with torch.no_grad():
            bare.weight.copy_(linear.weight)
        bare.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # a weight scale per output row
        with warnings.catch_warnings():
            # torch 2.13 marks its quantized tensor types deprecated (pytorch#184982); they still work, and the
            # server should not print that at every start.
            warnings.filterwarnings("ignore", message=".*quantize_per_.*deprecated", category=UserWarning)
            self.quantized = DynamicInt8Linear.from_float(bare)
        # All 8 bits for activations where the CPU adds u8 x s8 products in int32 (VNNI): with rows scaled to 1 that
        # measured far closer to fp32 than PyTorch's default of 7 bits (SmolLM2-135M perplexity +0.9 % against
        # +9.5 %, scripts/measure_quantization.py). Without VNNI, fbgemm sums pairs of products in int16 first, which
        # 8-bit activations saturate (a tiny Llama's logits fell to cosine 0.982 from 0.9997): 7 bits there.
        self.reduce_range = not cpu_sums_int8_in_int32()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
        packed = self.quantized._packed_params._packed_params
        y = torch.ops.quantized.linear_dynamic(x / scale, packed, reduce_range=self.reduce_range) * scale
        return y if self.bias is None else y + self.bias


@functools.cache
def cpu_sums_int8_in_int32() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI), read from Linux's /proc/cpuinfo; elsewhere, no."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) is not None


def _quantized(linear: nn.Linear) -> Int8Linear:
    return Int8Linear(linear)
