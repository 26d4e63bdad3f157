"""Several sequences per request (n, prompt lists, best_of, /generate/batch) and logprobs, on the tiny model.

Real AsyncEngine, BatchEngine thread and handlers; logprobs are checked against a plain forward pass of the model.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from textgen.api.errors import ApiError
from textgen.api.generate import GenerateHandlers
from textgen.api.openai.handlers import OpenAIHandlers
from textgen.api.openai.schemas import CompletionRequest
from textgen.api.rows import derived_seed
from textgen.api.schemas import GenerateBatchRequest, GenerateRequest
from textgen.engine import GenerationParams, SamplingParams
from textgen.serving.async_engine import Row
from textgen.serving.outputs import GenerationOutput, PromptScored, TextDelta

from .tiny_serving import drained, greedy, make_async_engine, reference_greedy, runtime_serving

PROMPT = "Hello, my name is"
OTHER = "The quick brown fox jumps over the lazy dog and then"
SAMPLED = SamplingParams(temperature=1.0, seed=7)


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = make_async_engine(tiny_model, limit=5)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def openai(engine):
    return OpenAIHandlers(runtime_serving(engine))


def model_logprobs(tiny_model, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at every position of `ids`, in one plain forward pass."""
    model, _ = tiny_model
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(dim=-1)


def completion(openai: OpenAIHandlers, **fields) -> dict:
    response = asyncio.run(openai.completions(CompletionRequest(**fields)))
    assert response.status_code == 200
    return json.loads(response.body)


# --- logprobs in the engine ------------------------------------------------------------------------------------------


def test_greedy_logprobs_are_the_models_own_and_the_chosen_token_is_the_top_one(engine, tiny_model):
    output = asyncio.run(engine.generate(PROMPT, greedy(6, logprobs=3)))
    prompt_ids = engine.tokenizer.encode(PROMPT)
    expected = model_logprobs(tiny_model, prompt_ids + output.token_ids)
    assert output.token_ids == reference_greedy(tiny_model, PROMPT, 6)
    assert [e.token_id for e in output.logprobs] == output.token_ids
    for step, entry in enumerate(output.logprobs):
        row = expected[len(prompt_ids) - 1 + step]
        assert entry.logprob == pytest.approx(row[entry.token_id].item(), abs=1e-4)
        assert len(entry.top) == 3
        assert entry.top[0][0] == entry.token_id  # greedy picks the most likely token
        assert [lp for _, lp in entry.top] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)


def test_logprobs_are_of_the_raw_distribution_whatever_the_temperature(engine, tiny_model):
    hot = GenerationParams(5, SamplingParams(temperature=1.7, seed=3), ignore_eos=True, logprobs=0)
    output = asyncio.run(engine.generate(PROMPT, hot))
    prompt_ids = engine.tokenizer.encode(PROMPT)
    expected = model_logprobs(tiny_model, prompt_ids + output.token_ids)
    for step, entry in enumerate(output.logprobs):
        assert entry.logprob == pytest.approx(expected[len(prompt_ids) - 1 + step, entry.token_id].item(), abs=1e-4)
        assert entry.top == ()


def test_prompt_logprobs_score_every_prompt_token_but_the_first(engine, tiny_model):
    params = GenerationParams(0, prompt_logprobs=2)
    output = asyncio.run(engine.generate(OTHER, params))
    prompt_ids = engine.tokenizer.encode(OTHER)
    expected = model_logprobs(tiny_model, prompt_ids)
    assert (output.token_ids, output.text, output.finish_reason) == ([], "", "length")
    assert output.prompt_logprobs[0] is None
    for position, entry in enumerate(output.prompt_logprobs[1:], start=1):
        assert entry.token_id == prompt_ids[position]
        assert entry.logprob == pytest.approx(expected[position - 1, prompt_ids[position]].item(), abs=1e-4)
        assert len(entry.top) == 2


def test_rows_that_ask_for_nothing_get_no_logprobs(engine):
    output = asyncio.run(engine.generate(PROMPT, greedy(3)))
    assert (output.logprobs, output.prompt_logprobs) == (None, None)


# --- several rows per request ---------------------------------------------------------------------------------------


def test_each_row_of_a_mixed_request_gives_what_it_gives_alone(engine):
    rows = [
        Row(PROMPT, greedy(8)),
        Row(OTHER, GenerationParams(8, SAMPLED, ignore_eos=True)),
        Row(PROMPT, greedy(5, logprobs=2)),
        Row(OTHER, greedy(4, prompt_logprobs=1)),
    ]
    together = asyncio.run(engine.generate_rows(rows))
    alone = [asyncio.run(engine.generate(row.prompt, row.params)) for row in rows]
    assert [o.index for o in together] == [0, 1, 2, 3]
    for joint, single in zip(together, alone, strict=True):
        assert joint.token_ids == single.token_ids
        assert joint.logprobs == single.logprobs or _close(joint.logprobs, single.logprobs)
    assert together[3].prompt_logprobs is not None


def _close(a, b) -> bool:
    return [e.token_id for e in a] == [e.token_id for e in b] and all(
        x.logprob == pytest.approx(y.logprob, abs=1e-4) for x, y in zip(a, b, strict=True)
    )


def test_a_stream_of_several_rows_tags_every_event_with_its_row(engine):
    async def read():
        events = [e async for e in engine.stream_rows([Row(PROMPT, greedy(4)), Row(OTHER, greedy(6, logprobs=0))])]
        await drained(engine)
        return events

    events = asyncio.run(read())
    outputs = {e.index: e for e in events if isinstance(e, GenerationOutput)}
    for index in (0, 1):
        text = "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == index)
        assert text == outputs[index].text
    scored = [e for e in events if isinstance(e, TextDelta) and e.index == 1]
    assert [d.logprobs[0].token_id for d in scored] == outputs[1].token_ids  # one event per token, with logprobs
    assert not any(isinstance(e, PromptScored) for e in events)


def test_n_with_a_seed_is_reproducible_and_each_choice_has_its_own_seed(openai):
    fields = {"prompt": PROMPT, "max_tokens": 8, "n": 3, "seed": 11, "ignore_eos": True}
    first, again = completion(openai, **fields), completion(openai, **fields)
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["text"] for c in again["choices"]]
    assert len(set(texts)) > 1
    single = completion(openai, prompt=PROMPT, max_tokens=8, seed=11, ignore_eos=True)
    assert single["choices"][0]["text"] == texts[0]  # the first choice keeps the request's seed
    assert len({derived_seed(11, j) for j in range(8)}) == 8
    prompt_tokens = first["usage"]["prompt_tokens"]
    assert first["usage"]["completion_tokens"] == 24
    assert first["usage"]["total_tokens"] == prompt_tokens + 24


def test_a_list_of_prompts_gives_choices_prompt_by_prompt(openai, tiny_model):
    body = completion(openai, prompt=[PROMPT, OTHER], max_tokens=4, n=2, temperature=0.0, ignore_eos=True)
    tokenizer = tiny_model[1]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    expected = [tokenizer.decode(reference_greedy(tiny_model, p, 4)) for p in (PROMPT, OTHER)]
    assert [c["text"] for c in body["choices"]] == [expected[0]] * 2 + [expected[1]] * 2
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in (PROMPT, OTHER))
    assert body["usage"]["prompt_tokens"] == prompt_tokens  # each prompt counts once, not once per choice


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"n": 6}, "n"), ({"prompt": [PROMPT] * 3, "n": 2}, "prompt"), ({"n": 2, "best_of": 6}, "best_of")],
)
def test_more_rows_than_may_run_at_once_is_a_400_naming_the_field_and_the_limit(openai, fields, field):
    with pytest.raises(ApiError) as refused:
        completion(openai, **{"prompt": PROMPT, "max_tokens": 2, **fields})
    assert (refused.value.status, refused.value.field) == (400, field)
    assert "at most 5" in refused.value.message


def test_best_of_returns_the_n_candidates_with_the_best_mean_logprob_and_bills_them_all(openai):
    fields = {"prompt": PROMPT, "max_tokens": 6, "seed": 5, "ignore_eos": True}
    best = completion(openai, **fields, n=1, best_of=4, logprobs=0)
    candidates = completion(openai, **fields, n=4, logprobs=0)

    def mean(choice):
        logprobs = choice["logprobs"]["token_logprobs"]
        return sum(logprobs) / len(logprobs)

    ranked = sorted(candidates["choices"], key=mean, reverse=True)
    assert [c["text"] for c in best["choices"]] == [ranked[0]["text"]]
    assert best["choices"][0]["index"] == 0
    assert best["usage"]["completion_tokens"] == 24  # every candidate is billed, as OpenAI does


def test_completion_logprobs_have_openais_shape_and_echo_scores_the_prompt(openai, engine):
    body = completion(openai, prompt=OTHER, max_tokens=3, temperature=0.0, logprobs=2, echo=True, ignore_eos=True)
    (choice,) = body["choices"]
    logprobs = choice["logprobs"]
    prompt_ids = engine.tokenizer.encode(OTHER)
    count = len(prompt_ids) + 3
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == count
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(isinstance(lp, float) for lp in logprobs["token_logprobs"][1:])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"][1:])
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"][len(prompt_ids)] == len(OTHER)
    for token, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        if lp is not None and len(prompt_ids) and token in top:
            assert top[token] == pytest.approx(lp)


def test_max_tokens_zero_with_echo_only_scores_the_prompt(openai):
    body = completion(openai, prompt=OTHER, max_tokens=0, echo=True, logprobs=0)
    (choice,) = body["choices"]
    assert choice["text"] == OTHER
    assert body["usage"]["completion_tokens"] == 0
    assert choice["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"max_tokens": 0}, "only with echo"),
        ({"n": 3, "best_of": 2}, "at least n"),
        ({"best_of": 2, "stream": True}, "cannot be streamed"),
        ({"logprobs": 6}, "less than or equal to 5"),
        ({"user": "someone"}, "Extra inputs are not permitted"),
        ({"logit_bias": {"50256": -100}}, "at most 0 items"),
    ],
)
def test_unsupported_or_inconsistent_fields_are_refused_never_ignored(fields, problem):
    with pytest.raises(ValueError, match=problem):
        CompletionRequest(prompt=PROMPT, **fields)


def test_generate_batch_returns_one_result_per_prompt_each_as_generate_would(engine):
    handlers = GenerateHandlers(runtime_serving(engine))
    fields = {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True, "logprobs": 1}
    batch = asyncio.run(handlers.generate_batch(GenerateBatchRequest(prompts=[PROMPT, OTHER], **fields)))
    alone = [asyncio.run(handlers.generate(GenerateRequest(prompt=p, **fields))) for p in (PROMPT, OTHER)]
    assert [r.completion for r in batch.results] == [r.completion for r in alone]
    assert [r.usage for r in batch.results] == [r.usage for r in alone]
    first = batch.results[0].logprobs
    assert len(first) == 5 and first[0].top_logprobs[0].token_id == first[0].token_id
    with pytest.raises(ApiError) as refused:
        asyncio.run(handlers.generate_batch(GenerateBatchRequest(prompts=[PROMPT] * 6, **fields)))
    assert refused.value.field == "prompts"
