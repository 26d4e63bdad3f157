"""Log-probabilities of tokens under the model's own distribution: log-softmax of the raw logits.

Taken before the grammar mask, repetition penalty and temperature, as vLLM reports them by default: they say
what the model thinks of a token, not how this request's sampler happened to treat it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens at this position, (id, logprob), best first


def token_logprobs(logprobs: torch.Tensor, chosen: Sequence[int], top_k: Sequence[int]) -> list[TokenLogprob]:
    """Per row of `logprobs` [rows, vocab] (already log-softmaxed): the chosen token's logprob and the top k."""
    ids = torch.tensor(list(chosen), dtype=torch.long)
    picked = logprobs.gather(1, ids.unsqueeze(1)).squeeze(1).tolist()
    widest = max(top_k, default=0)
    top_values, top_ids = logprobs.topk(widest, dim=-1) if widest else (None, None)
    entries = []
    for row, (token, logprob, k) in enumerate(zip(ids.tolist(), picked, top_k, strict=True)):
        top = ()
        if k and top_values is not None and top_ids is not None:
            top = tuple(zip(top_ids[row, :k].tolist(), top_values[row, :k].tolist(), strict=True))
        entries.append(TokenLogprob(token, logprob, top))
    return entries


def prompt_logprobs(logits: torch.Tensor, prompt_ids: Sequence[int], top_k: int) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it (`logits` [len, vocab] of the prompt's positions).

    The first token has no context, so it has none (OpenAI's `null`).
    """
    if len(prompt_ids) < 2:
        return [None] * len(prompt_ids)
    scored = token_logprobs(logits[:-1].float().log_softmax(dim=-1), prompt_ids[1:], [top_k] * (len(prompt_ids) - 1))
    return [None, *scored]
