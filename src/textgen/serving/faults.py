"""Fault injection, to show that a generation that fails takes down only its own request.

Off unless `FAULT_INJECTION_MARKER` is set (tests and the soak runner set it): then a request
whose prompt starts with the marker fails inside the engine once it has generated a few tokens,
while it shares forward passes with other requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from textgen.engine import Job


class InjectedFault(RuntimeError):
    """Raised on purpose by FaultInjector."""


@dataclass(frozen=True)
class FaultInjector:
    marker_ids: tuple[int, ...]
    after_tokens: int = 2

    @classmethod
    def for_marker(cls, marker: str, tokenizer: PreTrainedTokenizerBase) -> FaultInjector:
        return cls(tuple(tokenizer.encode(marker)))

    def marked(self, job: Job) -> bool:
        return tuple(job.prompt_ids[: len(self.marker_ids)]) == self.marker_ids

    def __call__(self, jobs: Sequence[Job]) -> None:
        """Called before each forward pass with its rows: fails the pass if a marked job is far enough along."""
        for job in jobs:
            if len(job.output_ids) >= self.after_tokens and self.marked(job):
                raise InjectedFault(f"injected fault after {len(job.output_ids)} tokens")
