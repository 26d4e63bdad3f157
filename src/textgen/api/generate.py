"""The service's own generation API: `/generate`, `/generate/batch` and `/generate_stream`, converted at this edge.

A request becomes prompts and the engine's `GenerationParams` (with a compiled grammar when it asks for a
constraint); each `GenerationOutput` becomes a `GenerateResponse`. The stream is server-sent events:
`{"type": "token", "text"}` per piece (with `"logprobs"` when asked for), then `{"type": "done", ...the /generate
response}`, or `{"type": "error", "error": {...}}` if it fails midway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from textgen.serving.async_engine import AsyncEngine, Row
from textgen.serving.outputs import GenerationOutput, StreamEvent, TextDelta
from textgen.serving.runtime import ModelRuntime

from .rows import check_adapter, check_row_count, compile_constraint, expand_rows
from .schemas import (
    GenerateBatchRequest,
    GenerateBatchResponse,
    GeneratedToken,
    GenerateRequest,
    GenerateResponse,
    GenerationFields,
)
from .sse import sse, stream_error
from .tokens import token_decoder


class GenerateHandlers:
    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        engine = self.runtime.engine()
        (output,) = await engine.generate_rows(await self._rows(engine, request, [request.prompt]))
        return GenerateResponse.of(request.prompt, output, token_decoder(engine.tokenizer))

    async def generate_batch(self, request: GenerateBatchRequest) -> GenerateBatchResponse:
        engine = self.runtime.engine()
        check_row_count(engine, len(request.prompts), "prompts")
        outputs = await engine.generate_rows(await self._rows(engine, request, request.prompts))
        decode = token_decoder(engine.tokenizer)
        return GenerateBatchResponse(
            results=[GenerateResponse.of(p, o, decode) for p, o in zip(request.prompts, outputs, strict=True)]
        )

    async def stream(self, request: GenerateRequest) -> AsyncIterator[str]:
        """Waits for admission, so that refusals can still be HTTP statuses; then the events come."""
        engine = self.runtime.engine()
        events = engine.stream_rows(await self._rows(engine, request, [request.prompt]))
        await anext(events)  # Admitted
        return _sse_events(request.prompt, events, token_decoder(engine.tokenizer))

    @staticmethod
    async def _rows(engine: AsyncEngine, request: GenerationFields, prompts: list[str]) -> list[Row]:
        check_adapter(engine, request.adapter, "adapter")
        params = await compile_constraint(engine, request.to_params(), request)
        return expand_rows(prompts, params, adapter=request.adapter)


async def _sse_events(
    prompt: str, events: AsyncIterator[StreamEvent], decode: Callable[[int], str]
) -> AsyncIterator[str]:
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                token: dict[str, object] = {"type": "token", "text": event.text}
                if event.logprobs:
                    token["logprobs"] = [GeneratedToken.of(e, decode).model_dump() for e in event.logprobs]
                yield sse(token)
            elif isinstance(event, GenerationOutput):
                yield sse({"type": "done", **GenerateResponse.of(prompt, event, decode).model_dump()})
    except Exception as exc:
        yield sse({"type": "error", **stream_error(exc)})
    finally:
        await events.aclose()  # the client went away: the job leaves the batch now, not at garbage collection
