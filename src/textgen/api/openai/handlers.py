"""OpenAI-compatible completions, chat completions and model list, on the same engine (batching, limit, auth).

Each request converts here to rows (a prompt and the engine's `GenerationParams`, `n` or `best_of` of them per
prompt), and the rows' `GenerationOutput`s back to OpenAI's shapes (see vLLM's `serving_completion` for the
same split). Choice `index` runs prompt by prompt: prompt i's j-th choice is `i * n + j`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

from starlette.responses import JSONResponse, Response, StreamingResponse

from textgen.api.errors import INVALID_REQUEST, ApiError
from textgen.api.rows import check_adapter, check_row_count, compile_constraint, expand_rows
from textgen.api.schemas import Usage
from textgen.api.sse import sse, stream_error
from textgen.api.tokens import token_decoder
from textgen.bentoml_compat import current_request_id
from textgen.serving.async_engine import AsyncEngine
from textgen.serving.outputs import GenerationOutput, PromptScored, StreamEvent, TextDelta
from textgen.serving.runtime import ModelRuntime

from .formats import FINISH_REASONS, ChatFormat, ChoicePart, CompletionFormat, Decode, ResponseFormat, ScoredToken
from .schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, SamplingFields
from .tools import parse_tool_call


class OpenAIHandlers:
    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def models(self) -> ModelList:
        engine, created = self.runtime.engine(), self.runtime.loaded_at
        base = ModelCard(id=engine.model_tag, created=created, root=engine.model_tag)
        adapters = [
            ModelCard(id=a.name, created=created, root=a.tag, parent=engine.model_tag)
            for a in engine.adapters.loaded.values()
            if not a.unloading
        ]
        return ModelList(data=[base, *adapters])

    async def completions(self, request: CompletionRequest) -> Response:
        engine = self.runtime.engine()
        fmt = CompletionFormat(token_decoder(engine.tokenizer))
        return await self._respond(engine, request, request.prompts, fmt, echo=request.echo)

    async def chat(self, request: ChatCompletionRequest) -> Response:
        engine = self.runtime.engine()
        self._adapter_for(engine, request.model)  # an unknown model is a 404 before anything else
        if not engine.tokenizer.chat_template:
            raise ApiError(
                INVALID_REQUEST,
                f"model {engine.model_tag} has no chat template, so it cannot take chat messages: "
                "use /v1/completions with a plain prompt",
                field="messages",
            )
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        # A template that renders tools shows the model what it may call (the grammar makes it call one).
        tools = [t.model_dump(exclude_none=True) for t in request.tools or ()] if request.callable_functions() else None
        prompt = engine.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        return await self._respond(engine, request, [prompt], ChatFormat(token_decoder(engine.tokenizer)))

    @staticmethod
    def _adapter_for(engine: AsyncEngine, requested: str | None) -> str | None:
        """The adapter `model` names (None: the base model, by its name with or without a version)."""
        if requested is None or requested.split(":")[0] == engine.model_tag.split(":")[0]:
            return None
        check_adapter(engine, requested, "model")
        return requested

    async def _respond(
        self, engine: AsyncEngine, request: SamplingFields, prompts: list[str], fmt: ResponseFormat, echo: bool = False
    ) -> Response:
        copies = request.copies
        field = "prompt" if len(prompts) > 1 else ("best_of" if copies > request.n else "n")
        check_row_count(engine, len(prompts) * copies, field)
        adapter = self._adapter_for(engine, request.model)
        params = await compile_constraint(engine, request.to_params(), request)
        rows = expand_rows(prompts, params, copies, adapter)
        reply = _Reply(request, prompts, fmt, echo, engine.model_tag)
        if not request.stream:
            return JSONResponse(reply.full(await engine.generate_rows(rows)))
        events = engine.stream_rows(rows)
        await anext(events)  # admitted: overload and context errors surface here, as HTTP statuses
        return StreamingResponse(reply.chunks(events), media_type="text/event-stream")


class _Reply:
    """One request's response: its choices, whole or streamed."""

    def __init__(
        self, request: SamplingFields, prompts: list[str], fmt: ResponseFormat, echo: bool, model: str
    ) -> None:
        self.request, self.prompts, self.fmt, self.echo = request, prompts, fmt, echo
        self.rid, self.created, self.model = f"cmpl-{current_request_id()}", int(time.time()), model
        self.shown = request.reported_logprobs()  # logprobs the client sees (best_of may compute more)
        self.calls_tools = bool(request.callable_functions())
        self.decode: Decode = fmt.decode

    def full(self, outputs: list[GenerationOutput]) -> dict:
        copies, n = self.request.copies, self.request.n
        choices = []
        for p in range(len(self.prompts)):
            for j, output in enumerate(_best(outputs[p * copies : (p + 1) * copies], n)):
                choices.append(self._choice(p * n + j, output))
        return self.fmt.full(self.rid, self.created, self.model, choices, Usage.total(outputs, copies)).model_dump()

    def _choice(self, index: int, output: GenerationOutput) -> ChoicePart:
        prompt = self.prompts[index // self.request.n] if self.echo else ""
        scored = None
        if self.shown is not None:
            scored = [*self._prompt_scored(output), *((e.token_id, e) for e in output.logprobs or ())]
        return self._finished(ChoicePart(index, prompt + output.text, FINISH_REASONS[output.finish_reason], scored))

    def _finished(self, part: ChoicePart) -> ChoicePart:
        """A finished choice; a tool call is parsed out of its text (one cut short by max_tokens stays text)."""
        if not self.calls_tools or part.finish == "length":
            return part
        return dataclasses.replace(part, text="", finish="tool_calls", tool_calls=[parse_tool_call(part.text)])

    def _prompt_scored(self, output: GenerationOutput | PromptScored) -> list[ScoredToken]:
        if not self.echo or output.prompt_logprobs is None:
            return []
        return list(zip(output.prompt_token_ids, output.prompt_logprobs, strict=True))

    async def chunks(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[str]:
        """Rows are choices here (best_of is not streamed): row i is choice i."""
        chunk = self._chunk
        rows = len(self.prompts) * self.request.n
        offsets = [0] * rows  # each choice's text_offset so far
        outputs: list[GenerationOutput] = []
        wait_for_scores = self.echo and self.shown is not None  # the echo chunk carries the prompt's logprobs
        for i in range(rows):
            if opening := self.fmt.opening(i):
                yield chunk(opening)
            elif self.echo and not wait_for_scores:
                yield chunk(ChoicePart(i, self.prompts[i // self.request.n]))
            elif not self.echo:
                yield chunk(ChoicePart(i, ""))
        try:
            async for event in events:
                if isinstance(event, PromptScored):
                    scored = self._prompt_scored(event)
                    offsets[event.index] = self._offset_after(scored, 0)
                    yield chunk(ChoicePart(event.index, self.prompts[event.index // self.request.n], None, scored))
                elif isinstance(event, TextDelta) and not self.calls_tools:  # a call is sent whole, at the end
                    scored = None if self.shown is None else [(e.token_id, e) for e in event.logprobs]
                    yield chunk(ChoicePart(event.index, event.text, None, scored, offsets[event.index]))
                    offsets[event.index] = self._offset_after(scored or [], offsets[event.index])
                elif isinstance(event, GenerationOutput):
                    outputs.append(event)
                    if self.calls_tools:
                        yield chunk(self._choice(event.index, event))
                    else:
                        yield chunk(ChoicePart(event.index, "", FINISH_REASONS[event.finish_reason]))
            if self.request.include_usage:
                usage = Usage.total(sorted(outputs, key=lambda o: o.index), self.request.copies)
                yield sse(self.fmt.usage_chunk(self.rid, self.created, self.model, usage))
        except Exception as exc:
            yield sse(stream_error(exc))
            return
        finally:
            await events.aclose()
        yield sse("[DONE]")

    def _chunk(self, part: ChoicePart) -> str:
        return sse(self.fmt.chunk(self.rid, self.created, self.model, part))

    def _offset_after(self, scored: list[ScoredToken], offset: int) -> int:
        return offset + sum(len(self.decode(token_id)) for token_id, _ in scored)


def _best(candidates: list[GenerationOutput], n: int) -> list[GenerationOutput]:
    """The n candidates with the highest mean token logprob (OpenAI's best_of), or all of them."""
    if len(candidates) <= n:
        return candidates

    def mean_logprob(output: GenerationOutput) -> float:
        logprobs = [e.logprob for e in output.logprobs or ()]
        return sum(logprobs) / len(logprobs) if logprobs else float("-inf")

    return sorted(candidates, key=mean_logprob, reverse=True)[:n]
