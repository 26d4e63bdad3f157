"""OpenAI's response shapes for completions and chat completions: a whole response, a stream chunk, usage."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from textgen.api.schemas import Usage
from textgen.engine import FinishReason

from .schemas import (
    ChatChoice,
    ChatCompletion,
    ChatDelta,
    Completion,
    CompletionChoice,
    OpenAIFinishReason,
)

FINISH_REASONS: dict[FinishReason, OpenAIFinishReason] = {"length": "length", "stop": "stop", "eos": "stop"}


class ResponseFormat(Protocol):
    def full(self, rid: str, created: int, model: str, text: str, finish: FinishReason, usage: Usage) -> BaseModel: ...
    def chunk(
        self, rid: str, created: int, model: str, text: str | None, finish: OpenAIFinishReason | None = None
    ) -> BaseModel: ...
    def usage_chunk(self, rid: str, created: int, model: str, usage: Usage) -> BaseModel: ...


class CompletionFormat:
    def full(self, rid, created, model, text, finish, usage) -> BaseModel:
        choice = CompletionChoice(text=text, finish_reason=FINISH_REASONS[finish])
        return Completion(id=rid, created=created, model=model, choices=[choice], usage=usage)

    def chunk(self, rid, created, model, text, finish=None) -> BaseModel:
        choice = CompletionChoice(text=text or "", finish_reason=finish)
        return Completion(id=rid, created=created, model=model, choices=[choice])

    def usage_chunk(self, rid, created, model, usage) -> BaseModel:
        return Completion(id=rid, created=created, model=model, choices=[], usage=usage)


class ChatFormat:
    def full(self, rid, created, model, text, finish, usage) -> BaseModel:
        message = ChatDelta(role="assistant", content=text)
        choice = ChatChoice(message=message, finish_reason=FINISH_REASONS[finish])
        return ChatCompletion(
            id=rid, object="chat.completion", created=created, model=model, choices=[choice], usage=usage
        )

    def chunk(self, rid, created, model, text, finish=None) -> BaseModel:
        delta = ChatDelta(role="assistant", content="") if text is None and finish is None else ChatDelta(content=text)
        choice = ChatChoice(delta=delta, finish_reason=finish)
        return ChatCompletion(id=rid, object="chat.completion.chunk", created=created, model=model, choices=[choice])

    def usage_chunk(self, rid, created, model, usage) -> BaseModel:
        return ChatCompletion(
            id=rid, object="chat.completion.chunk", created=created, model=model, choices=[], usage=usage
        )
