"""Greedy decoding's next token without the LM head's full float32 product, and still float32 greedy's token.

At batch 1 a DistilGPT-2 step reads 324 MB of weights, 154 MB of them the LM head's, and only the largest logit is
needed when a row decodes greedily. So the screen multiplies by a bfloat16 copy of the LM head first (half the
bytes; oneDNN, with AVX512-BF16 where the CPU has it), and bounds how far each screened logit can be from the
exact one (Cauchy-Schwarz over the rounding of the weights, of the hidden state and of the output):

    |logit_j - screened_j| <= |x - x~| |w_j| + |x~| (|w_j - w~_j| + n 2^-24 |w~_j|) + 2^-8 |screened_j|

Any token whose screened logit plus its bound falls below some token's screened logit minus that one's bound
cannot have the largest logit. The few that can (about two on average, at most 9-12, on the random-weight
DistilGPT-2 and on the real SmolLM2-135M: `scripts/measure_greedy_screen.py`) get their logits again in float32
from the original weight rows, and the largest wins, the lowest token id on a tie as argmax picks; if a step had
more than MAX_CANDIDATES a row, it takes the float32 product instead. The result is the float32
argmax, up to the last-bit rounding in which any two float32 kernels differ.

`GreedyScreen.timed` builds it only where it pays: it times the screen against the float32 product at load and
keeps it if it is at least 10 % faster (on CPUs without bfloat16 instructions it may not be).
"""

from __future__ import annotations

import torch

from .packed_linear import PackedLinear
from .timing import time_in_turns

OUTPUT_ROUNDING = 2.0**-8  # bfloat16's relative rounding of the product's output (8 bits of mantissa), rounded up
SAFETY = 1.01  # the bound's own float32 arithmetic
MAX_CANDIDATES = 256  # a row's candidates beyond which recomputing them costs more than the float32 product saves


class GreedyScreen:
    """The argmax of `lm_head(hidden)` for each row of `hidden` [rows, in_features], from a bfloat16 screen."""

    def __init__(self, lm_head: PackedLinear) -> None:
        self.lm_head = lm_head
        weight = lm_head.weight.detach()
        low = weight.to(torch.bfloat16)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(low, None)
        exact, rounded = weight.double(), low.double()
        accumulation = lm_head.in_features * 2.0**-24  # float32 sums of in_features products
        self.weight_norms = exact.norm(dim=1).float()
        self.rounding_norms = ((exact - rounded).norm(dim=1) + accumulation * rounded.norm(dim=1)).float()

    @classmethod
    def timed(cls, lm_head: object, rounds: int = 5) -> tuple[GreedyScreen | None, dict[str, float]]:
        """A screen for `lm_head` if it is a packed float32 layer and the screen is at least 10 % faster than its
        product at one row (seconds: the best of `rounds`, taken in turns); else None."""
        if not isinstance(lm_head, PackedLinear) or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None, {}
        screen = cls(lm_head)
        x = torch.randn(1, lm_head.in_features)
        taken = time_in_turns({"float32": lambda: lm_head(x).argmax(dim=-1), "screen": lambda: screen(x)}, rounds)
        best = {name: min(times) for name, times in taken.items()}
        return (screen if best["screen"] < 0.9 * best["float32"] else None), best

    @property
    def usable(self) -> bool:
        """Not while a forward hook (a LoRA adapter on the LM head) changes the layer's output."""
        return not self.lm_head._forward_hooks

    def candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (row, token) pairs of float32 `x` [rows, in_features] whose logit may be its row's largest."""
        x_low = x.to(torch.bfloat16)
        screened = torch.ops.mkldnn._linear_pointwise(x_low, self.packed, None, "none", [], "").float()
        if self.lm_head.bias is not None:
            screened = screened + self.lm_head.bias
        input_error = (x - x_low.float()).norm(dim=1, keepdim=True)
        bound = input_error * self.weight_norms + x_low.float().norm(dim=1, keepdim=True) * self.rounding_norms
        bound = (bound + OUTPUT_ROUNDING * screened.abs()) * SAFETY
        floor = (screened - bound).amax(dim=1, keepdim=True)
        rows, tokens = ((screened + bound) >= floor).nonzero(as_tuple=True)
        return rows, tokens

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Token ids [rows]: each row's float32 argmax."""
        x = hidden.float()
        rows, tokens = self.candidates(x)
        if len(tokens) > MAX_CANDIDATES * len(x):  # a screen this loose saves nothing: the full product
            return self.lm_head(x).argmax(dim=-1)
        exact = (self.lm_head.weight[tokens] * x[rows]).sum(dim=1)
        if self.lm_head.bias is not None:
            exact = exact + self.lm_head.bias[tokens]
        best = torch.full((len(x),), float("-inf")).scatter_reduce(0, rows, exact, "amax")
        winners = exact == best[rows]
        picked = torch.full((len(x),), self.lm_head.out_features).scatter_reduce(
            0, rows[winners], tokens[winners], "amin"
        )
        lost = picked == self.lm_head.out_features  # no candidate: a hidden state that is not finite
        if lost.any():
            picked[lost] = self.lm_head(x[lost]).argmax(dim=-1)
        return picked
