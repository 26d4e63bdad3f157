"""OpenAI-compatible completions, chat completions and model list, on the same engine (batching, limit, auth).

Each request converts here to a prompt and the engine's `GenerationParams`, and each `GenerationOutput`
back to OpenAI's shapes (see vLLM's `serving_completion` for the same split).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.responses import JSONResponse, Response, StreamingResponse

from textgen.api.errors import INVALID_REQUEST, MODEL_NOT_FOUND, ApiError
from textgen.api.schemas import Usage
from textgen.api.sse import sse, stream_error
from textgen.bentoml_compat import current_request_id
from textgen.serving.async_engine import AsyncEngine
from textgen.serving.outputs import GenerationOutput, StreamEvent, TextDelta
from textgen.serving.runtime import ModelRuntime

from .formats import FINISH_REASONS, ChatFormat, CompletionFormat, ResponseFormat
from .schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, SamplingFields


class OpenAIHandlers:
    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def models(self) -> ModelList:
        engine = self.runtime.engine()
        return ModelList(data=[ModelCard(id=engine.model_tag, created=self.runtime.loaded_at)])

    async def completions(self, request: CompletionRequest) -> Response:
        prompt = request.prompt
        assert isinstance(prompt, str)  # one prompt, after validation
        return await self._respond(request, prompt, CompletionFormat(), echo=prompt if request.echo else "")

    async def chat(self, request: ChatCompletionRequest) -> Response:
        engine = self.runtime.engine()
        if not engine.tokenizer.chat_template:
            raise ApiError(
                INVALID_REQUEST,
                f"model {engine.model_tag} has no chat template, so it cannot take chat messages: "
                "use /v1/completions with a plain prompt",
                field="messages",
            )
        messages = [m.model_dump() for m in request.messages]
        prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return await self._respond(request, prompt, ChatFormat())

    def _engine_for(self, requested: str | None) -> AsyncEngine:
        engine = self.runtime.engine()
        tag = engine.model_tag
        if (
            requested is not None and requested.split(":")[0] != tag.split(":")[0]
        ):  # the name, with or without a version
            raise ApiError(
                MODEL_NOT_FOUND, f"model '{requested}' is not served here; this one is '{tag}'", field="model"
            )
        return engine

    async def _respond(self, request: SamplingFields, prompt: str, fmt: ResponseFormat, echo: str = "") -> Response:
        engine = self._engine_for(request.model)
        rid, created, tag = f"cmpl-{current_request_id()}", int(time.time()), engine.model_tag
        if not request.stream:
            output = await engine.generate(prompt, request.to_params())
            body = fmt.full(rid, created, tag, echo + output.text, output.finish_reason, Usage.of(output))
            return JSONResponse(body.model_dump())
        events = engine.stream(prompt, request.to_params())
        await anext(events)  # admitted: overload and context errors surface here, as HTTP statuses

        async def chunks(events: AsyncIterator[StreamEvent]) -> AsyncIterator[str]:
            yield sse(fmt.chunk(rid, created, tag, echo or None))
            try:
                async for event in events:
                    if isinstance(event, TextDelta):
                        yield sse(fmt.chunk(rid, created, tag, event.text))
                    elif isinstance(event, GenerationOutput):
                        yield sse(fmt.chunk(rid, created, tag, "", FINISH_REASONS[event.finish_reason]))
                        if request.include_usage:
                            yield sse(fmt.usage_chunk(rid, created, tag, Usage.of(event)))
            except Exception as exc:
                yield sse(stream_error(exc))
                return
            finally:
                await events.aclose()
            yield sse("[DONE]")

        return StreamingResponse(chunks(events), media_type="text/event-stream")
