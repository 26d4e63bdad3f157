"""The service's own generation API: `/generate` and `/generate_stream`, converted at this edge.

A `GenerateRequest` becomes a prompt and the engine's `GenerationParams`; a `GenerationOutput` becomes a
`GenerateResponse`. The stream is server-sent events: `{"type": "token", "text"}` per piece, then
`{"type": "done", ...the /generate response}`, or `{"type": "error", "error": {...}}` if it fails midway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from textgen.serving.outputs import GenerationOutput, StreamEvent, TextDelta
from textgen.serving.runtime import ModelRuntime

from .schemas import GenerateRequest, GenerateResponse
from .sse import sse, stream_error


class GenerateHandlers:
    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        output = await self.runtime.engine().generate(request.prompt, request.to_params())
        return GenerateResponse.of(request.prompt, output)

    async def stream(self, request: GenerateRequest) -> AsyncIterator[str]:
        """Waits for admission, so that refusals can still be HTTP statuses; then the events come."""
        events = self.runtime.engine().stream(request.prompt, request.to_params())
        await anext(events)  # Admitted
        return _sse_events(request.prompt, events)


async def _sse_events(prompt: str, events: AsyncIterator[StreamEvent]) -> AsyncIterator[str]:
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                yield sse({"type": "token", "text": event.text})
            elif isinstance(event, GenerationOutput):
                yield sse({"type": "done", **GenerateResponse.of(prompt, event).model_dump()})
    except Exception as exc:
        yield sse({"type": "error", **stream_error(exc)})
    finally:
        await events.aclose()  # the client went away: the job leaves the batch now, not at garbage collection
