"""OpenAI-compatible request and response models (`/v1/completions`, `/v1/chat/completions`, `/v1/models`)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, field_validator, model_validator

from textgen.api.errors import INVALID_REQUEST, ApiError
from textgen.api.schemas import (
    IgnoreEos,
    MaxNewTokens,
    RepetitionPenalty,
    Seed,
    StopString,
    StopStrings,
    Temperature,
    TopK,
    TopLogprobs,
    TopP,
    Usage,
    sampling_params,
)
from textgen.api.structured import OpenAIStructuredFields
from textgen.engine import GenerationParams, OutputConstraint

from .tools import (
    FunctionDefinition,
    StreamedToolCall,
    Tool,
    ToolCall,
    ToolChoice,
    callable_functions,
    tool_call_constraint,
)

OpenAIFinishReason = Literal["stop", "length", "tool_calls"]
MAX_CHOICES = 8
Choices = Annotated[int, Strict(), Field(ge=1, le=MAX_CHOICES, description="Completions per prompt.")]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class SamplingFields(OpenAIStructuredFields):
    """What both OpenAI routes accept. An unknown field is refused (400 naming it), never silently ignored:
    OpenAI's SDKs send only the fields a caller sets."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="The served model (see /v1/models); other names get 404.")
    max_tokens: MaxNewTokens = 16
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Choices = 1
    stream: StrictBool = False  # strict like the shared fields in schemas.py: "false" is not False
    stream_options: StreamOptions | None = None
    stop: StopStrings | StopString | None = None
    seed: Seed = None
    presence_penalty: Literal[0, 0.0] = Field(0, description="Not supported: must be 0.")
    frequency_penalty: Literal[0, 0.0] = Field(0, description="Not supported: must be 0.")
    logit_bias: dict[str, Any] | None = Field(None, max_length=0, description="Not supported: must be empty.")
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

    @property
    def copies(self) -> int:
        """Sequences generated per prompt."""
        return self.n

    def reported_logprobs(self) -> int | None:
        """The top-k of the logprobs the response shows (None: it shows none)."""
        return None

    def callable_functions(self) -> list[FunctionDefinition] | None:
        """The functions the reply must call one of (only chat takes tools)."""
        return None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(
        ..., description="A prompt, or a list of prompts (each its own choices, `index` = prompt * n + choice)."
    )
    max_tokens: Annotated[int, Strict(), Field(ge=0, le=100_000, description="0 only with echo.")] = 16
    echo: StrictBool = Field(False, description="Put the prompt before the completion.")
    logprobs: Annotated[int, Strict(), Field(ge=0, le=5)] | None = Field(
        None, description="Each token's logprob and the k most likely tokens (of the prompt too, with echo)."
    )
    suffix: None = Field(None, description="Not supported: must be null.")
    best_of: Annotated[int, Strict(), Field(ge=1, le=MAX_CHOICES)] | None = Field(
        None, description="Generate this many per prompt and return the n with the highest mean token logprob."
    )

    @field_validator("prompt", mode="after")
    @classmethod
    def _prompts_not_empty(cls, prompt: str | list[str]) -> str | list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not prompts:
            raise ValueError("give at least one prompt")
        if not all(prompts):
            raise ValueError("prompt must not be empty")
        return prompt

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens may be 0 only with echo (to score the prompt)")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be at least n")
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise ValueError("best_of cannot be streamed: the best are known only at the end")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @property
    def copies(self) -> int:
        return self.best_of or self.n

    def reported_logprobs(self) -> int | None:
        return self.logprobs

    def to_params(self) -> GenerationParams:
        # best_of ranks candidates by their tokens' logprobs, so it needs them even when they are not shown.
        logprobs = 0 if self.logprobs is None and self.copies > self.n else self.logprobs
        prompt_logprobs = self.logprobs if self.echo else None
        return dataclasses.replace(super().to_params(), logprobs=logprobs, prompt_logprobs=prompt_logprobs)


class ChatMessage(BaseModel):
    """A message as the model's chat template takes it (templates that know tools read tool_calls and tool_call_id)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant's earlier calls.")
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("a message needs content (or, from the assistant, tool_calls)")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: MaxNewTokens | None = None
    logprobs: StrictBool = Field(False, description="Each generated token's logprob.")
    top_logprobs: TopLogprobs | None = Field(None, description="With logprobs: the k most likely tokens (0 to 20).")
    tools: list[Tool] | None = Field(None, min_length=1, max_length=64)
    tool_choice: ToolChoice | None = Field(None, description='"required" or a named function; "none" ignores tools.')

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("tool_choice needs tools")
        if self.tools and self.tool_choice != "none" and super().constraint_field() is not None:
            raise ValueError("a tool call has its own output format: drop response_format or structured_outputs")
        return self

    def callable_functions(self) -> list[FunctionDefinition] | None:
        """The functions the reply must call one of (None: a plain reply). Raises ApiError for "auto"."""
        if not self.tools:
            return None
        try:
            return callable_functions(self.tools, self.tool_choice)
        except ValueError as exc:
            raise ApiError(INVALID_REQUEST, str(exc), field="tool_choice") from None

    def constraint_field(self) -> str | None:
        return "tools" if self.callable_functions() else super().constraint_field()

    def constraint(self) -> OutputConstraint | None:
        functions = self.callable_functions()
        return tool_call_constraint(functions) if functions else super().constraint()

    def reported_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def to_params(self) -> GenerationParams:
        params = dataclasses.replace(super().to_params(), logprobs=self.reported_logprobs())
        if self.max_completion_tokens is None:
            return params
        return dataclasses.replace(params, max_new_tokens=self.max_completion_tokens)


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: parallel lists, one entry per token (the first prompt token's logprob is null)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: OpenAIFinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


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
    tool_calls: list[StreamedToolCall] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatDelta | None = None
    delta: ChatDelta | None = None
    finish_reason: OpenAIFinishReason | None = None
    logprobs: ChatLogprobs | None = None


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
    root: str | None = Field(None, description="The store tag it was loaded from.")
    parent: str | None = Field(None, description="For a LoRA adapter: the base model it adapts.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
