"""Streaming and the OpenAI-compatible API against a real `bentoml serve`, with the official `openai` SDK."""

from __future__ import annotations

import json
import re
import time

import bentoml
import openai
import pytest
import requests

from tests.integration.conftest import API_KEY, Server

GREEDY = {"prompt": "Streaming is", "max_new_tokens": 20, "temperature": 0, "ignore_eos": True}


def parse_sse(text: str) -> list[dict]:
    return [json.loads(block[len("data: ") :]) for block in text.split("\n\n") if block.startswith("data: {")]


def test_generate_stream_sends_tokens_then_done(server: Server):
    expected = server.post("/generate", json=GREEDY).json()
    with server.post("/generate_stream", json=GREEDY, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk for chunk in response.iter_content(chunk_size=None, decode_unicode=True)]
    events = parse_sse("".join(chunks))
    tokens = [e["text"] for e in events if e["type"] == "token"]
    done = events[-1]
    assert len(chunks) > 5 and len(tokens) > 5  # text arrives piece by piece
    assert "".join(tokens) == done["completion"] == expected["completion"]
    assert done["type"] == "done"
    assert done["finish_reason"] == "length"
    assert done["usage"] == expected["usage"]


def test_bentoml_client_iterates_the_stream(server: Server):
    with bentoml.SyncHTTPClient(server.url, token=API_KEY) as client:
        chunks = list(client.generate_stream(**GREEDY))
    events = parse_sse("".join(chunks))
    assert events[-1]["type"] == "done"
    assert "".join(e["text"] for e in events if e["type"] == "token") == events[-1]["completion"]


def test_stream_refusals_keep_their_http_status(server: Server):
    response = server.post("/generate_stream", json={"prompt": " hi" * 1000, "max_new_tokens": 100})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "context_length_exceeded"
    assert server.post("/generate_stream", key="wrong", json=GREEDY).status_code == 401


def test_openai_sdk_completion_matches_generate(server: Server, oai: openai.OpenAI):
    expected = server.post("/generate", json={"prompt": "Hello", "max_new_tokens": 8, "temperature": 0}).json()
    completion = oai.completions.create(model=expected["model"], prompt="Hello", max_tokens=8, temperature=0)
    assert completion.choices[0].text == expected["completion"]
    assert completion.usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert completion.object == "text_completion"


def test_openai_sdk_streaming_with_usage(oai: openai.OpenAI):
    reference = oai.completions.create(
        prompt="Hi", max_tokens=12, temperature=0, model=_served(oai), extra_body={"ignore_eos": True}
    )
    stream = oai.completions.create(
        prompt="Hi",
        max_tokens=12,
        temperature=0,
        model=_served(oai),
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == reference.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def _served(oai: openai.OpenAI) -> str:
    return oai.models.list().data[0].id


def test_openai_models_and_errors(server: Server, oai: openai.OpenAI):
    models = oai.models.list().data
    assert len(models) == 1 and models[0].id.startswith("tiny-gpt2:")
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="chat template"):
        oai.chat.completions.create(model=models[0].id, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=models[0].id, prompt="x", max_tokens=1, n=6)  # more than run at once
    bad_key = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.completions.create(model=models[0].id, prompt="x", max_tokens=1)


def test_a_disconnected_stream_frees_its_slot(server: Server):
    long_run = {**GREEDY, "max_new_tokens": 900}
    response = server.post("/generate_stream", json=long_run, stream=True)
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith(b"data: "))  # generation under way
    assert server.get("/health", key=None).json()["generations"]["running"] == 1
    response.close()  # the client goes away mid-generation
    started = time.monotonic()
    server.wait_idle()
    assert time.monotonic() - started < 10
    other = server.post("/generate", json=GREEDY)  # others are unaffected
    assert other.status_code == 200 and other.json()["usage"]["completion_tokens"] == 20
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert re.search(r'textgen_requests_total\{outcome="(disconnected|cancelled)"\} [1-9]', metrics), metrics


def test_chat_completions_with_a_chat_template(chat_server: str):
    client = openai.OpenAI(base_url=chat_server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    prompt = "<|system|>Be brief.\n<|user|>Hello!\n<|assistant|>"
    reference = client.completions.create(
        model="tiny-chat", prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    chat = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == reference.choices[0].text
    assert chat.usage.prompt_tokens == reference.usage.prompt_tokens
    stream = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reference.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
