"""Masking a batch's logits to what each constrained row's grammar allows, before that row's own sampling.

One bitmask (int32, bit j of word i = token 32 * i + j) is filled for all constrained rows at once, in
parallel and without the GIL, then applied with a few vectorised torch ops. The bitmask, its bit table and
the fill threads are kept between steps (TokenMasker); `mask_logits` keeps one TokenMasker per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import llguidance
import torch

from .grammar import GrammarMatcher, fill_bitmask

# Bit j of an int32 word, as int32 (bit 31 is the sign bit).
_BITS = torch.tensor([1 << j if j < 31 else -(1 << 31) for j in range(32)], dtype=torch.int32)


def apply_bitmask_inplace(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """Set logits[rows[i], t] to -inf wherever bit t of bitmask[i] is 0; other rows stay as they are."""
    vocab = logits.shape[1]
    disallowed = ((bitmask.unsqueeze(-1) & _BITS) == 0).view(len(rows), -1)[:, :vocab]
    if len(rows) == logits.shape[0] and list(rows) == list(range(len(rows))):
        logits.masked_fill_(disallowed, float("-inf"))
    else:
        index = torch.as_tensor(rows, dtype=torch.long)
        logits[index] = logits[index].masked_fill(disallowed, float("-inf"))


class TokenMasker:
    """Masks logits of a fixed vocabulary width; owned by one thread (the engine's), reused across steps."""

    def __init__(self, vocab_size: int, max_rows: int = 32, threads: int | None = None) -> None:
        """`threads`: fill threads (None: llguidance's default, 80% of the CPUs up to 32)."""
        self.vocab_size = vocab_size
        self._bitmask = torch.zeros((max_rows, (vocab_size + 31) // 32), dtype=torch.int32)
        self._executor = llguidance.LLExecutor(num_threads=threads)

    def __call__(
        self, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher], eos_token_id: int
    ) -> list[int]:
        """Mask logits[rows[i]] (float32 [batch, vocab], CPU, in place) to what matchers[i] allows next.

        EOS is allowed exactly where the matcher is complete. Returns the rows whose matcher has failed (a
        library resource limit, or a token it rejected): they are left able to pick only EOS, and the caller
        must end them with an error, not a result.
        """
        if len(rows) != len(matchers):
            raise ValueError(f"{len(rows)} rows but {len(matchers)} matchers")
        if logits.shape[1] != self.vocab_size:
            raise ValueError(f"logits are {logits.shape[1]} wide; this masker is for {self.vocab_size}")
        if not rows:
            return []
        bitmask, failed = self.fill(matchers, eos_token_id)
        apply_bitmask_inplace(logits, bitmask, rows)
        return [rows[i] for i in failed]

    def fill(self, matchers: Sequence[GrammarMatcher], eos_token_id: int) -> tuple[torch.Tensor, list[int]]:
        """The allowed-token bitmask of each matcher (a view of the reused buffer, valid until the next call),
        and the indices of the matchers that have failed."""
        if len(matchers) > self._bitmask.shape[0]:
            self._bitmask = torch.zeros((len(matchers), self._bitmask.shape[1]), dtype=torch.int32)
        bitmask = self._bitmask[: len(matchers)]
        fill_bitmask(bitmask, matchers, self._executor)

        failed = [i for i, m in enumerate(matchers) if m.inner.is_error()]
        if failed:
            bitmask[failed] = 0
        # The library sets EOS by its own rules; the engine's EOS is the one that counts.
        complete = torch.tensor([m.inner.is_accepting() for m in matchers])
        complete[failed] = True
        word, bit = divmod(eos_token_id, 32)
        column = bitmask[:, word]
        bitmask[:, word] = torch.where(complete, column | _BITS[bit], column & ~_BITS[bit])
        return bitmask, failed


_per_thread = threading.local()


def mask_logits(
    logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher], eos_token_id: int
) -> list[int]:
    """TokenMasker.__call__ with a masker kept per thread and vocabulary width."""
    maskers: dict[int, TokenMasker] = _per_thread.__dict__.setdefault("maskers", {})
    masker = maskers.get(logits.shape[1])
    if masker is None:
        masker = maskers[logits.shape[1]] = TokenMasker(logits.shape[1])
    return masker(logits, rows, matchers, eos_token_id)
