"""What the serving layer hands back to a protocol: internal results, converted to a wire format by the API."""

from __future__ import annotations

from dataclasses import dataclass

from textgen.engine import FinishReason, TokenLogprob


@dataclass(frozen=True)
class Timings:
    """Seconds, measured from the request's arrival at the serving layer."""

    queue_s: float  # waiting for a slot and for the batch to take the request
    time_to_first_token_s: float
    inference_s: float  # from prefill to the last token
    total_s: float


@dataclass(frozen=True)
class GenerationOutput:
    """One finished generation of one row of a request."""

    model: str  # the store tag of the model that answered
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str  # the completion, cut before a stop string
    finish_reason: FinishReason
    timings: Timings
    index: int = 0  # the row's place in its request
    logprobs: list[TokenLogprob] | None = None  # per token id, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # per prompt token, when asked for

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Admitted:
    """First item of a stream: the request has a slot and is in the engine (errors after this are in-stream)."""


@dataclass(frozen=True)
class TextDelta:
    """A streamed piece of a row's completion; with logprobs, one per token (its text may then be empty)."""

    text: str
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class PromptScored:
    """A row's prompt logprobs, streamed before its first token (echo with logprobs)."""

    index: int
    prompt_token_ids: list[int]
    prompt_logprobs: list[TokenLogprob | None]


StreamEvent = Admitted | PromptScored | TextDelta | GenerationOutput
