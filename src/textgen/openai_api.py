"""OpenAI-compatible completions and chat completions on top of the same generator (batching, limit, auth)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Protocol

from pydantic import BaseModel
from starlette.responses import JSONResponse, Response, StreamingResponse

from .errors import ApiError, InvalidRequest, current_request_id
from .generation import TextDelta, TextGenerator
from .openai_schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIFinishReason,
    SamplingFields,
)
from .schemas import FinishReason, GenerateResponse, Usage
from .sse import sse, stream_error

FINISH_REASONS: dict[FinishReason, OpenAIFinishReason] = {"length": "length", "stop": "stop", "eos": "stop"}


class ModelNotFound(ApiError):
    status, type = 404, "model_not_found"


class ResponseFormat(Protocol):
    def full(self, rid: str, created: int, model: str, text: str, result: GenerateResponse) -> BaseModel: ...
    def chunk(
        self, rid: str, created: int, model: str, text: str | None, finish: OpenAIFinishReason | None = None
    ) -> BaseModel: ...
    def usage_chunk(self, rid: str, created: int, model: str, usage: Usage) -> BaseModel: ...


class CompletionFormat:
    def full(self, rid: str, created: int, model: str, text: str, result: GenerateResponse) -> BaseModel:
        choice = CompletionChoice(text=text, finish_reason=FINISH_REASONS[result.finish_reason])
        return Completion(id=rid, created=created, model=model, choices=[choice], usage=result.usage)

    def chunk(self, rid, created, model, text, finish=None) -> BaseModel:
        choice = CompletionChoice(text=text or "", finish_reason=finish)
        return Completion(id=rid, created=created, model=model, choices=[choice])

    def usage_chunk(self, rid, created, model, usage) -> BaseModel:
        return Completion(id=rid, created=created, model=model, choices=[], usage=usage)


class ChatFormat:
    def full(self, rid, created, model, text, result) -> BaseModel:
        message = ChatDelta(role="assistant", content=text)
        choice = ChatChoice(message=message, finish_reason=FINISH_REASONS[result.finish_reason])
        return ChatCompletion(
            id=rid, object="chat.completion", created=created, model=model, choices=[choice], usage=result.usage
        )

    def chunk(self, rid, created, model, text, finish=None) -> BaseModel:
        delta = ChatDelta(role="assistant", content="") if text is None and finish is None else ChatDelta(content=text)
        choice = ChatChoice(delta=delta, finish_reason=finish)
        return ChatCompletion(id=rid, object="chat.completion.chunk", created=created, model=model, choices=[choice])

    def usage_chunk(self, rid, created, model, usage) -> BaseModel:
        return ChatCompletion(
            id=rid, object="chat.completion.chunk", created=created, model=model, choices=[], usage=usage
        )


class OpenAIRoutes:
    def __init__(self, generator: TextGenerator) -> None:
        self.generator = generator
        self.tag = generator.loaded.info.tag
        self.name = self.tag.split(":")[0]
        self.created = int(time.time())

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.tag, created=self.created)])

    async def completions(self, request: CompletionRequest) -> Response:
        prompt = request.prompt
        assert isinstance(prompt, str)  # one prompt, after validation
        return await self._respond(request, prompt, CompletionFormat(), echo=prompt if request.echo else "")

    async def chat(self, request: ChatCompletionRequest) -> Response:
        tokenizer = self.generator.loaded.tokenizer
        if not tokenizer.chat_template:
            raise InvalidRequest(
                f"model {self.tag} has no chat template, so it cannot take chat messages: "
                "use /v1/completions with a plain prompt",
                field="messages",
            )
        messages = [m.model_dump() for m in request.messages]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return await self._respond(request, prompt, ChatFormat())

    def _check_model(self, requested: str | None) -> None:
        if requested is not None and requested.split(":")[0] != self.name:  # the name, with or without a version
            raise ModelNotFound(f"model '{requested}' is not served here; this one is '{self.tag}'", field="model")

    async def _respond(self, request: SamplingFields, prompt: str, fmt: ResponseFormat, echo: str = "") -> Response:
        self._check_model(request.model)
        rid, created = f"cmpl-{current_request_id()}", int(time.time())
        if not request.stream:
            result = await self.generator.generate(request.to_generate(prompt))
            return JSONResponse(fmt.full(rid, created, self.tag, echo + result.completion, result).model_dump())
        events = self.generator.stream(request.to_generate(prompt))
        await anext(events)  # admitted: overload and context errors surface here, as HTTP statuses

        async def body() -> AsyncIterator[str]:
            yield sse(fmt.chunk(rid, created, self.tag, echo or None))
            try:
                async for event in events:
                    if isinstance(event, TextDelta):
                        yield sse(fmt.chunk(rid, created, self.tag, event.text))
                    elif isinstance(event, GenerateResponse):
                        yield sse(fmt.chunk(rid, created, self.tag, "", FINISH_REASONS[event.finish_reason]))
                        if request.include_usage:
                            yield sse(fmt.usage_chunk(rid, created, self.tag, event.usage))
            except Exception as exc:
                yield sse(stream_error(exc))
                return
            finally:
                await events.aclose()
            yield sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream")
