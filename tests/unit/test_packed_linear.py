"""Linear layers packed for oneDNN compute what the model's own layers compute, and the engine runs on them."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from tests.conftest import build_tiny_llama
from textgen.engine import BatchEngine, SamplingParams
from textgen.engine.lora import BatchedLora, read_lora
from textgen.engine.packed_linear import (
    ActivationInLinear,
    PackedLinear,
    can_pack,
    fastest_row_count,
    pack_linears,
    pad_small_products,
)
from textgen.serving.model_store import parameter_count
from textgen_bench.common.lora import make_lora_adapter

from .test_engine import job, run_jobs
from .tiny_serving import reference_greedy

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


@pytest.fixture(scope="module")
def packed_gpt2(tiny_model):
    model, tokenizer = tiny_model
    packed = copy.deepcopy(model)
    assert pack_linears(packed) == 2 * 4 + 1  # c_attn, c_proj, c_fc, mlp c_proj per layer, and the LM head
    return packed, tokenizer


def test_every_linear_layer_is_packed_and_keeps_its_name_shape_and_parameters(tiny_model, packed_gpt2):
    model, packed = tiny_model[0], packed_gpt2[0]
    before = {name: type(m) for name, m in model.named_modules() if isinstance(m, (Conv1D, torch.nn.Linear))}
    after = dict(packed.named_modules())
    assert before and all(isinstance(after[name], PackedLinear) for name in before)
    c_attn = after["transformer.h.0.attn.c_attn"]
    assert (c_attn.in_features, c_attn.out_features) == (64, 192)
    assert parameter_count(packed) == parameter_count(model)
    # The LM head still shares the token embedding's storage (no copy of the vocabulary matrix besides the packing).
    assert packed.lm_head.weight.data_ptr() == packed.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_packed_logits_equal_the_models_own_to_float_rounding(architecture, tiny_model):
    model = tiny_model[0] if architecture == "gpt2" else build_tiny_llama()
    packed = copy.deepcopy(model)
    pack_linears(packed)
    # The MLP's first layer applies the activation (GELU, SiLU) in its product.
    mlp = packed.transformer.h[0].mlp if architecture == "gpt2" else packed.model.layers[0].mlp
    first, activation = (mlp.c_fc, mlp.act) if architecture == "gpt2" else (mlp.gate_proj, mlp.act_fn)
    assert first.fuses_activation and isinstance(activation, ActivationInLinear)
    assert "activation=" in repr(first) and "ActivationInLinear(" in repr(packed)  # the model still prints
    ids = torch.randint(0, 1000, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = model(input_ids=ids).logits, packed(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_lora_adapter_on_a_fused_layer_adds_its_delta_before_the_activation(tiny_model, tmp_path):
    model = tiny_model[0]
    folder = make_lora_adapter(model, tmp_path / "mlp", 3, target_modules=("c_fc",), base_name="tiny-gpt2")
    packed = copy.deepcopy(model)
    pack_linears(packed)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    logits = {}
    for name, adapted in (("plain", copy.deepcopy(model)), ("packed", packed)):
        lora = BatchedLora(adapted)
        weights = read_lora(folder, "mlp", adapted)
        lora.add(weights)
        with torch.inference_mode(), lora.rows([weights, None], [12, 12]):
            logits[name] = adapted(input_ids=ids).logits
        assert not (name == "packed" and packed.transformer.h[0].mlp.c_fc.fuses_activation)  # hooked: apart
        lora.remove("mlp")
    torch.testing.assert_close(logits["packed"], logits["plain"], rtol=1e-4, atol=1e-5)
    assert packed.transformer.h[0].mlp.c_fc.fuses_activation  # fused again once the adapter is gone


def test_the_engine_on_packed_layers_gives_transformers_greedy_tokens(tiny_model, packed_gpt2):
    model, tokenizer = packed_gpt2
    engine = BatchEngine(model, tokenizer, max_batch_size=4)
    engine.start()
    try:
        prompts = ["Hello, my name is", "The quick brown fox jumps over", "A"]
        results = run_jobs(engine, [job(tokenizer, p, 20, SamplingParams(temperature=0.0)) for p in prompts])
    finally:
        engine.stop()
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == reference_greedy(tiny_model, prompt, 20)  # the unpacked model's generate()


@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 48), (3, 2, 48), (7, 48)], ids=str)
def test_a_product_padded_to_more_rows_gives_each_row_what_it_gives_unpadded(shape):
    torch.manual_seed(0)
    layer = PackedLinear(torch.randn(40, 48), torch.randn(40))
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = layer(x)
        layer.min_rows = 6  # 1 and 2 rows are padded; 6 and 7 rows are not (3-D padded: the no_grad check)
        got = layer(x)
    assert got.shape == expected.shape == (*shape[:-1], 40)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, x @ layer.weight.T + layer.bias, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the padding, made in inference mode, is used outside it too
        torch.testing.assert_close(
            layer(x[..., :1, :] * 2), expected[..., :1, :] * 2 - layer.bias, rtol=1e-4, atol=1e-4
        )


def test_padding_is_timed_on_the_largest_layer_and_set_on_every_layer(tiny_model):
    model = copy.deepcopy(tiny_model[0])
    pack_linears(model)
    rows, times = pad_small_products(model)
    assert sorted(times) == list(range(1, 9)) and all(t > 0 for t in times.values())
    assert 1 <= rows <= 8 and (rows == 1 or times[rows] < 0.95 * times[1])
    assert {m.min_rows for m in model.modules() if isinstance(m, PackedLinear)} == {rows}
    assert pad_small_products(model, 3) == (3, {})
    assert {m.min_rows for m in model.modules() if isinstance(m, PackedLinear)} == {3}
    best, taken = fastest_row_count(model.lm_head, most=3, rounds=1)
    assert sorted(taken) == [1, 2, 3] and best in taken


def test_only_float32_models_on_the_cpu_are_packed(tiny_model):
    assert can_pack(tiny_model[0])
    assert not can_pack(copy.deepcopy(tiny_model[0]).to(torch.bfloat16))
