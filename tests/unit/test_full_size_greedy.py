"""At DistilGPT-2's real size, the engine's fast path (packed oneDNN linears, slot KV cache, written-out decoder,
greedy screen) keeps transformers' greedy tokens: the tiny test model's products are too small to take the kernels
the served model takes."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import TOKENIZER_DIR, load_tokenizer
from textgen.engine import BatchEngine, SamplingParams
from textgen.engine.greedy_screen import GreedyScreen
from textgen.engine.packed_linear import can_pack, pack_linears, pad_small_products

from .test_engine import job, run_jobs

PROMPTS = [
    " ".join(["The quick brown fox jumps over the lazy dog."] * 3),  # the benchmark's 30-token prompt
    "Hello, my name is",
    "In 1492 Columbus sailed the ocean blue, and later",
    "def fibonacci(n):",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def full_size():
    """DistilGPT-2's architecture with seeded random weights (as `import_model.py --random-weights` makes it)."""
    if not (TOKENIZER_DIR / "config.json").is_file():
        pytest.skip(f"needs DistilGPT-2's config.json in {TOKENIZER_DIR} (OFFLINE_MODEL_DIR)")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TOKENIZER_DIR), dtype=torch.float32).eval()
    return model, load_tokenizer()


@pytest.mark.parametrize(
    ("min_rows", "screened"),
    [(1, False), (6, False), (6, True)],
    ids=["unpadded", "padded-to-6-rows", "padded-and-screened"],
)
def test_packed_engine_batch_gives_transformers_fp32_greedy_tokens_at_full_size(full_size, min_rows, screened):
    """Batches of 4 and 1 (the last prompt alone), with products of a few rows run as they are or padded, and
    tokens picked from the LM head's full product or through the bfloat16 screen."""
    model, tokenizer = full_size
    if screened and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("the greedy screen needs oneDNN with bfloat16")
    expected = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
            )
            expected.append(out[0, ids.shape[1] :].tolist())

    fast = copy.deepcopy(model)
    assert can_pack(fast) and pack_linears(fast) == 6 * 4 + 1
    pad_small_products(fast, min_rows)
    screen = GreedyScreen(fast.lm_head) if screened else None
    engine = BatchEngine(fast, tokenizer, max_batch_size=len(PROMPTS), greedy_screen=screen)
    engine.start()
    try:
        greedy = SamplingParams(temperature=0.0)
        results = run_jobs(engine, [job(tokenizer, p, NEW_TOKENS, greedy) for p in PROMPTS])
        alone = run_jobs(engine, [job(tokenizer, PROMPTS[-1], NEW_TOKENS, greedy)])
    finally:
        engine.stop()
    assert [r.token_ids for r in results] == expected
    assert alone[0].token_ids == expected[-1]
