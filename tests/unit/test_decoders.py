"""The written-out decoding steps (GPT-2, Llama) give the logits of the model's own forward pass, on plain and on
packed layers, for batches whose rows have different lengths, join and leave; other models keep their forward."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from tests.conftest import build_tiny_llama
from textgen.engine import BatchEngine, GenerationParams, Job, SamplingParams
from textgen.engine.decoders import Gpt2Decoder, LlamaDecoder, TransformersDecoder, decoder_for
from textgen.engine.kv_cache import SlotBatch
from textgen.engine.lora import BatchedLora, read_lora
from textgen.engine.packed_linear import can_pack, pack_linears, pad_small_products
from textgen_bench.common.lora import make_lora_adapter

from .test_engine import run_jobs
from .test_kv_cache_rows import join

# Four prompts of four lengths, token ids under the tiny Llama's vocabulary of 1000.
PROMPTS = [[464, 68, 586, 831, 45, 625], [496, 11], [40, 842, 257, 797, 290, 340, 13, 6, 7], [32]]


@pytest.fixture(autouse=True)
def _inference():
    with torch.inference_mode():
        yield


@pytest.fixture(params=["gpt2", "llama"])
def architecture(request) -> str:
    return request.param


def model_of(architecture: str, tiny_model, packed: bool) -> torch.nn.Module:
    model = copy.deepcopy(tiny_model[0]) if architecture == "gpt2" else build_tiny_llama()
    if packed:
        if not can_pack(model):
            pytest.skip("needs oneDNN (mkldnn)")
        pack_linears(model)
        pad_small_products(model, rows=3)  # products of 1 and 2 rows padded, as on a machine that chose 3
    return model


def prefill(model, prompts: list[list[int]]) -> SlotBatch:
    """The prompts prefilled together, left-padded as the engine does, in a new batch."""
    batch = SlotBatch(torch.device("cpu"), max_rows=8)
    join(model, batch, prompts)
    return batch


def step(decoder, batch: SlotBatch, tokens: list[int]) -> torch.Tensor:
    batch.begin_step()
    logits = decoder(torch.tensor([[t] for t in tokens]), batch)
    batch.end_step()
    return logits


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[:1]], ids=["four rows", "one row"])
def test_written_out_steps_give_the_forward_passes_logits(architecture, tiny_model, packed, prompts):
    model = model_of(architecture, tiny_model, packed)
    written_out, forward = decoder_for(model), TransformersDecoder(model)
    assert type(written_out) is {"gpt2": Gpt2Decoder, "llama": LlamaDecoder}[architecture]
    ours, theirs = prefill(model, prompts), prefill(model, prompts)
    tokens = [p[-1] for p in prompts]
    for number in range(6):
        if number == 3 and len(tokens) > 1:  # a row leaves; the last row moves into its slot in both batches
            order = ours.drop([1])
            assert theirs.drop([1]) == order
            tokens = [tokens[row] for row in order]
        logits = step(written_out, ours, tokens)
        torch.testing.assert_close(logits, step(forward, theirs, tokens), atol=1e-5, rtol=0)
        tokens = logits.argmax(dim=-1).tolist()
    assert ours.lengths.tolist() == theirs.lengths.tolist()


def test_lora_deltas_reach_the_rows_of_a_padded_step(tiny_model, tmp_path):
    model = model_of("gpt2", tiny_model, packed=True)  # products of 1 and 2 rows padded to 3
    targets = ("c_attn", "c_fc", "c_proj")
    folder = make_lora_adapter(tiny_model[0], tmp_path / "all", 4, target_modules=targets, base_name="tiny-gpt2")
    lora = BatchedLora(model)
    weights = read_lora(folder, "all", model)
    lora.add(weights)
    prompts = PROMPTS[:2]
    ours, theirs = prefill(model, prompts), prefill(model, prompts)
    tokens = [p[-1] for p in prompts]
    with lora.rows([weights, None], [1, 1]):  # the adapter on the first row only
        logits = step(decoder_for(model), ours, tokens)
        torch.testing.assert_close(logits, step(TransformersDecoder(model), theirs, tokens), atol=1e-5, rtol=0)
    ours.lengths -= 1  # the same step again without the adapter: the first row's logits change, the second's not
    unadapted = step(decoder_for(model), ours, tokens)
    assert not torch.allclose(unadapted[0], logits[0], atol=1e-3)
    torch.testing.assert_close(unadapted[1], logits[1], atol=0, rtol=0)


@pytest.mark.parametrize("decoder", [decoder_for, TransformersDecoder], ids=["written-out", "forward"])
def test_the_engine_decodes_transformers_greedy_tokens_either_way(architecture, tiny_model, decoder):
    model = model_of(architecture, tiny_model, packed=False)
    engine = BatchEngine(model, tiny_model[1], max_batch_size=4, decoder=decoder(model))
    params = GenerationParams(8, SamplingParams(temperature=0.0), ignore_eos=True)
    engine.start()
    try:
        results = run_jobs(engine, [Job(prompt, params) for prompt in PROMPTS])
    finally:
        engine.stop()
    for prompt, result in zip(PROMPTS, results, strict=True):
        ids = torch.tensor([prompt])
        expected = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, eos_token_id=None
        )
        assert result.token_ids == expected[0, len(prompt) :].tolist()


def test_other_models_and_other_attention_keep_their_forward_pass(tiny_model):
    assert type(decoder_for(tiny_model[0])) is Gpt2Decoder
    eager = copy.deepcopy(tiny_model[0])
    eager.config._attn_implementation = "eager"  # computes attention its own way: not ours to write out
    assert type(decoder_for(eager)) is TransformersDecoder
    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
    )
    assert type(decoder_for(neox)) is TransformersDecoder
