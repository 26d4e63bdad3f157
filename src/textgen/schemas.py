"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FinishReason = Literal["length", "stop", "eos"]

MAX_STOP_STRINGS = 4


class GenerateRequest(BaseModel):
    """Body of `POST /generate`. Only `prompt` is required."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, description="Text to continue.", examples=["Once upon a time"])
    max_new_tokens: int = Field(64, ge=1, le=100_000, description="Tokens to generate (prompt + this <= context).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(0, ge=0, le=100_000, description="0 disables top-k filtering.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, allow_inf_nan=False)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS, description="Stop strings.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Makes sampling reproducible.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence (benchmarks).")

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stops: list[str]) -> list[str]:
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    queue_ms: float = Field(description="Waiting for a slot and for the batch to take the request.")
    inference_ms: float = Field(description="From prefill to the last token.")
    total_ms: float


class GenerateResponse(BaseModel):
    generated_text: str = Field(description="Prompt followed by the completion.")
    completion: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    timings: Timings


class ErrorDetail(BaseModel):
    type: str
    message: str
    request_id: str | None = None
    field: str | None = None


class ErrorBody(BaseModel):
    """The one error shape of every route."""

    error: ErrorDetail


class GenerationLoad(BaseModel):
    running: int
    waiting: int
    limit: int
    max_queue: int


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_loaded: bool
    model: str
    uptime_s: float
    generations: GenerationLoad


class ModelInfo(BaseModel):
    tag: str
    source: str = Field(description="Where the weights came from: hub id@revision, a local path, or random.")
    labels: dict[str, str]
    architecture: str
    parameters: int
    context_length: int
    dtype: str
    device: str
