"""Opt-in int8: GPT-2's Conv1D converts exactly, layers keep their names, outputs stay close to fp32, and the
setting is refused where it cannot run."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from transformers.pytorch_utils import Conv1D

from tests.conftest import build_tiny_llama
from textgen.config import Settings
from textgen.engine import BatchEngine, SamplingParams
from textgen.engine.quantization import (
    Int8Linear,
    QuantizationError,
    _as_linear,
    check_quantizable,
    quantize_int8,
)

from .test_engine import job, run_jobs


@pytest.fixture(scope="module")
def int8_gpt2(tiny_model):
    model = copy.deepcopy(tiny_model[0])
    assert quantize_int8(model) == 2 * 4 + 1  # four linears per block and the LM head
    return model


def test_conv1d_becomes_a_linear_with_exactly_the_same_outputs():
    torch.manual_seed(0)
    conv = Conv1D(48, 16)  # nf=48 outputs, nx=16 inputs
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(3, 5, 16)
    linear = _as_linear(conv)
    assert (linear.in_features, linear.out_features) == (16, 48)
    torch.testing.assert_close(linear(x), conv(x), rtol=1e-6, atol=1e-6)


def test_every_linear_layer_is_int8_under_its_own_name(tiny_model, int8_gpt2):
    names = {n for n, m in tiny_model[0].named_modules() if isinstance(m, (Conv1D, torch.nn.Linear))}
    modules = dict(int8_gpt2.named_modules())
    assert names and all(isinstance(modules[n], Int8Linear) for n in names)
    assert modules["lm_head"].out_features == 50257
    # The embedding the LM head was tied to is untouched: token lookups stay fp32.
    assert torch.equal(int8_gpt2.transformer.wte.weight, tiny_model[0].transformer.wte.weight)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_int8_logits_stay_close_to_fp32(architecture, tiny_model):
    model = tiny_model[0] if architecture == "gpt2" else build_tiny_llama()
    quantized = copy.deepcopy(model)
    quantize_int8(quantized)
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, got = model(input_ids=ids).logits, quantized(input_ids=ids).logits
    cosine = torch.nn.functional.cosine_similarity(got.flatten(0, 1), expected.flatten(0, 1), dim=-1)
    assert cosine.min() > 0.99, cosine.min()
    assert not torch.equal(got, expected)  # it did quantize


def test_the_engine_runs_on_int8_layers_as_the_int8_model_generates(int8_gpt2, tiny_model):
    tokenizer = tiny_model[1]
    engine = BatchEngine(int8_gpt2, tokenizer, max_batch_size=2)
    engine.start()
    try:
        prompts = ["Hello, my name is", "The quick brown fox"]
        results = run_jobs(engine, [job(tokenizer, p, 12, SamplingParams(temperature=0.0)) for p in prompts])
    finally:
        engine.stop()
    assert engine.vocab_size == 50257
    for prompt, result in zip(prompts, results, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = int8_gpt2.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        assert result.token_ids == out[0, ids.shape[1] :].tolist()


def test_int8_is_refused_off_the_cpu_or_off_float32_naming_the_setting():
    check_quantizable(torch.device("cpu"), torch.float32)
    for device, dtype in ((torch.device("cuda"), torch.float16), (torch.device("cpu"), torch.bfloat16)):
        with pytest.raises(QuantizationError, match="MODEL_QUANTIZATION=int8"):
            check_quantizable(device, dtype)


def test_the_setting_takes_none_or_int8_and_defaults_to_none(monkeypatch):
    monkeypatch.setenv("MODEL_QUANTIZATION", "int8")
    assert Settings(_env_file=None).model_quantization == "int8"
    monkeypatch.setenv("MODEL_QUANTIZATION", "int4")
    with pytest.raises(ValidationError, match="model_quantization"):
        Settings(_env_file=None)
    monkeypatch.setenv("MODEL_QUANTIZATION", "int8")
    for setting, value in (("MODEL_DEVICE", "cuda"), ("MODEL_DTYPE", "bfloat16")):
        with monkeypatch.context() as env:
            env.setenv(setting, value)
            with pytest.raises(ValidationError, match="MODEL_QUANTIZATION=int8 runs on the CPU in float32 only"):
                Settings(_env_file=None)
    monkeypatch.delenv("MODEL_QUANTIZATION")
    assert Settings(_env_file=None).model_quantization == "none"
