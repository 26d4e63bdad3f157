"""LoRA adapters in the serving and API layers: choosing one per request, /v1/models, unloading while in use,
metrics by adapter, and the refusals. The store lookup is replaced by a folder (the integration test uses the
real store); everything else is real: the engine thread, the adapters' forward hooks, the handlers."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from tests.conftest import build_tiny_model
from textgen.api.errors import ApiError
from textgen.api.generate import GenerateHandlers
from textgen.api.openai.handlers import OpenAIHandlers
from textgen.api.openai.schemas import CompletionRequest
from textgen.api.schemas import GenerateRequest
from textgen.serving import adapters as adapters_module
from textgen.serving.adapters import check_base
from textgen.serving.errors import AdapterRefused, UnknownAdapter
from textgen_bench.common.lora import make_lora_adapter

from .tiny_serving import TAG, drained, loaded_model, runtime_serving, wait_until

PROMPT = "Hello, my name is"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Adapter folders as the store would hold them, by tag."""
    model, _ = build_tiny_model()
    folder = tmp_path_factory.mktemp("store")
    seeds = {"alpha": 1, "beta": 2}
    made = {name: make_lora_adapter(model, folder / name, seed, base_name="tiny-gpt2") for name, seed in seeds.items()}
    labels = {"kind": "lora-adapter", "base_model": "tiny-gpt2"}

    def entry(tag: str, path, labels: dict) -> SimpleNamespace:
        return SimpleNamespace(tag=tag, path=str(path), info=SimpleNamespace(labels=labels))

    entries = {f"{name}:v1": entry(f"{name}:v1", path, labels) for name, path in made.items()}
    entries["plain:v1"] = entry("plain:v1", folder, {})
    return entries


@pytest.fixture
def served(store, monkeypatch):
    """A runtime on a fresh tiny model (adapters add hooks to it) whose store lookup is `store`."""
    from textgen.serving.admission import AdmissionGate
    from textgen.serving.async_engine import AsyncEngine
    from textgen.serving.metrics import get_metrics

    def find_model(tag):
        if tag not in store:
            raise adapters_module.ModelNotInStore(tag)
        return store[tag]

    monkeypatch.setattr(adapters_module, "find_model", find_model)
    engine = AsyncEngine(
        loaded_model(build_tiny_model()), AdmissionGate(4, 8, 5.0), get_metrics(), max_batch_size=4, max_loras=2
    )
    engine.start()
    yield runtime_serving(engine)
    engine.stop()


def completion(runtime, **fields) -> dict:
    request = CompletionRequest(prompt=PROMPT, max_tokens=8, temperature=0.0, ignore_eos=True, **fields)
    return json.loads(asyncio.run(OpenAIHandlers(runtime).completions(request)).body)


def test_requests_choose_an_adapter_by_name_and_models_lists_it_under_its_base(served):
    engine = served.engine()
    for tag in ("alpha:v1", "beta:v1"):
        engine.adapters.load_now(tag)
    base, alpha, beta = (completion(served, model=m)["choices"][0]["text"] for m in (None, "alpha", "beta"))
    assert len({base, alpha, beta}) == 3
    generated = asyncio.run(
        GenerateHandlers(served).generate(
            GenerateRequest(prompt=PROMPT, max_new_tokens=8, temperature=0.0, ignore_eos=True, adapter="alpha")
        )
    )
    assert generated.completion == alpha
    cards = OpenAIHandlers(served).models().model_dump()["data"]
    assert [(c["id"], c["parent"], c["root"]) for c in cards] == [
        (TAG, None, TAG),
        ("alpha", TAG, "alpha:v1"),
        ("beta", TAG, "beta:v1"),
    ]
    before = REGISTRY.get_sample_value("textgen_adapter_generated_tokens_total", {"adapter": "beta"}) or 0
    completion(served, model="beta")
    assert REGISTRY.get_sample_value("textgen_adapter_generated_tokens_total", {"adapter": "beta"}) == before + 8


def test_an_unknown_adapter_is_a_404_naming_the_field(served):
    with pytest.raises(ApiError) as refused:
        completion(served, model="gamma")
    assert (refused.value.status, refused.value.type, refused.value.field) == (404, "model_not_found", "model")
    with pytest.raises(ApiError) as refused:
        asyncio.run(GenerateHandlers(served).generate(GenerateRequest(prompt=PROMPT, adapter="gamma")))
    assert refused.value.field == "adapter"


def test_loading_refuses_what_is_not_a_fitting_adapter_and_more_than_max_loras(served):
    adapters = served.engine().adapters
    with pytest.raises(UnknownAdapter, match="not in the model store"):
        adapters.load_now("missing:v1")
    with pytest.raises(AdapterRefused, match="not a LoRA adapter"):
        adapters.load_now("plain:v1")
    adapters.load_now("alpha:v1")
    with pytest.raises(AdapterRefused, match="already loaded"):
        adapters.load_now("alpha:v1")
    adapters.load_now("beta:v1")
    assert adapters.max_loras == 2
    with pytest.raises(AdapterRefused, match="MAX_LORAS"):
        asyncio.run(adapters.load("gamma:v1"))


def test_another_base_model_is_refused_naming_both():
    message = "trained for base model 'gpt2-large', but this server serves 'distilgpt2:abc'"
    with pytest.raises(AdapterRefused, match=message):
        check_base("sql:v1", "gpt2-large", "distilgpt2:abc", "hf://distilbert/distilgpt2@123")
    check_base("sql:v1", "distilbert/distilgpt2", "distilgpt2:abc", "hf://distilbert/distilgpt2@123")
    check_base("sql:v1", "/tmp/runs/tiny-gpt2", "tiny-gpt2:v1", "local:/data/tiny-gpt2")


def test_unloading_an_adapter_in_use_lets_its_request_finish_first(served):
    engine = served.engine()
    engine.adapters.load_now("alpha:v1")

    async def scenario():
        from textgen.engine import GenerationParams, SamplingParams
        from textgen.serving.async_engine import Row

        params = GenerationParams(300, SamplingParams(temperature=0.0), ignore_eos=True)
        running = asyncio.create_task(engine.generate_rows([Row(PROMPT, params, "alpha")]))
        assert await wait_until(lambda: engine.engine.active_rows == 1)
        unloading = asyncio.create_task(engine.adapters.unload("alpha"))
        await asyncio.sleep(0.05)
        refused_meanwhile = False
        try:
            await engine.generate_rows([Row(PROMPT, params, "alpha")])
        except UnknownAdapter:
            refused_meanwhile = True
        finished_first = not unloading.done()
        (output,) = await running
        await unloading
        await drained(engine)
        return refused_meanwhile, finished_first, output.completion_tokens, engine.adapters.names()

    refused, waited, tokens, left = asyncio.run(scenario())
    assert refused and waited
    assert tokens == 300  # the running request kept its adapter to the end
    assert left == []
    assert not engine.engine.lora.adapters
