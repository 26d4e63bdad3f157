"""Structured output and tool calls against a real `bentoml serve` (random weights), through the `openai` SDK."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

ITEM = {
    "type": "object",
    "properties": {"item": {"type": "string", "maxLength": 10}, "count": {"type": "integer", "maximum": 99}},
    "required": ["item", "count"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "item", "schema": ITEM, "strict": True}}


def test_response_format_json_schema_holds_at_temperature_one(oai: openai.OpenAI):
    finished = 0
    for seed in range(8):
        completion = oai.completions.create(
            model="tiny-gpt2",
            prompt="Stock:",
            max_tokens=150,
            temperature=1,
            seed=seed,
            extra_body={"response_format": RESPONSE_FORMAT},
        )
        choice = completion.choices[0]
        if choice.finish_reason == "length":
            continue
        finished += 1
        jsonschema.validate(json.loads(choice.text), ITEM)
    assert finished >= 4


def test_chat_response_format_and_a_streamed_constrained_reply(chat: openai.OpenAI):
    fields = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "An item?"}],
        "max_tokens": 150,
        "temperature": 1,
        "seed": 3,
        "response_format": RESPONSE_FORMAT,
    }
    whole = chat.chat.completions.create(**fields)
    streamed = "".join(c.choices[0].delta.content or "" for c in chat.chat.completions.create(**fields, stream=True))
    assert streamed == whole.choices[0].message.content
    if whole.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(streamed), ITEM)


def test_vllms_structured_outputs_choice_and_regex(oai: openai.OpenAI):
    for seed in range(5):
        picked = oai.completions.create(
            model="tiny-gpt2",
            prompt="Pick:",
            max_tokens=10,
            temperature=1,
            seed=seed,
            extra_body={"structured_outputs": {"choice": ["alpha", "beta"]}},
        )
        assert picked.choices[0].text in {"alpha", "beta"}
        code = oai.completions.create(
            model="tiny-gpt2",
            prompt="Code:",
            max_tokens=10,
            temperature=1,
            seed=seed,
            extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{2}"}},
        )
        assert re.fullmatch("[A-Z]{3}-[0-9]{2}", code.choices[0].text)


def test_an_invalid_schema_is_a_400_naming_response_format(oai: openai.OpenAI):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model="tiny-gpt2", prompt="x", max_tokens=5, extra_body={"response_format": bad})
    assert refused.value.body["field"] == "response_format"


def test_a_required_tool_call_comes_back_as_tool_calls(chat: openai.OpenAI):
    weather = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]
    reply = chat.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=tools,
        tool_choice="required",
        max_tokens=100,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), weather)
    with pytest.raises(openai.BadRequestError, match="auto"):
        chat.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}], tools=tools)
