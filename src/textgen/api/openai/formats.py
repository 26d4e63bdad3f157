"""OpenAI's response shapes for completions and chat completions: a whole response, a stream chunk, usage.

A handler describes each choice (or each streamed piece of one) as a `ChoicePart`; the format turns it into
its route's shape, logprobs included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from textgen.api.schemas import Usage
from textgen.engine import FinishReason, TokenLogprob

from .schemas import (
    ChatChoice,
    ChatCompletion,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    ChatTopLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    OpenAIFinishReason,
)
from .tools import StreamedToolCall, ToolCall

FINISH_REASONS: dict[FinishReason, OpenAIFinishReason] = {"length": "length", "stop": "stop", "eos": "stop"}

ScoredToken = tuple[int, TokenLogprob | None]  # a token id and its logprob (None: the prompt's first token)
Decode = Callable[[int], str]


@dataclass(frozen=True)
class ChoicePart:
    """A choice, or a streamed piece of one."""

    index: int
    text: str
    finish: OpenAIFinishReason | None = None
    scored: Sequence[ScoredToken] | None = None  # the piece's tokens with logprobs, when they are asked for
    text_offset: int = 0  # where the piece starts in the choice's text
    opens: bool = False  # the chunk that opens a choice's stream (the chat's role)
    tool_calls: list[ToolCall] | None = None  # the chat's reply is a call, not text


class ResponseFormat(Protocol):
    decode: Decode  # a token id's text, for logprobs

    def full(self, rid: str, created: int, model: str, choices: list[ChoicePart], usage: Usage) -> BaseModel: ...
    def chunk(self, rid: str, created: int, model: str, part: ChoicePart) -> BaseModel: ...
    def opening(self, index: int) -> ChoicePart | None:
        """The first chunk of a choice's stream, if the route has one (the chat's role)."""
        ...

    def usage_chunk(self, rid: str, created: int, model: str, usage: Usage) -> BaseModel: ...


class CompletionFormat:
    def __init__(self, decode: Decode) -> None:
        self.decode = decode

    def full(self, rid, created, model, choices, usage) -> BaseModel:
        return Completion(id=rid, created=created, model=model, choices=[self._choice(c) for c in choices], usage=usage)

    def chunk(self, rid, created, model, part) -> BaseModel:
        return Completion(id=rid, created=created, model=model, choices=[self._choice(part)])

    def opening(self, index: int) -> ChoicePart | None:
        return None

    def usage_chunk(self, rid, created, model, usage) -> BaseModel:
        return Completion(id=rid, created=created, model=model, choices=[], usage=usage)

    def _choice(self, part: ChoicePart) -> CompletionChoice:
        logprobs = None if part.scored is None else self._logprobs(part.scored, part.text_offset)
        return CompletionChoice(index=part.index, text=part.text, finish_reason=part.finish, logprobs=logprobs)

    def _logprobs(self, scored: Sequence[ScoredToken], offset: int) -> CompletionLogprobs:
        tokens = [self.decode(token_id) for token_id, _ in scored]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[None if e is None else e.logprob for _, e in scored],
            top_logprobs=[None if e is None else {self.decode(i): lp for i, lp in e.top} for _, e in scored],
            text_offset=offsets,
        )


class ChatFormat:
    def __init__(self, decode: Decode) -> None:
        self.decode = decode

    def full(self, rid, created, model, choices, usage) -> BaseModel:
        choices = [
            ChatChoice(
                index=c.index,
                message=ChatDelta(
                    role="assistant", content=None if c.tool_calls else c.text, tool_calls=_streamed(c.tool_calls)
                ),
                finish_reason=c.finish,
                logprobs=self._logprobs(c.scored),
            )
            for c in choices
        ]
        return ChatCompletion(
            id=rid, object="chat.completion", created=created, model=model, choices=choices, usage=usage
        )

    def chunk(self, rid, created, model, part) -> BaseModel:
        if part.opens:
            delta = ChatDelta(role="assistant", content="")
        elif part.tool_calls:
            delta = ChatDelta(tool_calls=_streamed(part.tool_calls))
        else:
            delta = ChatDelta(content=part.text)
        logprobs = self._logprobs(part.scored)
        choice = ChatChoice(index=part.index, delta=delta, finish_reason=part.finish, logprobs=logprobs)
        return ChatCompletion(id=rid, object="chat.completion.chunk", created=created, model=model, choices=[choice])

    def opening(self, index: int) -> ChoicePart | None:
        return ChoicePart(index, "", opens=True)

    def usage_chunk(self, rid, created, model, usage) -> BaseModel:
        return ChatCompletion(
            id=rid, object="chat.completion.chunk", created=created, model=model, choices=[], usage=usage
        )

    def _logprobs(self, scored: Sequence[ScoredToken] | None) -> ChatLogprobs | None:
        if scored is None:
            return None
        return ChatLogprobs(content=[self._token(e) for _, e in scored if e is not None])

    def _token(self, entry: TokenLogprob) -> ChatTokenLogprob:
        top = [self._top(i, lp) for i, lp in entry.top]
        return ChatTokenLogprob(**self._top(entry.token_id, entry.logprob).model_dump(), top_logprobs=top)

    def _top(self, token_id: int, logprob: float) -> ChatTopLogprob:
        token = self.decode(token_id)
        return ChatTopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))


def _streamed(calls: list[ToolCall] | None) -> list[StreamedToolCall] | None:
    return None if calls is None else [StreamedToolCall(index=i, **c.model_dump()) for i, c in enumerate(calls)]
