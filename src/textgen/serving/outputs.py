"""What the serving layer hands back to a protocol: internal results, converted to a wire format by the API."""

from __future__ import annotations

from dataclasses import dataclass

from textgen.engine import FinishReason


@dataclass(frozen=True)
class Timings:
    """Seconds, measured from the request's arrival at the serving layer."""

    queue_s: float  # waiting for a slot and for the batch to take the request
    time_to_first_token_s: float
    inference_s: float  # from prefill to the last token
    total_s: float


@dataclass(frozen=True)
class GenerationOutput:
    """One finished generation of one prompt."""

    model: str  # the store tag of the model that answered
    prompt_tokens: int
    token_ids: list[int]
    text: str  # the completion, cut before a stop string
    finish_reason: FinishReason
    timings: Timings

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Admitted:
    """First item of a stream: the request has a slot and is in the engine (errors after this are in-stream)."""


@dataclass(frozen=True)
class TextDelta:
    """A streamed piece of the completion."""

    text: str


StreamEvent = Admitted | TextDelta | GenerationOutput
