"""LoRA adapters on a real `bentoml serve`: imported with the project's script, loaded at start-up and at
runtime by admin keys, mixed in batches, unloaded while in use, counted by adapter."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.integration.conftest import API_KEY, MODEL_NAME, import_model, serving
from textgen_bench.common.lora import make_lora_adapter

ADMIN_KEY = "lora-admin-key-0123456789"
PROMPT = "Hello, my name is"


@pytest.fixture(scope="module")
def lora_store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    home = tmp_path_factory.mktemp("lora-home")
    import_model(home, "--source", str(tiny_model_dir), "--name", MODEL_NAME)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    folders = {}
    for seed, name in enumerate(("alpha", "beta", "gamma"), start=1):
        folders[name] = make_lora_adapter(base, tmp_path_factory.mktemp(name), seed, base_name=MODEL_NAME)
        import_model(home, "--source", str(folders[name]), "--name", name)
    return home, folders


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lora-server")


@pytest.fixture(scope="module")
def url(lora_store, workdir) -> Iterator[str]:
    home, _ = lora_store
    env = {"LORA_ADAPTERS": "alpha,beta", "MAX_LORAS": "3", "ADMIN_API_KEYS": f"ops:{ADMIN_KEY}"}
    with serving(home, f"{MODEL_NAME}:latest", workdir, **env) as served:
        yield served


def post(url: str, path: str, body: dict, key: str = API_KEY) -> requests.Response:
    return requests.post(url + path, json=body, headers={"x-api-key": key}, timeout=120)


def generate(url: str, adapter: str | None, **fields) -> dict:
    body = {"prompt": PROMPT, "max_new_tokens": 10, "temperature": 0, "ignore_eos": True, **fields}
    response = post(url, "/generate", {**body, **({"adapter": adapter} if adapter else {})})
    assert response.status_code == 200, response.text
    return response.json()


def test_models_lists_the_adapters_under_the_base(url):
    cards = requests.get(url + "/v1/models", headers={"x-api-key": API_KEY}, timeout=10).json()["data"]
    base = cards[0]["id"]
    assert [(c["id"], c["parent"]) for c in cards] == [(base, None), ("alpha", base), ("beta", base)]


def test_an_adapter_answers_as_peft_does_with_it(url, tiny_model_dir, lora_store):
    _, folders = lora_store
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folders["beta"]))
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.eval().generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :])
    assert generate(url, "beta")["completion"] == expected
    via_openai = post(
        url,
        "/v1/completions",
        {"model": "beta", "prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": True},
    )
    assert via_openai.json()["choices"][0]["text"] == expected


def test_mixed_adapters_in_concurrent_requests_each_give_what_they_give_alone(url):
    mix = [
        (None, {}),
        ("alpha", {}),
        ("beta", {}),
        ("alpha", {"temperature": 1.0, "seed": 4}),
        (None, {"temperature": 1.0, "seed": 4}),
        ("beta", {"temperature": 0.7, "top_p": 0.9, "seed": 2}),
    ]
    alone = [generate(url, adapter, **fields)["completion"] for adapter, fields in mix]
    with ThreadPoolExecutor(len(mix)) as pool:
        together = list(pool.map(lambda m: generate(url, m[0], **m[1])["completion"], mix))
    assert together == alone
    assert len(set(alone[:3])) == 3  # each adapter changes the output


def test_unknown_adapters_are_404_naming_the_field(url):
    response = post(url, "/generate", {"prompt": PROMPT, "adapter": "delta"})
    assert (response.status_code, response.json()["error"]["type"], response.json()["error"]["field"]) == (
        404,
        "model_not_found",
        "adapter",
    )
    response = post(url, "/v1/completions", {"model": "delta", "prompt": PROMPT})
    assert (response.status_code, response.json()["error"]["field"]) == (404, "model")


def test_runtime_loading_needs_an_admin_key_and_a_store_adapter(url):
    assert post(url, "/v1/load_lora_adapter", {"lora_name": "gamma"}).status_code == 403
    refused = post(url, "/v1/load_lora_adapter", {"lora_name": MODEL_NAME}, key=ADMIN_KEY)
    assert (refused.status_code, refused.json()["error"]["type"]) == (400, "invalid_adapter")
    assert post(url, "/v1/load_lora_adapter", {"lora_name": "/etc/passwd"}, key=ADMIN_KEY).status_code == 400
    assert post(url, "/v1/load_lora_adapter", {"lora_name": "nowhere"}, key=ADMIN_KEY).status_code == 404
    loaded = post(url, "/v1/load_lora_adapter", {"lora_name": "gamma"}, key=ADMIN_KEY)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["lora_name"] == "gamma" and loaded.json()["tag"].startswith("gamma:")
    assert generate(url, "gamma")["completion"] != generate(url, None)["completion"]
    full = post(url, "/v1/load_lora_adapter", {"lora_name": "gamma"}, key=ADMIN_KEY)
    assert full.status_code == 400 and "already loaded" in full.json()["error"]["message"]


def test_unloading_lets_running_requests_finish_first(url):
    if "gamma" not in [
        c["id"] for c in requests.get(url + "/v1/models", headers={"x-api-key": API_KEY}, timeout=10).json()["data"]
    ]:
        assert post(url, "/v1/load_lora_adapter", {"lora_name": "gamma"}, key=ADMIN_KEY).status_code == 200
    results = {}
    long_run = threading.Thread(target=lambda: results.setdefault("long", generate(url, "gamma", max_new_tokens=400)))
    long_run.start()
    deadline = time.monotonic() + 10
    while requests.get(url + "/health", timeout=5).json()["generations"]["running"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    unloaded = post(url, "/v1/unload_lora_adapter", {"lora_name": "gamma"}, key=ADMIN_KEY)
    long_run.join()
    assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
    assert results["long"]["usage"]["completion_tokens"] == 400  # it kept its adapter to the end
    assert time.monotonic() - started > 0.1
    assert post(url, "/generate", {"prompt": PROMPT, "adapter": "gamma"}).status_code == 404


def test_metrics_and_logs_name_the_adapter(url, workdir):
    request_id = post(url, "/generate", {"prompt": PROMPT, "max_new_tokens": 3, "adapter": "alpha"}).headers[
        "x-bentoml-request-id"
    ]
    metrics = requests.get(url + "/metrics", timeout=10).text
    assert re.search(r'textgen_adapter_requests_total\{adapter="alpha"\} [1-9]', metrics), metrics
    assert re.search(r'textgen_adapter_generated_tokens_total\{adapter="alpha"\} [1-9]', metrics)
    records = [json.loads(line) for line in (workdir / "serve.log").read_text().splitlines() if line.startswith("{")]
    assert any(r.get("adapter") == "alpha" and r.get("request_id") == request_id for r in records)


def test_an_adapter_as_the_served_model_is_refused_with_what_to_do(lora_store, tmp_path):
    from tests.integration.conftest import start_server

    home, _ = lora_store
    process, _ = start_server(home, tmp_path / "serve.log", {"MODEL_TAG": "alpha:latest", "API_KEY": API_KEY})
    assert process.wait(timeout=120) != 0
    assert "is a LoRA adapter: serve tiny-gpt2 and set LORA_ADAPTERS=alpha" in (tmp_path / "serve.log").read_text()
