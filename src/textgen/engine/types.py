"""What goes into the engine and what comes out: internal types, free of any wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .logprobs import TokenLogprob
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .grammar import CompiledGrammar
    from .lora import LoraWeights

FinishReason = Literal["length", "stop", "eos"]


@dataclass(frozen=True)
class GenerationParams:
    """Everything a request asks of the engine besides its prompt.

    Each protocol (the service's own API, OpenAI's) converts its request into this at its edge.
    Per-request options that change how tokens are picked or reported (logprobs, a grammar) belong here.
    """

    max_new_tokens: int  # 0 only scores the prompt (with prompt_logprobs)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()  # the text ends before the first of these
    ignore_eos: bool = False  # keep going past end-of-sequence (fixed-length benchmarks)
    logprobs: int | None = None  # report each new token's logprob and the top k (None: nothing, and no cost)
    prompt_logprobs: int | None = None  # also score the prompt's tokens, with the top k at each
    grammar: CompiledGrammar | None = None  # the output must match it (compiled before submission)
    adapter: LoraWeights | None = None  # a LoRA adapter loaded into the engine (None: the base model)


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation. Times are `time.perf_counter()` readings."""

    token_ids: list[int]
    text: str  # the completion, cut before a stop string
    finish_reason: FinishReason
    started_at: float  # prefill
    first_token_at: float
    finished_at: float
    logprobs: list[TokenLogprob] | None = None  # one per token id, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # one per prompt token, the first None


class EngineStopped(RuntimeError):
    """The engine shut down before the job finished."""


class JobCancelled(RuntimeError):
    """The job was cancelled (its client went away) before it finished."""
