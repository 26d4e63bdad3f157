"""Server-sent events: the framing, the in-stream error event, and the events of /generate_stream on the tiny model."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from textgen.api.errors import MODEL_NOT_FOUND, ApiError
from textgen.api.generate import GenerateHandlers, _sse_events
from textgen.api.schemas import GenerateRequest, GenerateResponse, Usage
from textgen.api.sse import STREAM_FAILED, sse, stream_error
from textgen.serving.errors import ContextTooLong, GenerationFailed, Overloaded
from textgen.serving.outputs import Admitted, TextDelta

from .tiny_serving import TAG, drained, make_async_engine, running_engine, runtime_serving

PROMPT = "The quick brown fox jumps over the lazy dog and then"
FAULT = "__fault__"


def data_of(chunk: str):
    """The JSON of one event, after checking it is exactly one `data:` line and the blank line."""
    assert chunk.startswith("data: ") and chunk.endswith("\n\n")
    assert chunk.count("\n") == 2  # a newline inside would split the event
    return json.loads(chunk.removeprefix("data: "))


# --- framing --------------------------------------------------------------------------------------------------


def test_a_model_is_one_event_of_its_json():
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    assert data_of(sse(usage)) == usage.model_dump()


def test_a_dict_is_one_event_even_with_newlines_in_its_text():
    event = {"type": "token", "text": "line one\n\nline two\r\n", "emoji": "😀"}
    assert data_of(sse(event)) == event


def test_a_string_is_sent_as_it_is():
    assert sse("[DONE]") == "data: [DONE]\n\n"


# --- the error event ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (Overloaded("all 5 generation slots are busy", retry_after_s=3), "overloaded"),
        (GenerationFailed(), "generation_failed"),
        (ContextTooLong("prompt has 2000 tokens"), "context_length_exceeded"),
        (ApiError(MODEL_NOT_FOUND, "model 'x' is not served here"), "model_not_found"),
    ],
)
def test_a_known_error_keeps_its_type_and_message(error, error_type):
    body = stream_error(error)["error"]
    assert (body["type"], body["message"]) == (error_type, error.message)
    assert body["request_id"]


def test_an_unexpected_error_is_an_internal_error_without_internals(caplog):
    caplog.set_level(logging.ERROR, logger="textgen.api.sse")
    try:
        raise RuntimeError("CUDA error at /opt/secret/weights.bin")
    except RuntimeError as exc:  # as its callers do: it logs the exception being handled
        body = stream_error(exc)
    assert body["error"]["type"] == "internal_error"
    assert body["error"]["message"] == STREAM_FAILED
    assert "secret" not in json.dumps(body)
    (record,) = caplog.records
    assert "streamed generation failed" in record.getMessage()
    assert isinstance(record.exc_info[1], RuntimeError)  # the details go to the log, with the request id


# --- /generate_stream -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handlers(tiny_model):
    engine = make_async_engine(tiny_model)
    yield GenerateHandlers(runtime_serving(engine))
    engine.stop()


def read_stream(handlers: GenerateHandlers, request: GenerateRequest) -> list[dict]:
    async def read():
        chunks = [chunk async for chunk in await handlers.stream(request)]
        await drained(handlers.runtime.engine())
        return chunks

    return [data_of(chunk) for chunk in asyncio.run(read())]


def test_generate_stream_sends_token_events_then_a_done_event_with_the_generate_response(handlers):
    request = GenerateRequest(prompt=PROMPT, max_new_tokens=12, temperature=0.0, ignore_eos=True)
    whole = asyncio.run(handlers.generate(request)).model_dump()

    *tokens, done = read_stream(handlers, request)

    assert len(tokens) > 1
    assert all(set(t) == {"type", "text"} and t["type"] == "token" and t["text"] for t in tokens)
    assert done.pop("type") == "done"
    assert set(done) == set(GenerateResponse.model_fields)
    assert done["completion"] == "".join(t["text"] for t in tokens) == whole["completion"]
    assert done["generated_text"] == PROMPT + done["completion"]
    assert (done["usage"], done["finish_reason"], done["model"]) == (whole["usage"], "length", TAG)
    assert done["usage"]["completion_tokens"] == 12
    assert done["timings"]["total_ms"] >= done["timings"]["inference_ms"] > 0


def test_generate_stream_refusals_come_before_any_event(handlers):
    request = GenerateRequest(prompt=PROMPT, max_new_tokens=1024)
    with pytest.raises(ContextTooLong):
        asyncio.run(handlers.stream(request))
    assert handlers.runtime.gate.running == 0


def test_a_generate_stream_failing_midway_ends_with_an_error_event(tiny_model):
    with running_engine(tiny_model, fault_marker=FAULT) as engine:
        events = read_stream(
            GenerateHandlers(runtime_serving(engine)), GenerateRequest(prompt=FAULT + " then", max_new_tokens=30)
        )
        assert engine.gate.running == 0
    *before, last = events
    assert all(e["type"] == "token" for e in before)
    assert last["type"] == "error"
    assert last["error"]["type"] == "generation_failed"
    assert last["error"]["message"] == GenerationFailed.default_message


def test_an_unexpected_failure_midway_is_an_internal_error_event_and_closes_the_source(caplog):
    caplog.set_level(logging.ERROR, logger="textgen.api.sse")
    closed = []

    async def source():
        try:
            yield Admitted()
            yield TextDelta("Once")
            raise KeyError("internal detail")
        finally:
            closed.append(True)

    async def read():
        return [chunk async for chunk in _sse_events("p", source(), str)]

    token, error = (data_of(c) for c in asyncio.run(read()))
    assert token == {"type": "token", "text": "Once"}
    assert (error["type"], error["error"]["type"]) == ("error", "internal_error")
    assert "internal detail" not in json.dumps(error)
    assert closed == [True]
    (record,) = caplog.records
    assert isinstance(record.exc_info[1], KeyError)


def test_closing_the_event_stream_early_frees_the_generation_slot(handlers):
    engine = handlers.runtime.engine()

    async def scenario():
        events = await handlers.stream(GenerateRequest(prompt=PROMPT, max_new_tokens=900, ignore_eos=True))
        first = data_of(await anext(events))
        await events.aclose()  # what the server does when the client goes away
        running = engine.gate.running
        await drained(engine)
        return first, running

    first, running_after_close = asyncio.run(scenario())
    assert first["type"] == "token"
    assert running_after_close == 0
