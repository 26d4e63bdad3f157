"""n, prompt lists, best_of, logprobs, echo and /generate/batch against a real `bentoml serve`, through the
official `openai` SDK (and plain HTTP for the service's own routes)."""

from __future__ import annotations

import math

import openai
import pytest

from tests.integration.conftest import Server

NO_EOS = {"ignore_eos": True}


def test_n_with_a_seed_is_reproducible_on_both_routes(oai: openai.OpenAI, chat: openai.OpenAI):
    first = oai.completions.create(model="tiny-gpt2", prompt="Once", max_tokens=8, n=3, seed=4, extra_body=NO_EOS)
    again = oai.completions.create(model="tiny-gpt2", prompt="Once", max_tokens=8, n=3, seed=4, extra_body=NO_EOS)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1
    assert first.usage.completion_tokens == 24

    messages = [{"role": "user", "content": "Hi"}]
    replies = [
        chat.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=6, n=2, seed=9, extra_body=NO_EOS)
        for _ in range(2)
    ]
    assert [c.index for c in replies[0].choices] == [0, 1]
    assert [c.message.content for c in replies[0].choices] == [c.message.content for c in replies[1].choices]
    assert replies[0].usage.completion_tokens == 12


def test_a_list_of_prompts_streams_every_choice_with_its_index(oai: openai.OpenAI):
    fields = {"model": "tiny-gpt2", "prompt": ["Once", "Twice"], "max_tokens": 5, "n": 2, "temperature": 0}
    whole = oai.completions.create(**fields, extra_body=NO_EOS)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    chunks = list(oai.completions.create(**fields, stream=True, extra_body=NO_EOS))
    texts = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(4)}
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    assert whole.choices[0].text == whole.choices[1].text != whole.choices[2].text


def test_completion_logprobs_greedy_pick_the_top_token_and_echo_scores_the_prompt(oai: openai.OpenAI):
    greedy = oai.completions.create(
        model="tiny-gpt2", prompt="The sky is", max_tokens=5, temperature=0, logprobs=3, extra_body=NO_EOS
    )
    logprobs = greedy.choices[0].logprobs
    assert len(logprobs.tokens) == 5
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(top) == 3
        assert max(top, key=top.get) == token
        assert logprob == pytest.approx(top[token]) and logprob <= 0

    echoed = oai.completions.create(
        model="tiny-gpt2", prompt="The sky is", max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    choice = echoed.choices[0]
    assert choice.text == "The sky is"
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert "".join(choice.logprobs.tokens) == "The sky is"
    assert echoed.usage.completion_tokens == 0


def test_streamed_logprobs_match_the_whole_response(oai: openai.OpenAI):
    fields = {"model": "tiny-gpt2", "prompt": "Rain", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    whole = oai.completions.create(**fields, extra_body=NO_EOS).choices[0].logprobs
    chunks = list(oai.completions.create(**fields, stream=True, extra_body=NO_EOS))
    pieces = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    streamed = [logprob for piece in pieces for logprob in piece.token_logprobs]
    assert streamed == pytest.approx(whole.token_logprobs)


def test_chat_logprobs_have_the_chat_shape(chat: openai.OpenAI):
    reply = chat.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=NO_EOS,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert token.top_logprobs[0].token == token.token
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)
        assert bytes(token.bytes).decode() == token.token


def test_best_of_returns_the_best_candidate_and_bills_every_one(oai: openai.OpenAI):
    best = oai.completions.create(
        model="tiny-gpt2", prompt="A", max_tokens=4, n=1, best_of=3, seed=2, logprobs=0, extra_body=NO_EOS
    )
    candidates = oai.completions.create(
        model="tiny-gpt2", prompt="A", max_tokens=4, n=3, seed=2, logprobs=0, extra_body=NO_EOS
    )

    def mean(choice) -> float:
        return math.fsum(choice.logprobs.token_logprobs) / len(choice.logprobs.token_logprobs)

    assert best.choices[0].text == max(candidates.choices, key=mean).text
    assert best.usage.completion_tokens == 12


def test_refusals_name_the_field(oai: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model="tiny-gpt2", prompt=["a", "b", "c"], max_tokens=1, n=2)
    assert refused.value.body["field"] == "prompt" and "at most 5" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model="tiny-gpt2", prompt="a", max_tokens=1, extra_body={"frequency_typo": 1})
    assert "frequency_typo" in refused.value.body["message"]


def test_generate_batch_answers_each_prompt_as_generate_does(server: Server):
    fields = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    batch = server.post("/generate/batch", json={"prompts": ["One", "Two"], **fields})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    for prompt, result in zip(["One", "Two"], results, strict=True):
        alone = server.post("/generate", json={"prompt": prompt, **fields}).json()
        assert result["completion"] == alone["completion"]
        assert result["usage"] == alone["usage"]
        assert [t["token_id"] for t in result["logprobs"]] == [t["token_id"] for t in alone["logprobs"]]
    too_many = server.post("/generate/batch", json={"prompts": ["x"] * 6, **fields})
    assert too_many.status_code == 400 and too_many.json()["error"]["field"] == "prompts"
