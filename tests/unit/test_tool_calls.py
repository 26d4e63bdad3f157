"""Tool calls on chat completions: the reply is one call of an offered function, arguments valid under its schema."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from textgen.api.errors import ApiError
from textgen.api.openai.handlers import OpenAIHandlers
from textgen.api.openai.schemas import ChatCompletionRequest

from .tiny_serving import drained, make_async_engine, runtime_serving

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def openai(tiny_model):
    tokenizer = tiny_model[1]
    saved, tokenizer.chat_template = tokenizer.chat_template, CHAT_TEMPLATE
    engine = make_async_engine(tiny_model, limit=5)
    yield OpenAIHandlers(runtime_serving(engine))
    engine.stop()
    tokenizer.chat_template = saved


def chat(openai, **fields) -> dict:
    request = ChatCompletionRequest(messages=MESSAGES, tools=TOOLS, max_tokens=200, **fields)
    return json.loads(asyncio.run(openai.chat(request)).body)


def test_required_makes_a_valid_call_of_an_offered_function_over_many_seeds(openai):
    schemas = {"get_weather": WEATHER, "get_time": TIME}
    calls = 0
    for seed in range(12):
        body = chat(openai, tool_choice="required", temperature=1.0, seed=seed)
        (choice,) = body["choices"]
        if choice["finish_reason"] == "length":
            continue
        calls += 1
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
    assert calls >= 6


def test_a_named_function_is_the_one_called(openai):
    body = chat(openai, tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0.0)
    (call,) = body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"])["zone"] in {"UTC", "CET"}


def test_none_ignores_the_tools(openai):
    body = chat(openai, tool_choice="none", temperature=0.0, max_completion_tokens=5, ignore_eos=True)
    choice = body["choices"][0]
    assert choice["message"]["tool_calls"] is None and choice["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("choice", "problem"),
    [(None, '"auto"'), ("auto", '"auto"'), ({"type": "function", "function": {"name": "nope"}}, "not among")],
)
def test_auto_and_unknown_functions_are_refused_naming_tool_choice(openai, choice, problem):
    fields = {} if choice is None else {"tool_choice": choice}
    with pytest.raises(ApiError) as refused:
        chat(openai, **fields)
    assert (refused.value.status, refused.value.field) == (400, "tool_choice")
    assert problem in refused.value.message


def test_a_streamed_call_arrives_whole_before_the_finish(openai):
    async def read():
        request = ChatCompletionRequest(
            messages=MESSAGES, tools=TOOLS, tool_choice="required", temperature=0.0, max_tokens=120, stream=True
        )
        response = await openai.chat(request)
        chunks = [c async for c in response.body_iterator]
        await drained(openai.runtime.engine())
        return [json.loads(c[6:]) for c in chunks if c.startswith("data: {")]

    events = asyncio.run(read())
    whole = chat(openai, tool_choice="required", temperature=0.0)
    calls = [e["choices"][0]["delta"]["tool_calls"] for e in events if e["choices"][0]["delta"]["tool_calls"]]
    assert len(calls) == 1 and calls[0][0]["index"] == 0
    assert calls[0][0]["function"] == whole["choices"][0]["message"]["tool_calls"][0]["function"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(e["choices"][0]["delta"]["content"] for e in events)


def test_tools_and_a_response_format_together_are_refused():
    with pytest.raises(ValueError, match="own output format"):
        ChatCompletionRequest(
            messages=MESSAGES, tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}
        )
