"""Request and response models of the service's own API (`/generate`, `/health`, errors), and the field types
that its OpenAI-compatible routes share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

from textgen.engine import MAX_TOP_LOGPROBS, FinishReason, GenerationParams, SamplingParams, TokenLogprob
from textgen.serving.admission import GenerationLoad
from textgen.serving.model_store import ModelInfo
from textgen.serving.outputs import GenerationOutput

from .structured import StructuredOutputFields

__all__ = ["ModelInfo"]  # served as /model-info's body as the loader describes the model

MAX_STOP_STRINGS = 4


# Field types shared by /generate and the OpenAI-compatible routes, so their bounds cannot drift apart.
# Strict: a string, a bool or 2.0 for a number is the client's bug, not something to coerce ("5" tokens, true
# as 1 token); JSON integers still count as floats.
MaxNewTokens = Annotated[
    int, Strict(), Field(ge=1, le=100_000, description="Tokens to generate (prompt + this <= context).")
]
Temperature = Annotated[
    float, Strict(), Field(ge=0.0, le=2.0, allow_inf_nan=False, description="0 means greedy decoding.")
]
TopP = Annotated[float, Strict(), Field(gt=0.0, le=1.0, allow_inf_nan=False)]
TopK = Annotated[int, Strict(), Field(ge=0, le=100_000, description="0 disables top-k filtering.")]
RepetitionPenalty = Annotated[float, Strict(), Field(gt=0.0, le=10.0, allow_inf_nan=False)]
Seed = Annotated[int | None, Strict(), Field(ge=0, le=2**63 - 1, description="Makes sampling reproducible.")]
IgnoreEos = Annotated[bool, Strict(), Field(description="Keep generating past end-of-sequence (benchmarks).")]
TopLogprobs = Annotated[int, Strict(), Field(ge=0, le=MAX_TOP_LOGPROBS)]
Prompt = Annotated[str, Field(min_length=1, description="Text to continue.", examples=["Once upon a time"])]


def check_stop_string(stop: str) -> str:
    if not stop:
        raise ValueError("stop strings must not be empty")  # "" would end every completion before it starts
    return stop


def check_stop_count(stops: list[str]) -> list[str]:
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
    return stops


StopString = Annotated[str, AfterValidator(check_stop_string)]
StopStrings = Annotated[
    list[StopString], AfterValidator(check_stop_count), Field(description="Stop strings (at most 4).")
]


class SamplingOptions(Protocol):
    """The sampling fields every protocol's request has, under the same names and bounds."""

    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int | None


def sampling_params(request: SamplingOptions) -> SamplingParams:
    return SamplingParams(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        repetition_penalty=request.repetition_penalty,
        seed=request.seed,
    )


class GenerationFields(StructuredOutputFields):
    """The parameters of `/generate` and `/generate/batch`, besides the prompt(s)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: MaxNewTokens = 64
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    repetition_penalty: RepetitionPenalty = 1.0
    stop: StopStrings = Field(default_factory=list)
    seed: Seed = None
    ignore_eos: IgnoreEos = False
    logprobs: TopLogprobs | None = Field(
        None, description="Return each generated token's logprob and the k most likely tokens (0 to 20)."
    )
    adapter: str | None = Field(None, min_length=1, description="A loaded LoRA adapter (/v1/models); none: the base.")

    def to_params(self) -> GenerationParams:
        return GenerationParams(
            self.max_new_tokens, sampling_params(self), tuple(self.stop), self.ignore_eos, logprobs=self.logprobs
        )


class GenerateRequest(GenerationFields):
    """Body of `POST /generate`. Only `prompt` is required."""

    prompt: Prompt


class GenerateBatchRequest(GenerationFields):
    """Body of `POST /generate/batch`: several prompts with the same parameters, run side by side."""

    prompts: list[Prompt] = Field(..., min_length=1, description="One result per prompt, in order.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, output: GenerationOutput) -> Usage:
        return cls.total([output], copies=1)

    @classmethod
    def total(cls, outputs: list[GenerationOutput], copies: int) -> Usage:
        """Of a request's rows, `copies` per prompt: each prompt counts once, every row's completion counts."""
        prompt = sum(output.prompt_tokens for output in outputs[::copies])
        completion = sum(output.completion_tokens for output in outputs)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class Timings(BaseModel):
    queue_ms: float = Field(description="Waiting for a slot and for the batch to take the request.")
    time_to_first_token_ms: float
    inference_ms: float = Field(description="From prefill to the last token.")
    total_ms: float


class TopToken(BaseModel):
    token: str
    token_id: int
    logprob: float


class GeneratedToken(TopToken):
    top_logprobs: list[TopToken]

    @classmethod
    def of(cls, entry: TokenLogprob, decode: Callable[[int], str]) -> GeneratedToken:
        top = [TopToken(token=decode(i), token_id=i, logprob=lp) for i, lp in entry.top]
        return cls(token=decode(entry.token_id), token_id=entry.token_id, logprob=entry.logprob, top_logprobs=top)


class GenerateResponse(BaseModel):
    generated_text: str = Field(description="Prompt followed by the completion.")
    completion: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    timings: Timings
    # A list, never null: BentoML's Python client cannot decode a null where its schema has an array.
    logprobs: list[GeneratedToken] = Field(
        default_factory=list, description="Per generated token when `logprobs` is set; empty otherwise."
    )

    @classmethod
    def of(cls, prompt: str, output: GenerationOutput, decode: Callable[[int], str]) -> GenerateResponse:
        t = output.timings
        logprobs = [GeneratedToken.of(e, decode) for e in output.logprobs or ()]
        return cls(
            generated_text=prompt + output.text,
            completion=output.text,
            finish_reason=output.finish_reason,
            usage=Usage.of(output),
            model=output.model,
            logprobs=logprobs,
            timings=Timings(
                queue_ms=t.queue_s * 1000,
                time_to_first_token_ms=t.time_to_first_token_s * 1000,
                inference_ms=t.inference_s * 1000,
                total_ms=t.total_s * 1000,
            ),
        )


class GenerateBatchResponse(BaseModel):
    results: list[GenerateResponse] = Field(description="One per prompt, in the order of `prompts`.")


class ErrorDetail(BaseModel):
    type: str
    message: str
    request_id: str | None = None
    field: str | None = None


class ErrorBody(BaseModel):
    """The one error shape of every route."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_loaded: bool
    model: str
    uptime_s: float
    generations: GenerationLoad


class KeyUsage(BaseModel):
    requests: int = 0  # admitted
    rate_limited: int = 0  # refused with 429 rate_limited
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class UsageReport(BaseModel):
    """GET /v1/usage: what each key used since the server started, by key name (never the key)."""

    since: str  # ISO 8601, UTC
    keys: dict[str, KeyUsage]
