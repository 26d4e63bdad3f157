"""Token ids as the text clients see in logprobs."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from transformers import PreTrainedTokenizerBase


def token_decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[int], str]:
    """Each token's own text, as vLLM reports it (a piece of a multi-byte character decodes to U+FFFD)."""

    @lru_cache(maxsize=4096)
    def decode(token_id: int) -> str:
        return tokenizer.decode([token_id])

    return decode
