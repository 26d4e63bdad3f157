"""Per-row token selection: every row of a batch keeps its own sampling parameters.

Semantics follow transformers' logits processors (repetition penalty, then
temperature, top-k, top-p), vectorised over the rows that use them.

Passes over the whole [rows, vocab] logits are PyTorch's (fused and threaded); the per-row bookkeeping between
them (block totals, draws, a 256-token block's scan) is NumPy's: at 32 rows each PyTorch op on a small tensor
costs 10-40 us of dispatch and thread wake-up, and a step took about 40 of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(seed: int | None) -> random.Random:
    """A seeded generator makes a request's samples reproducible, whatever else shares its batch.

    Python's Mersenne Twister: a row needs one uniform per step, which it draws in 0.1 us (a PyTorch generator's
    draw is a tensor op). Unseeded, it is seeded from the OS's randomness."""
    return random.Random(seed)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """Divide positive (multiply negative) logits of already seen tokens by the row's penalty."""
    penalties = penalties.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / penalties, logits * penalties)
    return torch.where(seen, penalised, logits)


def filter_top_k_top_p(sorted_logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (with -inf) the sorted logits each row's top-k and top-p exclude; the best token always stays."""
    positions = torch.arange(sorted_logits.shape[1]).unsqueeze(0)
    beyond_k = (top_k.unsqueeze(1) > 0) & (positions >= top_k.unsqueeze(1))
    masked = sorted_logits.masked_fill(beyond_k, float("-inf"))
    probs = masked.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    beyond_p = mass_before > top_p.unsqueeze(1)
    return masked.masked_fill(beyond_p, float("-inf"))


def select_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[random.Random],
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """Pick one next token per row from float32 CPU `logits` [rows, vocab], which this may change in place."""
    finfo = torch.finfo(logits.dtype)
    if seen is not None:
        penalties = torch.tensor([p.repetition_penalty for p in params], dtype=logits.dtype)
        # A valid but tiny penalty (5e-324 is 0 in float32) sends seen logits to inf: keep every logit finite.
        logits = apply_repetition_penalty(logits, seen, penalties).clamp(finfo.min, finfo.max)
    sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled_rows:
        return torch.from_numpy(argmax_rows(logits))
    tokens = np.zeros(len(params), dtype=np.int64)
    if len(sampled_rows) < len(params):
        greedy_rows = [i for i, p in enumerate(params) if p.greedy]
        tokens[greedy_rows] = argmax_rows(logits[greedy_rows])
        weights = logits[sampled_rows]
    else:
        weights = logits
    chosen = [params[i] for i in sampled_rows]
    # One fused softmax (max, exp, sum and scale, a row at a time while it is in cache) is the cheapest way to the
    # weights. At another temperature each row's best logit is shifted to 0 first: a tiny temperature (any > 0 is
    # valid, and may be 0 in float32) then sends the others to -inf, never the best one to inf, so no NaN comes of
    # inf - inf. (The checks on the parameters are Python's: this runs every step, and a tensor op costs more than
    # a loop over 32 rows.)
    if any(p.temperature != 1.0 for p in chosen):
        temperatures = torch.tensor([p.temperature for p in chosen], dtype=logits.dtype)
        weights.sub_(weights.amax(dim=-1, keepdim=True)).div_(temperatures.clamp(min=finfo.tiny).unsqueeze(1))
    weights = torch.softmax(weights, dim=-1)
    if any(p.top_k > 0 for p in chosen):
        weights = keep_top_k(weights, torch.tensor([p.top_k for p in chosen]))
    top_p = np.array([p.top_p for p in chosen], dtype=np.float64)
    tokens[sampled_rows] = sample_nucleus(weights, top_p, [generators[i] for i in sampled_rows])
    return torch.from_numpy(tokens)


def argmax_rows(logits: torch.Tensor) -> np.ndarray:
    """Each row's first largest entry. NumPy's argmax is vectorised; PyTorch's CPU argmax is 10x slower here."""
    return logits.contiguous().numpy().argmax(axis=-1)


def keep_top_k(probs: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Zero each row's probabilities beyond its `top_k` largest (0: keep all), as the sorted cut does."""
    k = top_k.clamp(max=probs.shape[1])
    largest_k = int(k.max())
    order = probs.topk(largest_k, dim=-1).indices
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep.scatter_(1, order, torch.arange(largest_k).unsqueeze(0) < k.unsqueeze(1))
    keep |= (k == 0).unsqueeze(1)
    return probs.masked_fill(~keep, 0.0)


MAX_NUCLEUS_ROUNDS = 16


def sample_nucleus(weights: torch.Tensor, top_p: np.ndarray, generators: list[random.Random]) -> np.ndarray:
    """One token per row, drawn in proportion to `weights` [rows, vocab] (unnormalised, consumed) within the row's
    top-p nucleus.

    Batched, without sorting the vocabulary: each round draws one uniform per pending row from that row's own
    generator and inverts the row's cumulative weights. The token is kept if the weight of the tokens strictly more
    likely than it is at most `top_p` of the total (it is in the nucleus); otherwise every token no more likely than
    it is excluded and the row draws again. Every nucleus token is more likely than any rejected one, so a kept
    draw is exactly distributed as the renormalised nucleus (FlashInfer's rejection sampling for top-p). A row's
    draws depend on its own weights and generator only, so a seeded row samples the same whatever shares the batch.
    """
    chosen = np.empty(weights.shape[0], dtype=np.int64)
    filtering = top_p < 1.0
    pending = np.arange(weights.shape[0])
    candidates, limit = weights, top_p
    for round_ in range(MAX_NUCLEUS_ROUNDS):
        draws = np.array([generators[i].random() for i in pending.tolist()])
        token, totals = invert_cumulative(candidates, draws)
        if not filtering.any():
            chosen[pending] = token
            return chosen
        if round_ == 0:
            limit = top_p * totals  # the nucleus's weight bound, in the weights' own units
        pivot = np.maximum(candidates.numpy()[np.arange(len(pending)), token], np.float32(MIN_PIVOT))
        above = keep_above_(candidates, pivot)  # candidates now hold the next round's weights
        accepted = ~filtering[pending] | (above <= limit)
        chosen[pending[accepted]] = token[accepted]
        if accepted.all():
            return chosen
        # A rejected row keeps the tokens heavier than its draw, scaled by 1 / its weight (as is its bound).
        rejected = ~accepted
        pending, candidates = pending[rejected], candidates[torch.from_numpy(rejected)]
        limit = limit[rejected] / pivot[rejected]
    # Rare (a near-zero top_p over a flat distribution): the remaining rows sort what they have left.
    for left, bound, row in zip(candidates.numpy(), limit.tolist(), pending.tolist(), strict=True):
        chosen[row] = _sample_sorted(left, bound, generators[row])
    return chosen


# Pivots are at least this heavy, so that dividing by one cannot overflow float32: a token lighter than this is
# drawn with a chance below 1e-25 per step, and the tokens between it and this bound weigh less than that too.
MIN_PIVOT = 1e-30


def keep_above_(weights: torch.Tensor, pivot: np.ndarray) -> np.ndarray:
    """In place, per row: the weights strictly above the row's `pivot`, divided by it, and 0 elsewhere. Returns
    their total in the weights' own units.

    Dividing by the pivot makes it 1 for every row, so one in-place `threshold_` pass does the masking: several
    times cheaper than a boolean mask and a product, and nothing is allocated (this runs for every top-p row at
    every step).
    """
    F.threshold_(weights.div_(torch.from_numpy(pivot).unsqueeze(1)), 1.0, 0.0)
    return weights.sum(dim=-1).numpy().astype(np.float64) * pivot


BLOCK = 256


def invert_cumulative(weights: torch.Tensor, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first token whose cumulative weight exceeds `draws` [rows] (in [0, 1)) of the row's total, and
    the rows' totals.

    In two levels, so that no pass over the vocabulary is a cumulative sum (a scan, several times the cost of a sum):
    block totals pick the block, then only that block's weights are scanned. Every token picked has positive weight.
    """
    rows, vocab = weights.shape
    blocks, tail = divmod(vocab, BLOCK)
    full = blocks * BLOCK
    sums = weights[:, :full].unflatten(1, (blocks, BLOCK)).sum(dim=-1)
    if tail:
        sums = torch.cat([sums, weights[:, full:].sum(dim=-1, keepdim=True)], dim=1)
    cumulative = np.zeros((rows, sums.shape[1] + 1))  # column b: the weight before block b
    np.cumsum(sums.numpy(), axis=1, out=cumulative[:, 1:])
    total = cumulative[:, -1]
    target = draws * total
    block = _invert(cumulative[:, 1:], target)
    # The block's own weights (the vocabulary's last, shorter block padded with zeros), scanned, and the rest of
    # the draw inverted. Whole blocks are copied out of a [rows, blocks, BLOCK] view: no gather of single tokens.
    every = np.arange(rows)
    array = weights.numpy()
    inside = np.zeros((rows, BLOCK), dtype=array.dtype)
    whole = block < blocks
    inside[whole] = array[:, :full].reshape(rows, blocks, BLOCK)[every[whole], block[whole]]
    if not whole.all():
        inside[~whole, :tail] = array[~whole, full:]
    offset = _invert(np.cumsum(inside, axis=1, dtype=np.float64), target - cumulative[every, block])
    return block * BLOCK + offset, total


def _invert(cumulative: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Index of the first entry of each row's (non-decreasing) `cumulative` above `target`, kept below the total so
    that the entry found adds positive weight."""
    total = cumulative[:, -1]
    target = np.minimum(np.maximum(target, 0.0), np.nextafter(total, 0.0))
    return (cumulative <= target[:, None]).sum(axis=1)


def _sample_sorted(weights: np.ndarray, limit: float, generator: random.Random) -> int:
    """Draw from the heaviest `weights` whose heavier ones weigh at most `limit` in all."""
    order = np.argsort(-weights, kind="stable")
    ordered = weights[order].astype(np.float64)
    mass_before = np.cumsum(ordered) - ordered
    cumulative = np.cumsum(np.where(mass_before > limit, 0.0, ordered))
    return int(order[_invert(cumulative[None, :], np.array([generator.random() * cumulative[-1]]))[0]])
