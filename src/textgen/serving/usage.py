"""Who pays for a generation: the API layer sets a sink for the request, the engine reports its tokens to it.

A context variable, so that the serving layer charges tokens without knowing of keys, quotas or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

UsageSink = Callable[[int, int], None]  # (prompt tokens, completion tokens)

usage_sink: ContextVar[UsageSink | None] = ContextVar("textgen_usage_sink", default=None)


def report_usage(prompt_tokens: int, completion_tokens: int) -> None:
    """Charge the request in whose context this runs (nothing outside a request)."""
    if (sink := usage_sink.get()) is not None:
        sink(prompt_tokens, completion_tokens)
