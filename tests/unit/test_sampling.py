"""Per-row sampling against transformers' own logits processors."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from textgen.engine.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    filter_top_k_top_p,
    make_generator,
    select_tokens,
)

VOCAB = 50


def test_repetition_penalty_matches_transformers():
    torch.manual_seed(0)
    logits = torch.randn(2, VOCAB)
    history = torch.tensor([[1, 2, 3, 3], [4, 5, 6, 7]])
    seen = torch.zeros(2, VOCAB, dtype=torch.bool)
    seen.scatter_(1, history, True)
    ours = apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3]))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    torch.testing.assert_close(ours, theirs)


def test_top_k_top_p_keep_what_transformers_keeps():
    torch.manual_seed(1)
    logits = torch.randn(3, VOCAB) * 3
    params = [(0.7, 0, 0.9), (1.0, 5, 1.0), (1.3, 10, 0.5)]
    for row, (temp, k, p) in enumerate(params):
        scores = TemperatureLogitsWarper(temp)(None, logits[row : row + 1].clone())
        if k:
            scores = TopKLogitsWarper(k)(None, scores)
        if p < 1.0:
            scores = TopPLogitsWarper(p)(None, scores)
        expected_kept = set(torch.isfinite(scores[0]).nonzero().flatten().tolist())

        sorted_logits, order = (logits[row : row + 1] / temp).sort(dim=-1, descending=True)
        filtered = filter_top_k_top_p(sorted_logits, torch.tensor([k]), torch.tensor([p]))
        kept = set(order[0][torch.isfinite(filtered[0])].tolist())
        assert kept == expected_kept, (temp, k, p)


def test_greedy_rows_take_the_argmax_and_sampled_rows_stay_in_the_top_k():
    torch.manual_seed(2)
    logits = torch.randn(2, VOCAB)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.5, top_k=3, seed=7)]
    top3 = set(logits[1].topk(3).indices.tolist())
    for _ in range(50):
        tokens = select_tokens(logits.clone(), params, [make_generator(None), make_generator(None)], None)
        assert tokens[0] == logits[0].argmax()
        assert int(tokens[1]) in top3


def test_a_row_seed_fixes_its_samples_whatever_the_other_rows_do():
    logits = torch.randn(3, VOCAB)
    params = [SamplingParams(temperature=1.0, seed=5), SamplingParams(temperature=1.0), SamplingParams(temperature=0.0)]

    def sample() -> int:
        gens = [make_generator(p.seed) for p in params]
        return int(select_tokens(logits.clone(), params, gens, None)[0])

    assert len({sample() for _ in range(10)}) == 1


def test_extreme_but_valid_parameters_never_make_nan_probabilities():
    """Found by fuzzing: temperature or repetition_penalty 5e-324 (0 in float32) crashed the whole prefill."""
    torch.manual_seed(3)
    logits = torch.randn(4, VOCAB) * 5
    logits[3] = -logits[3].abs() - 1  # every logit negative
    seen = torch.zeros(4, VOCAB, dtype=torch.bool)
    seen[:, :10] = True
    params = [
        SamplingParams(temperature=5e-324),
        SamplingParams(temperature=2.0, repetition_penalty=5e-324),
        SamplingParams(temperature=1e-30, repetition_penalty=1e-40, top_p=5e-324),
        SamplingParams(temperature=5e-324, repetition_penalty=5e-324, top_k=3),
    ]
    tokens = select_tokens(logits.clone(), params, [make_generator(i) for i in range(4)], seen)
    assert tokens[0] == logits[0].argmax()  # a vanishing temperature is greedy
    assert all(0 <= int(t) < VOCAB for t in tokens)


def test_a_seeded_row_samples_the_same_token_whether_or_not_a_filtering_row_shares_the_call():
    torch.manual_seed(0)
    logits = torch.randn(2, 1000) * 0.01  # nearly flat: the token depends on exactly how the draw is mapped
    plain, filtering = SamplingParams(temperature=1.0, seed=5), SamplingParams(temperature=1.0, top_p=0.5, seed=6)
    alone = select_tokens(logits[:1].clone(), [plain], [make_generator(5)], None)
    together = select_tokens(logits.clone(), [plain, filtering], [make_generator(5), make_generator(6)], None)
    assert together[0] == alone[0]


def frequencies(logits: torch.Tensor, params: SamplingParams, draws: int) -> torch.Tensor:
    """How often each token is picked over `draws` calls, all rows in one batch (one generator per row)."""
    batch = logits.expand(draws, -1).clone()
    picked = select_tokens(batch, [params] * draws, [make_generator(seed) for seed in range(draws)], None)
    return torch.bincount(picked, minlength=logits.shape[-1]).double() / draws


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_p=0.8),
        SamplingParams(temperature=1.3, top_k=4, top_p=0.9),
    ],
)
@pytest.mark.parametrize("vocab", [12, 3000], ids=["one-block", "several-blocks"])
def test_samples_follow_the_filtered_distribution_transformers_defines(params, vocab):
    """The batched sampler (no sort, one draw per row per round) against the sorted reference's probabilities.

    With 3000 tokens the 12 likely ones sit around the sampler's 1024-token block edges (the rest have weight 0)."""
    torch.manual_seed(4)
    logits = torch.full((1, vocab), float("-inf"))
    edges = [0, 5, 300, 301, 302, 303, 1023, 1024, 1025, 2047, 2048, 2999]
    support = torch.arange(12) if vocab == 12 else torch.tensor(edges)
    logits[0, support] = torch.randn(len(support)) * 1.5
    sorted_logits, order = (logits / params.temperature).sort(dim=-1, descending=True)
    filtered = filter_top_k_top_p(sorted_logits, torch.tensor([params.top_k]), torch.tensor([params.top_p]))
    expected = torch.zeros(vocab, dtype=torch.float64)
    expected[order[0]] = filtered[0].softmax(-1).double()

    observed = frequencies(logits, params, draws=20_000)
    assert torch.all(observed[expected == 0] == 0)  # nothing outside the nucleus, ever
    assert (expected > 0).sum() >= 2
    sigma = (expected * (1 - expected) / 20_000).sqrt()
    assert torch.all((observed - expected).abs() <= 5 * sigma + 1e-9), (observed, expected)


def test_a_near_zero_top_p_over_a_flat_distribution_still_picks_the_top_token():
    """The rejection rounds run out on purpose here; the sorted fallback must still give the nucleus."""
    logits = torch.zeros(3, 5000)
    logits[:, 17] = 1e-3  # the single most likely token
    params = [SamplingParams(temperature=1.0, top_p=1e-9, seed=s) for s in range(3)]
    tokens = select_tokens(logits.clone(), params, [make_generator(s) for s in range(3)], None)
    assert tokens.tolist() == [17, 17, 17]


def test_seeded_rows_draw_the_same_tokens_alone_or_in_any_mixed_batch():
    torch.manual_seed(5)
    logits = torch.randn(6, 3000)
    params = [
        SamplingParams(temperature=1.0, top_p=0.95, seed=11),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, seed=12),
        SamplingParams(temperature=1.2, top_k=50, seed=13),
        SamplingParams(temperature=1.0, top_p=0.5, top_k=10, seed=14),
        SamplingParams(temperature=1.0, seed=15),
    ]
    together = select_tokens(logits.clone(), params, [make_generator(p.seed) for p in params], None)
    for row, p in enumerate(params):
        alone = select_tokens(logits[row : row + 1].clone(), [p], [make_generator(p.seed)], None)
        assert together[row] == alone[0], row


def test_greedy_rows_take_the_first_of_tied_best_tokens_as_torch_does():
    torch.manual_seed(6)
    logits = torch.randn(3, 3000)
    logits[0, [9, 5]] = 10.0
    logits[1, [2999, 100]] = 10.0
    greedy = [SamplingParams(temperature=0.0)] * 3
    tokens = select_tokens(logits.clone(), greedy, [make_generator(0) for _ in range(3)], None)
    assert tokens.tolist() == logits.argmax(dim=-1).tolist() == [5, 100, int(logits[2].argmax())]


def test_draws_over_a_full_size_vocabulary_stay_in_each_rows_nucleus():
    """32 rows of GPT-2's 50,257 tokens, nearly flat as a random-weight model's: many draws are rejected once."""
    torch.manual_seed(7)
    logits = torch.randn(32, 50257) * 0.5
    probs = logits.softmax(dim=-1).double()
    ordered = probs.sort(dim=-1, descending=True).values
    in_nucleus = (ordered.cumsum(dim=-1) - ordered) <= 0.95
    lightest_kept = ordered.gather(1, (in_nucleus.sum(dim=-1, keepdim=True) - 1))
    params = [SamplingParams(temperature=1.0, top_p=0.95, seed=s) for s in range(32)]
    generators = [make_generator(p.seed) for p in params]
    for _ in range(10):
        tokens = select_tokens(logits.clone(), params, generators, None)
        picked = probs.gather(1, tokens.unsqueeze(1))
        assert torch.all(picked >= lightest_kept * (1 - 1e-6)), (picked - lightest_kept).min()
