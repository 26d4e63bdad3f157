"""OpenAI-compatible request and response models (`/v1/completions`, `/v1/chat/completions`, `/v1/models`)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from textgen.api.schemas import (
    IgnoreEos,
    MaxNewTokens,
    RepetitionPenalty,
    Seed,
    StopString,
    StopStrings,
    Temperature,
    TopK,
    TopP,
    Usage,
    sampling_params,
)
from textgen.engine import GenerationParams

OpenAIFinishReason = Literal["stop", "length"]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """What both OpenAI routes accept. Unknown fields are ignored, as OpenAI SDKs send optional extras."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="The served model (see /v1/models); other names get 404.")
    max_tokens: MaxNewTokens = 16
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Literal[1] = Field(1, description="Only one choice per request is supported.")
    stream: StrictBool = False  # strict like the shared fields in schemas.py: "false" is not False
    stream_options: StreamOptions | None = None
    stop: StopStrings | StopString | None = None
    seed: Seed = None
    presence_penalty: Literal[0, 0.0] = Field(0, description="Not supported: must be 0.")
    frequency_penalty: Literal[0, 0.0] = Field(0, description="Not supported: must be 0.")
    logprobs: None = Field(None, description="Not supported.")
    # Extensions also accepted by vLLM.
    top_k: TopK = 0
    repetition_penalty: RepetitionPenalty = 1.0
    ignore_eos: IgnoreEos = False

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_params(self) -> GenerationParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationParams(self.max_tokens, sampling_params(self), stop, self.ignore_eos)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(..., description="One prompt (a one-item list is accepted).")
    echo: StrictBool = Field(False, description="Put the prompt before the completion.")

    @field_validator("prompt", mode="after")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("exactly one prompt per request is supported")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("prompt must not be empty")
        return prompt


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: MaxNewTokens | None = None

    def to_params(self) -> GenerationParams:
        params = super().to_params()
        if self.max_completion_tokens is None:
            return params
        return dataclasses.replace(params, max_new_tokens=self.max_completion_tokens)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: OpenAIFinishReason | None = None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatDelta | None = None
    delta: ChatDelta | None = None
    finish_reason: OpenAIFinishReason | None = None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion", "chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "textgen"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
