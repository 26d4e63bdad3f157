"""LoRA adapters in the batching engine, against PEFT's own LoRA on the same weights.

The tiny GPT-2 gets real PEFT adapters (lora_B seeded non-zero, so each adapter changes the output); a row with
an adapter must give what PEFT gives with that adapter, alone or in a batch mixed with other adapters and none.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from tests.conftest import build_tiny_model
from textgen.engine import BatchEngine, GenerationParams, Job, SamplingParams
from textgen.engine.lora import LoraError, read_lora
from textgen_bench.common.lora import make_lora_adapter

from .test_engine import run_jobs

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ["Hello, my name is", "The quick brown fox", "In 1492"]


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    model, _ = tiny_model
    folder = tmp_path_factory.mktemp("adapters")
    specs = {"alpha": (1, ("c_attn",)), "beta": (2, ("c_attn", "c_fc", "mlp.c_proj"))}
    return {
        name: make_lora_adapter(model, folder / name, seed, target_modules=modules, base_name="tiny-gpt2")
        for name, (seed, modules) in specs.items()
    }


@pytest.fixture(scope="module")
def engine(tiny_model, adapters):
    model, tokenizer = tiny_model
    engine = BatchEngine(model, tokenizer, max_batch_size=8)
    engine.start()
    for name, folder in adapters.items():
        engine.call(lambda n=name, f=folder: engine.lora.add(read_lora(f, n, model))).result(10)
    yield engine
    engine.stop()
    for name in adapters:  # the tiny model is shared by the session: leave no hooks on it
        engine.lora.remove(name)


def peft_greedy(tiny_model, folder, prompt: str, new_tokens: int) -> list[int]:
    model, tokenizer = tiny_model
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = peft_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


def job(tokenizer, engine, prompt: str, adapter: str | None, new_tokens: int = 12, **sampling) -> Job:
    weights = engine.lora.adapters[adapter] if adapter else None
    params = GenerationParams(new_tokens, SamplingParams(**sampling) if sampling else GREEDY, ignore_eos=True)
    return Job(tokenizer(prompt).input_ids, params.__class__(**{**params.__dict__, "adapter": weights}))


def test_an_adapted_row_gives_what_peft_gives_and_the_adapters_change_the_output(engine, tiny_model, adapters):
    tokenizer = tiny_model[1]
    base = run_jobs(engine, [job(tokenizer, engine, PROMPTS[0], None)])[0].token_ids
    for name, folder in adapters.items():
        (result,) = run_jobs(engine, [job(tokenizer, engine, PROMPTS[0], name)])
        assert result.token_ids == peft_greedy(tiny_model, folder, PROMPTS[0], 12)
        assert result.token_ids != base


def test_mixed_adapters_in_one_batch_each_give_what_they_give_alone(engine, tiny_model):
    tokenizer = tiny_model[1]
    mix = [
        (PROMPTS[0], "alpha", {}),
        (PROMPTS[1], None, {}),
        (PROMPTS[2], "beta", {}),
        (PROMPTS[0], "beta", {"temperature": 1.0, "seed": 5}),
        (PROMPTS[1], "alpha", {"temperature": 0.8, "top_p": 0.9, "seed": 9}),
        (PROMPTS[2], None, {"temperature": 1.0, "seed": 3}),
    ]
    together = run_jobs(engine, [job(tokenizer, engine, p, a, **s) for p, a, s in mix])
    alone = [run_jobs(engine, [job(tokenizer, engine, p, a, **s)])[0] for p, a, s in mix]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


def test_a_removed_adapter_stops_adding_its_delta(adapters):
    model, tokenizer = build_tiny_model()  # a model of its own: the shared one carries this module's adapters
    engine = BatchEngine(model, tokenizer, max_batch_size=4)
    engine.start()
    try:
        base = run_jobs(engine, [job(tokenizer, engine, PROMPTS[1], None)])[0].token_ids
        engine.call(lambda: engine.lora.add(read_lora(adapters["beta"], "beta", model))).result(10)
        adapted = run_jobs(engine, [job(tokenizer, engine, PROMPTS[1], "beta")])[0].token_ids
        engine.call(lambda: engine.lora.remove("beta")).result(10)
        assert not any(module._forward_hooks for module in model.modules())  # nothing left behind
        assert run_jobs(engine, [job(tokenizer, engine, PROMPTS[1], None)])[0].token_ids == base != adapted
    finally:
        engine.stop()


def test_an_adapter_for_another_architecture_is_refused_naming_the_layer(tiny_model, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _ = tiny_model
    wider = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=50257)).eval()
    folder = make_lora_adapter(wider, tmp_path / "wide", 1, target_modules=("c_attn",), base_name="wide")
    with pytest.raises(LoraError, match=r"transformer\.h\.0\.attn\.c_attn has factors"):
        read_lora(folder, "wide", model)
