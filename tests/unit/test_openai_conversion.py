"""The OpenAI edge: requests to GenerationParams, GenerationOutput to OpenAI's shapes, and the handlers end to end
on a ModelRuntime whose engine is a real AsyncEngine over the tiny model."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.testclient import TestClient

from textgen.api.errors import ApiError
from textgen.api.openai.formats import FINISH_REASONS, ChatFormat, ChoicePart, CompletionFormat
from textgen.api.openai.handlers import OpenAIHandlers
from textgen.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from textgen.api.quota import QuotaBook
from textgen.api.routes import build_routes_app
from textgen.api.schemas import Usage
from textgen.config import Settings
from textgen.engine import GenerationParams, SamplingParams
from textgen.serving.errors import ContextTooLong, NotReady
from textgen.serving.runtime import ModelRuntime

from .tiny_serving import TAG, drained, make_async_engine, reference_greedy, runtime_serving

PROMPT = "Hello, my name is"
FAULT = "__fault__"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
USAGE = Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8)


# --- requests to GenerationParams -------------------------------------------------------------------------------


def test_completion_request_maps_every_sampling_field_into_generation_params():
    request = CompletionRequest(
        prompt="hi",
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.2,
        seed=3,
        stop=["a", "b"],
        ignore_eos=True,
    )
    expected = GenerationParams(
        7, SamplingParams(temperature=0.5, top_p=0.9, top_k=40, repetition_penalty=1.2, seed=3), ("a", "b"), True
    )
    assert request.to_params() == expected


def test_openai_defaults_become_sixteen_tokens_of_plain_sampling():
    assert CompletionRequest(prompt="hi").to_params() == GenerationParams(16, SamplingParams(), (), False)


@pytest.mark.parametrize(("stop", "expected"), [("END", ("END",)), (["x", "yz"], ("x", "yz")), (None, ())])
def test_stop_may_be_one_string_or_a_list(stop, expected):
    assert CompletionRequest(prompt="hi", stop=stop).to_params().stop == expected
    assert ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], stop=stop).to_params().stop == expected


def test_an_empty_stop_string_in_a_list_is_refused():
    with pytest.raises(ValueError, match="must not be empty"):
        CompletionRequest(prompt="hi", stop=[""])


def test_an_empty_stop_string_on_its_own_is_refused():
    with pytest.raises(ValueError, match="must not be empty"):
        CompletionRequest(prompt="hi", stop="")


def test_chat_request_takes_max_completion_tokens_over_max_tokens():
    messages = [{"role": "user", "content": "hi"}]
    sampling = {"temperature": 0.0, "top_k": 5, "seed": 1, "repetition_penalty": 1.1, "top_p": 0.5}
    both = ChatCompletionRequest(messages=messages, max_tokens=10, max_completion_tokens=3, **sampling).to_params()
    only_max_tokens = ChatCompletionRequest(messages=messages, max_tokens=10, ignore_eos=True).to_params()
    assert both == GenerationParams(3, SamplingParams(**sampling))
    assert (only_max_tokens.max_new_tokens, only_max_tokens.ignore_eos) == (10, True)


def test_a_prompt_or_a_list_of_prompts_are_the_requests_prompts():
    assert CompletionRequest(prompt="only").prompts == ["only"]
    assert CompletionRequest(prompt=["a", "b"]).prompts == ["a", "b"]
    for empty in ([], [""], ["a", ""]):
        with pytest.raises(ValueError, match="prompt"):
            CompletionRequest(prompt=empty)


# --- GenerationOutput to OpenAI's shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("finish", "openai"), [("eos", "stop"), ("stop", "stop"), ("length", "length")])
def test_finish_reasons_map_to_openais(finish, openai):
    part = ChoicePart(0, "text", FINISH_REASONS[finish])
    completion = CompletionFormat(str).full("cmpl-1", 7, TAG, [part], USAGE).model_dump()
    chat = ChatFormat(str).full("cmpl-1", 7, TAG, [part], USAGE).model_dump()
    assert completion["choices"][0]["finish_reason"] == chat["choices"][0]["finish_reason"] == openai


def test_completion_format_has_openais_shape():
    fmt = CompletionFormat(str)
    full = fmt.full("cmpl-1", 7, TAG, [ChoicePart(0, "text", "length")], USAGE).model_dump()
    assert full == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 7,
        "model": TAG,
        "choices": [{"index": 0, "text": "text", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    chunk = fmt.chunk("cmpl-1", 7, TAG, ChoicePart(0, "")).model_dump()
    assert chunk["choices"] == [{"index": 0, "text": "", "finish_reason": None, "logprobs": None}]
    assert chunk["usage"] is None
    usage = fmt.usage_chunk("cmpl-1", 7, TAG, USAGE).model_dump()
    assert (usage["choices"], usage["usage"]["total_tokens"]) == ([], 8)


def test_chat_format_has_openais_shape():
    fmt = ChatFormat(str)
    full = fmt.full("cmpl-1", 7, TAG, [ChoicePart(0, "hello", "stop")], USAGE).model_dump()
    assert full["object"] == "chat.completion"
    assert full["choices"][0]["message"] == {"role": "assistant", "content": "hello", "tool_calls": None}
    assert full["choices"][0]["delta"] is None
    first, piece, last = (
        fmt.chunk("cmpl-1", 7, TAG, fmt.opening(0)).model_dump(),
        fmt.chunk("cmpl-1", 7, TAG, ChoicePart(0, "lo")).model_dump(),
        fmt.chunk("cmpl-1", 7, TAG, ChoicePart(0, "", "stop")).model_dump(),
    )
    assert {c["object"] for c in (first, piece, last)} == {"chat.completion.chunk"}
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "tool_calls": None}  # role first, once
    assert piece["choices"][0]["delta"] == {"role": None, "content": "lo", "tool_calls": None}
    assert (last["choices"][0]["delta"]["content"], last["choices"][0]["finish_reason"]) == ("", "stop")
    usage = fmt.usage_chunk("cmpl-1", 7, TAG, USAGE).model_dump()
    assert (usage["object"], usage["choices"], usage["usage"]["prompt_tokens"]) == ("chat.completion.chunk", [], 5)


# --- the handlers on a real engine ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handlers(tiny_model):
    engine = make_async_engine(tiny_model)
    yield OpenAIHandlers(runtime_serving(engine))
    engine.stop()


def completion(handlers: OpenAIHandlers, **fields) -> dict:
    request = CompletionRequest(prompt=PROMPT, temperature=0.0, ignore_eos=True, **fields)
    response = asyncio.run(handlers.completions(request))
    assert response.status_code == 200
    return json.loads(response.body)


def streamed(handlers: OpenAIHandlers, request) -> list[str]:
    """The raw SSE chunks of a streamed completion or chat completion."""

    async def read() -> list[str]:
        call = handlers.chat if isinstance(request, ChatCompletionRequest) else handlers.completions
        response = await call(request)
        assert response.media_type == "text/event-stream"
        chunks = [chunk async for chunk in response.body_iterator]
        await drained(handlers.runtime.engine())
        return chunks

    return asyncio.run(read())


def events(chunks: list[str]) -> list[dict]:
    assert all(c.startswith("data: ") and c.endswith("\n\n") for c in chunks)
    return [json.loads(c.removeprefix("data: ")) for c in chunks if c != "data: [DONE]\n\n"]


def test_a_completion_is_the_models_greedy_text_with_usage(handlers, tiny_model):
    tokenizer = tiny_model[1]
    body = completion(handlers, max_tokens=9)
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == TAG
    (choice,) = body["choices"]
    assert choice["text"] == tokenizer.decode(reference_greedy(tiny_model, PROMPT, 9))
    assert choice["finish_reason"] == "length"
    prompt_tokens = len(tokenizer.encode(PROMPT))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 9, "total_tokens": prompt_tokens + 9}


def test_echo_puts_the_prompt_before_the_completion(handlers):
    plain = completion(handlers, max_tokens=5)["choices"][0]["text"]
    echoed = completion(handlers, max_tokens=5, echo=True)
    assert echoed["choices"][0]["text"] == PROMPT + plain
    assert echoed["usage"]["completion_tokens"] == 5  # the echoed prompt is not counted as completion


def test_a_streamed_completion_is_the_same_text_in_chunks_and_ends_with_done(handlers):
    whole = completion(handlers, max_tokens=8)["choices"][0]["text"]
    chunks = streamed(handlers, CompletionRequest(prompt=PROMPT, max_tokens=8, temperature=0.0, stream=True))
    assert chunks[-1] == "data: [DONE]\n\n"
    parsed = events(chunks)
    assert all(e["object"] == "text_completion" and e["usage"] is None for e in parsed)
    assert "".join(e["choices"][0]["text"] for e in parsed) == whole
    assert [e["choices"][0]["finish_reason"] for e in parsed][-2:] == [None, "length"]
    assert len({e["id"] for e in parsed}) == 1


def test_a_streamed_completion_includes_usage_last_when_asked(handlers):
    request = CompletionRequest(
        prompt=PROMPT, max_tokens=4, temperature=0.0, stream=True, stream_options={"include_usage": True}
    )
    chunks = streamed(handlers, request)
    assert chunks[-1] == "data: [DONE]\n\n"
    *text_chunks, usage = events(chunks)
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 4
    assert all(e["usage"] is None for e in text_chunks)


def test_a_streamed_echo_sends_the_prompt_first(handlers):
    chunks = streamed(handlers, CompletionRequest(prompt=PROMPT, max_tokens=3, stream=True, echo=True))
    assert events(chunks)[0]["choices"][0]["text"] == PROMPT


def test_a_stream_refused_before_admission_raises_instead_of_starting(handlers):
    with pytest.raises(ContextTooLong) as refused:
        asyncio.run(handlers.completions(CompletionRequest(prompt=PROMPT, max_tokens=1024, stream=True)))
    assert refused.value.part == "max_new_tokens"


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gpt2:latest", TAG, None])
def test_the_served_model_answers_to_its_name_with_any_version(handlers, name):
    assert completion(handlers, max_tokens=1, model=name)["model"] == TAG


def test_another_model_name_is_model_not_found(handlers):
    with pytest.raises(ApiError) as refused:
        completion(handlers, max_tokens=1, model="gpt-4")
    assert (refused.value.type, refused.value.status, refused.value.field) == ("model_not_found", 404, "model")
    assert "gpt-4" in refused.value.message and TAG in refused.value.message


def test_chat_on_a_model_without_chat_template_is_an_invalid_request(handlers):
    assert not handlers.runtime.engine().tokenizer.chat_template
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ApiError) as refused:
        asyncio.run(handlers.chat(request))
    assert (refused.value.type, refused.value.status, refused.value.field) == ("invalid_request", 400, "messages")


def test_chat_applies_the_models_template_and_answers_as_the_assistant(tiny_model, monkeypatch):
    tokenizer = tiny_model[1]
    monkeypatch.setattr(tokenizer, "chat_template", CHAT_TEMPLATE)  # for this test only (a copy costs 0.3 s)
    engine = make_async_engine(tiny_model)
    try:
        chat = OpenAIHandlers(runtime_serving(engine))
        request = ChatCompletionRequest(
            messages=[{"role": "user", "content": "hi"}], max_completion_tokens=6, temperature=0.0, ignore_eos=True
        )
        body = json.loads(asyncio.run(chat.chat(request)).body)
        chunks = streamed(chat, request.model_copy(update={"stream": True}))
    finally:
        engine.stop()
    expected = tokenizer.decode(reference_greedy(tiny_model, "user: hi\nassistant:", 6))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected, "tool_calls": None}
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode("user: hi\nassistant:"))
    parsed = events(chunks)
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "tool_calls": None}
    assert "".join(e["choices"][0]["delta"]["content"] for e in parsed) == expected
    assert chunks[-1] == "data: [DONE]\n\n"


def test_a_stream_failing_midway_ends_with_an_error_event_and_no_done(tiny_model):
    engine = make_async_engine(tiny_model, fault_marker=FAULT)
    try:
        failing = OpenAIHandlers(runtime_serving(engine))
        chunks = streamed(failing, CompletionRequest(prompt=FAULT + " hi", max_tokens=20, stream=True))
        assert engine.gate.running == 0
    finally:
        engine.stop()
    assert "data: [DONE]\n\n" not in chunks
    error = json.loads(chunks[-1].removeprefix("data: "))["error"]
    assert error["type"] == "generation_failed"
    assert error["request_id"]


def test_models_before_the_model_is_loaded_is_not_ready():
    runtime = ModelRuntime(Settings(model_tag=TAG, _env_file=None))
    handlers = OpenAIHandlers(runtime)
    with pytest.raises(NotReady):
        handlers.models()
    response = TestClient(build_routes_app(runtime, handlers, QuotaBook(runtime.settings.limits_for))).get("/v1/models")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"]["type"] == "model_not_ready"


def test_models_lists_the_served_model_once_loaded(handlers):
    listing = handlers.models().model_dump()
    loaded_at = handlers.runtime.loaded_at
    assert abs(loaded_at - time.time()) < 3600  # the load time, in seconds since the epoch as OpenAI's `created`
    assert listing == {
        "object": "list",
        "data": [
            {"id": TAG, "object": "model", "created": loaded_at, "owned_by": "textgen", "root": TAG, "parent": None}
        ],
    }
