"""Why the serving layer refuses or fails a request, in domain terms.

The API layer decides what each one means on the wire (status, error type, headers): see `textgen.api.errors`.
Messages are safe to show a client: they name limits and counts, never internals.
"""

from __future__ import annotations

from typing import Literal


class ServingError(Exception):
    """A request the serving layer cannot run now or could not finish."""

    default_message = "the request could not be served"

    def __init__(self, message: str | None = None, *, retry_after_s: int | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.retry_after_s = retry_after_s  # when a retry may succeed, if the layer can tell


class NotReady(ServingError):
    default_message = "the model is still loading"


class ContextTooLong(ServingError):
    """The prompt plus the tokens asked for do not fit the model's context."""

    def __init__(self, message: str, part: Literal["prompt", "max_new_tokens"] = "prompt") -> None:
        super().__init__(message)
        self.part = part  # the input to shorten


class TooManyRows(ServingError):
    """A request asks for more sequences than may run at once (it would wait for slots that never come)."""


class UnknownAdapter(ServingError):
    """No loaded adapter has this name (or, to load, the store has no such model)."""


class AdapterRefused(ServingError):
    """An adapter that cannot be loaded or unloaded: not an adapter, another base model, MAX_LORAS reached, ..."""


class Overloaded(ServingError):
    """Every slot is busy and the queue is full."""


class QueueTimedOut(ServingError):
    """No slot came free in time."""


class ShuttingDown(ServingError):
    default_message = "the server is shutting down"


class GenerationFailed(ServingError):
    """The model failed on this request; the other requests of its batch carry on."""

    default_message = "generation failed for this request; the server log has the details under its request_id"
