"""Per-row token selection: every row of a batch keeps its own sampling parameters.

Semantics follow transformers' logits processors (repetition penalty, then
temperature, top-k, top-p), vectorised over the rows that use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(seed: int | None) -> torch.Generator:
    """A seeded generator makes a request's samples reproducible, whatever else shares its batch."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """Divide positive (multiply negative) logits of already seen tokens by the row's penalty."""
    penalties = penalties.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / penalties, logits * penalties)
    return torch.where(seen, penalised, logits)


def filter_top_k_top_p(sorted_logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (with -inf) the sorted logits each row's top-k and top-p exclude; the best token always stays."""
    positions = torch.arange(sorted_logits.shape[1]).unsqueeze(0)
    beyond_k = (top_k.unsqueeze(1) > 0) & (positions >= top_k.unsqueeze(1))
    masked = sorted_logits.masked_fill(beyond_k, float("-inf"))
    probs = masked.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    beyond_p = mass_before > top_p.unsqueeze(1)
    return masked.masked_fill(beyond_p, float("-inf"))


def select_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """Pick one next token per row from float32 `logits` [rows, vocab]."""
    finfo = torch.finfo(logits.dtype)
    if seen is not None:
        penalties = torch.tensor([p.repetition_penalty for p in params], dtype=logits.dtype)
        # A valid but tiny penalty (5e-324 is 0 in float32) sends seen logits to inf: keep every logit finite.
        logits = apply_repetition_penalty(logits, seen, penalties).clamp(finfo.min, finfo.max)
    tokens = logits.argmax(dim=-1)
    sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled_rows:
        return tokens

    rows = torch.tensor(sampled_rows)
    temperatures = torch.tensor([params[i].temperature for i in sampled_rows], dtype=logits.dtype)
    # Shift each row's best logit to 0 before dividing: a tiny temperature (any > 0 is valid, and may be 0 in
    # float32) then sends the others to -inf, never the best one to inf, so softmax cannot make NaN from inf - inf.
    picked = logits[rows]
    scaled = (picked - picked.amax(dim=-1, keepdim=True)) / temperatures.clamp(min=finfo.tiny).unsqueeze(1)
    # Only the rows that filter are sorted: a row sampled from sorted probabilities lands on another token for
    # the same random draw, so sorting every row would make a seeded row's tokens depend on its batch.
    filtered = [j for j, i in enumerate(sampled_rows) if params[i].top_k > 0 or params[i].top_p < 1.0]
    order: dict[int, torch.Tensor] = {}
    if filtered:
        index = torch.tensor(filtered)
        ordered, sort_order = scaled[index].sort(dim=-1, descending=True)
        top_k = torch.tensor([params[sampled_rows[j]].top_k for j in filtered])
        top_p = torch.tensor([params[sampled_rows[j]].top_p for j in filtered], dtype=logits.dtype)
        scaled[index] = filter_top_k_top_p(ordered, top_k, top_p)
        order = dict(zip(filtered, sort_order, strict=True))
    probs = scaled.softmax(dim=-1)
    for j, row in enumerate(sampled_rows):
        choice = torch.multinomial(probs[j], 1, generator=generators[row])
        tokens[row] = order[j][choice] if j in order else choice
    return tokens
