"""Structured output through the handlers and the batching engine on the tiny random-weight model.

The grammar, not the weights, makes the shape: every output that ends by its grammar parses and validates,
at temperature 1, over many seeds, whatever else shares the batch.
"""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

from textgen.api.errors import ApiError
from textgen.api.generate import GenerateHandlers
from textgen.api.openai.handlers import OpenAIHandlers
from textgen.api.openai.schemas import CompletionRequest
from textgen.api.schemas import GenerateBatchRequest, GenerateRequest

from .tiny_serving import make_async_engine, runtime_serving

PROMPT = "Answer in JSON:"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SEEDS = range(20)


@pytest.fixture(scope="module")
def runtime(tiny_model):
    engine = make_async_engine(tiny_model, limit=5)
    yield runtime_serving(engine)
    engine.stop()


def generate(runtime, **fields) -> dict:
    request = GenerateRequest(prompt=PROMPT, **{"max_new_tokens": 60, **fields})
    return asyncio.run(GenerateHandlers(runtime).generate(request)).model_dump()


def test_json_schema_outputs_validate_at_temperature_one_over_many_seeds(runtime):
    ended = 0
    for seed in SEEDS:
        result = generate(runtime, json_schema=SCHEMA, temperature=1.0, seed=seed, max_new_tokens=200)
        if result["finish_reason"] == "length":
            continue  # cut by max_new_tokens: a prefix, as the README says
        ended += 1
        jsonschema.validate(json.loads(result["completion"]), SCHEMA)
    assert ended >= len(SEEDS) // 2  # random weights wander (long strings, whitespace) but most finish


def test_regex_and_choice_outputs_always_match(runtime):
    for seed in SEEDS:
        dated = generate(runtime, regex=r"\d{4}-\d{2}-\d{2}", temperature=1.0, seed=seed)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", dated["completion"]) and dated["finish_reason"] != "length"
        picked = generate(runtime, choice=["yes", "no", "not sure"], temperature=1.0, seed=seed)
        assert picked["completion"] in {"yes", "no", "not sure"}


def test_the_grammar_ends_the_row_even_with_ignore_eos(runtime):
    result = generate(runtime, choice=["red", "green"], temperature=0.0, ignore_eos=True)
    assert result["completion"] in {"red", "green"}
    assert result["finish_reason"] == "stop"


def test_a_mixed_batch_gives_each_row_what_it_gives_alone(runtime):
    """Constrained, unconstrained, logprob and n>1 rows in shared forward passes."""
    openai = OpenAIHandlers(runtime)
    handlers = GenerateHandlers(runtime)
    requests = [
        lambda: handlers.generate(GenerateRequest(prompt=PROMPT, json_schema=SCHEMA, temperature=1.0, seed=3)),
        lambda: handlers.generate(GenerateRequest(prompt=PROMPT, max_new_tokens=20, temperature=0.0)),
        lambda: handlers.generate(GenerateRequest(prompt=PROMPT, regex="[a-z]{3,9}", temperature=0.0, logprobs=2)),
        lambda: openai.completions(
            CompletionRequest(prompt=PROMPT, max_tokens=12, n=2, seed=8, logprobs=1, ignore_eos=True)
        ),
    ]

    def comparable(outcome):
        return json.loads(outcome.body)["choices"] if hasattr(outcome, "body") else outcome.completion

    async def together():
        return await asyncio.gather(*(make() for make in requests))

    joint = [comparable(o) for o in asyncio.run(together())]
    alone = [comparable(asyncio.run(make())) for make in requests]
    for a, b in zip(joint, alone, strict=True):
        if isinstance(a, list):  # OpenAI choices: logprobs equal up to float noise of other batch shapes
            assert [c["text"] for c in a] == [c["text"] for c in b]
            assert [c["logprobs"]["tokens"] for c in a] == [c["logprobs"]["tokens"] for c in b]
        else:
            assert a == b


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"json_schema": {"type": "object", "properties": {"a": {"type": "strnig"}}}}, "json_schema"),
        ({"regex": "(unclosed"}, "regex"),
        ({"json_schema": {"type": "string", "format": "no-such-format"}}, "json_schema"),
    ],
)
def test_an_invalid_constraint_is_a_400_naming_its_field(runtime, fields, field):
    with pytest.raises(ApiError) as refused:
        generate(runtime, **fields)
    assert (refused.value.status, refused.value.field) == (400, field)
    assert refused.value.message.startswith(f"{field}: ")


def test_an_invalid_response_format_on_the_openai_route_names_it(runtime):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(ApiError) as refused:
        asyncio.run(OpenAIHandlers(runtime).completions(CompletionRequest(prompt=PROMPT, response_format=bad)))
    assert (refused.value.status, refused.value.field) == (400, "response_format")


def test_two_constraints_at_once_are_refused():
    with pytest.raises(ValueError, match="at most one of"):
        GenerateRequest(prompt=PROMPT, regex="a", choice=["a"])
    with pytest.raises(ValueError, match="not both"):
        CompletionRequest(prompt=PROMPT, response_format={"type": "json_object"}, structured_outputs={"regex": "a"})


def test_generate_batch_constrains_every_prompt(runtime):
    request = GenerateBatchRequest(prompts=["A", "B", "C"], choice=["left", "right"], temperature=1.0, seed=1)
    results = asyncio.run(GenerateHandlers(runtime).generate_batch(request)).results
    assert all(r.completion in {"left", "right"} for r in results)
