"""The greedy screen picks the float32 argmax of the LM head: on ordinary hidden states, on near-ties that bfloat16
cannot tell apart, with a bias, and for hidden states that are not finite; the engine uses it only for rows that
want nothing but the argmax."""

from __future__ import annotations

import copy

import pytest
import torch

from textgen.engine import BatchEngine, GenerationParams, Job, SamplingParams
from textgen.engine.greedy_screen import MAX_CANDIDATES, GreedyScreen
from textgen.engine.lora import BatchedLora, read_lora
from textgen.engine.packed_linear import PackedLinear, can_pack, pack_linears
from textgen_bench.common.lora import make_lora_adapter

from .test_engine import run_jobs
from .tiny_serving import reference_greedy

pytestmark = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="needs oneDNN with bfloat16",
)
VOCAB, WIDTH = 4000, 256


@pytest.fixture(autouse=True)
def _inference():
    with torch.inference_mode():
        yield


def layer(bias: bool = False, seed: int = 0, weight: torch.Tensor | None = None) -> PackedLinear:
    """An LM head of random weights, or of `weight`: packed, so the weight is read once, here."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(VOCAB, WIDTH, generator=generator) * 0.02 if weight is None else weight
    return PackedLinear(weight, torch.randn(VOCAB, generator=generator) if bias else None)


def hidden_states(rows: int, seed: int = 1) -> torch.Tensor:
    """Like a final layer norm's output: unit variance per feature, so a norm near sqrt(WIDTH)."""
    return torch.randn(rows, WIDTH, generator=torch.Generator().manual_seed(seed))


def exact_argmax(head: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    logits = x.double() @ head.weight.double().t()
    return (logits if head.bias is None else logits + head.bias.double()).argmax(dim=-1)


@pytest.mark.parametrize("bias", [False, True], ids=["no bias", "bias"])
def test_the_screen_picks_the_exact_argmax(bias):
    head = layer(bias)
    x = hidden_states(300)
    assert torch.equal(GreedyScreen(head)(x), exact_argmax(head, x))


@pytest.mark.parametrize("sign", [1, -1], ids=["the later token wins", "the earlier token wins"])
def test_a_near_tie_bfloat16_cannot_see_is_decided_in_float32(sign):
    weight, x = layer().weight.clone(), hidden_states(1)
    winner = int((x @ weight.t()).argmax())
    twin = (winner + 1) % VOCAB
    # The twin's row: the winner's, nudged along x by far less than bfloat16 resolves (1e-6 of the row's norm).
    weight[twin] = weight[winner] + sign * 1e-6 * weight[winner].norm() * x[0] / x[0].norm()
    head = layer(weight=weight)
    logits = x[0].double() @ weight[[winner, twin]].double().t()
    assert 0 < abs(logits[1] - logits[0]) < 2**-9 * abs(logits[0])  # closer than bfloat16 resolves
    screen = GreedyScreen(head)
    expected = max(winner, twin) if (sign > 0) == (twin > winner) else min(winner, twin)
    assert int(exact_argmax(head, x)) == expected
    assert int(screen(x)) == expected


def test_a_hidden_state_that_is_not_finite_gets_the_float32_products_pick():
    head, x = layer(), hidden_states(3)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    picked = GreedyScreen(head)(x)
    assert int(picked[0]) == int(exact_argmax(head, x[:1]))
    assert picked[1:].tolist() == head(x[1:]).argmax(dim=-1).tolist()


def test_only_packed_float32_layers_are_screened():
    assert GreedyScreen.timed(torch.nn.Linear(WIDTH, VOCAB)) == (None, {})
    screen, times = GreedyScreen.timed(layer())
    assert set(times) == {"float32", "screen"} and all(t > 0 for t in times.values())
    assert (screen is not None) == (times["screen"] < 0.9 * times["float32"])


@pytest.fixture
def screened_gpt2(tiny_model):
    model, tokenizer = tiny_model
    if not can_pack(model):
        pytest.skip("needs oneDNN (mkldnn)")
    packed = copy.deepcopy(model)
    pack_linears(packed)
    return packed, tokenizer, GreedyScreen(packed.lm_head)


def counting(screen: GreedyScreen) -> list[int]:
    """Count the screen's calls (rows screened per call)."""
    calls: list[int] = []
    call = screen.__call__

    class Counted(GreedyScreen):
        def __call__(self, hidden):
            calls.append(hidden.shape[0])
            return call(hidden)

    screen.__class__ = Counted
    return calls


def test_the_engine_screens_greedy_rows_and_gives_transformers_tokens(tiny_model, screened_gpt2):
    model, tokenizer, screen = screened_gpt2
    calls = counting(screen)
    prompts = ["Hello, my name is", "The quick brown fox jumps over", "A"]
    greedy = GenerationParams(12, SamplingParams(temperature=0.0), ignore_eos=True)
    engine = BatchEngine(model, tokenizer, max_batch_size=4, greedy_screen=screen)
    engine.start()
    try:
        results = run_jobs(engine, [Job(tokenizer(p).input_ids, greedy) for p in prompts])
        assert calls and set(calls) <= {1, 2, 3}  # every decoding step of these rows went through the screen
        calls.clear()
        # A sampled row, a penalised row or a row with logprobs needs every logit: their steps are not screened.
        others = [
            GenerationParams(4, SamplingParams(temperature=1.0, seed=1), ignore_eos=True),
            GenerationParams(4, SamplingParams(temperature=0.0, repetition_penalty=1.3), ignore_eos=True),
            GenerationParams(4, SamplingParams(temperature=0.0), ignore_eos=True, logprobs=0),
        ]
        for params in others:
            run_jobs(engine, [Job(tokenizer(prompts[0]).input_ids, params)])
        assert calls == []
    finally:
        engine.stop()
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == reference_greedy(tiny_model, prompt, 12)


def test_a_lora_adapter_on_the_lm_head_turns_the_screen_off_until_it_is_removed(tiny_model, screened_gpt2, tmp_path):
    model, _, screen = screened_gpt2
    folder = make_lora_adapter(tiny_model[0], tmp_path / "head", 2, target_modules=("lm_head",), base_name="tiny-gpt2")
    lora = BatchedLora(model)
    assert screen.usable
    lora.add(read_lora(folder, "head", model))
    assert not screen.usable
    lora.remove("head")
    assert screen.usable


def test_a_screen_too_loose_to_save_anything_takes_the_float32_product():
    weight = layer().weight[:1].repeat(VOCAB, 1)  # every token the same row...
    weight[:, 0] += torch.arange(VOCAB) * 1e-7  # ...but for float32 noise: every token a candidate
    head = layer(weight=weight)
    screen = GreedyScreen(head)
    x = hidden_states(2)
    rows, _ = screen.candidates(x)
    assert len(rows) > MAX_CANDIDATES * 2
    products: list[int] = []
    head.register_forward_hook(lambda _module, inputs, _output: products.append(len(inputs[0])))
    assert torch.equal(screen(x), exact_argmax(head, x))
    assert products == [2]  # one float32 product of both rows
