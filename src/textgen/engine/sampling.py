"""Per-row token selection: every row of a batch keeps its own sampling parameters.

Semantics follow transformers' logits processors (repetition penalty, then
temperature, top-k, top-p), vectorised over the rows that use them.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def make_generator(seed: int | None) -> torch.Generator:
    """A seeded generator makes a request's samples reproducible, whatever else shares its batch."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


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
    generators: list[torch.Generator],
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """Pick one next token per row from float32 `logits` [rows, vocab], which this may change in place."""
    finfo = torch.finfo(logits.dtype)
    if seen is not None:
        penalties = torch.tensor([p.repetition_penalty for p in params], dtype=logits.dtype)
        # A valid but tiny penalty (5e-324 is 0 in float32) sends seen logits to inf: keep every logit finite.
        logits = apply_repetition_penalty(logits, seen, penalties).clamp(finfo.min, finfo.max)
    sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled_rows:
        return logits.argmax(dim=-1)
    tokens = torch.zeros(len(params), dtype=torch.long)
    if len(sampled_rows) < len(params):
        greedy_rows = [i for i, p in enumerate(params) if p.greedy]
        tokens[greedy_rows] = logits[greedy_rows].argmax(dim=-1)
        weights = logits[sampled_rows]
    else:
        weights = logits
    chosen = [params[i] for i in sampled_rows]
    # Shift each row's best logit to 0 before dividing: a tiny temperature (any > 0 is valid, and may be 0 in
    # float32) then sends the others to -inf, never the best one to inf, so exp cannot make NaN from inf - inf.
    # Unnormalised exp() is enough: sampling inverts each row's own cumulative sum. (The checks on the parameters
    # are Python's: this runs every step, and a tensor op costs more than a loop over 32 rows.)
    weights = weights.sub_(weights.amax(dim=-1, keepdim=True))
    if any(p.temperature != 1.0 for p in chosen):
        temperatures = torch.tensor([p.temperature for p in chosen], dtype=logits.dtype)
        weights = weights.div_(temperatures.clamp(min=finfo.tiny).unsqueeze(1))
    weights = weights.exp_()
    if any(p.top_k > 0 for p in chosen):
        weights = keep_top_k(weights, torch.tensor([p.top_k for p in chosen]))
    top_p = torch.tensor([p.top_p for p in chosen], dtype=logits.dtype)
    tokens[sampled_rows] = sample_nucleus(weights, top_p, [generators[i] for i in sampled_rows])
    return tokens


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


def sample_nucleus(weights: torch.Tensor, top_p: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row, drawn in proportion to `weights` [rows, vocab] (unnormalised) within the row's top-p nucleus.

    Batched, without sorting the vocabulary: each round draws one uniform per pending row from that row's own
    generator and inverts the row's cumulative weights. The token is kept if the weight of the tokens strictly more
    likely than it is at most `top_p` of the total (it is in the nucleus); otherwise every token no more likely than
    it is excluded and the row draws again. Every nucleus token is more likely than any rejected one, so a kept
    draw is exactly distributed as the renormalised nucleus (FlashInfer's rejection sampling for top-p). A row's
    draws depend on its own weights and generator only, so a seeded row samples the same whatever shares the batch.
    """
    chosen = torch.empty(weights.shape[0], dtype=torch.long)
    filtering = top_p < 1.0
    any_filtering = bool(filtering.any())
    limit = top_p * weights.sum(dim=-1) if any_filtering else top_p
    pending = torch.arange(weights.shape[0])
    candidates = weights
    for _ in range(MAX_NUCLEUS_ROUNDS):
        draws = torch.cat([torch.rand(1, generator=generators[i]) for i in pending.tolist()])
        token = invert_cumulative(candidates, draws)
        if not any_filtering:
            chosen[pending] = token
            return chosen
        row_weights = candidates if candidates is weights else weights[pending]
        token_weight = row_weights.gather(1, token.unsqueeze(1))
        above = weight_above(row_weights, token_weight)
        accepted = ~filtering[pending] | (above <= limit[pending])
        chosen[pending[accepted]] = token[accepted]
        rejected = ~accepted
        if not bool(rejected.any()):
            return chosen
        pending, row_weights, token_weight = pending[rejected], row_weights[rejected], token_weight[rejected]
        candidates = row_weights * (row_weights > token_weight)
    # Rare (a near-zero top_p over a flat distribution): the remaining rows sort.
    for row in pending.tolist():
        chosen[row] = _sample_sorted(weights[row], float(top_p[row]), generators[row])
    return chosen


def weight_above(weights: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per row, the total of the weights strictly above the row's (positive) `threshold` [rows, 1].

    Dividing by the threshold makes it 1 for every row, so one in-place `threshold_` pass does the masking: several
    times cheaper than a boolean mask and a product (this runs for every top-p row at every step).
    """
    return F.threshold_(weights / threshold, 1.0, 0.0).sum(dim=-1) * threshold.squeeze(1)


BLOCK = 1024


def invert_cumulative(weights: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative weight exceeds `draws` [rows] (in [0, 1)) of the row's total.

    In two levels, so that no pass over the vocabulary is a cumulative sum (a scan, several times the cost of a sum):
    block totals pick the block, then only that block's weights are scanned. Every token picked has positive weight.
    """
    vocab = weights.shape[1]
    full = vocab - vocab % BLOCK
    totals = [weights[:, :full].unflatten(1, (full // BLOCK, BLOCK)).sum(dim=-1)] if full else []
    if full < vocab:
        totals.append(weights[:, full:].sum(dim=-1, keepdim=True))
    block_cumulative = torch.cat(totals, dim=1).cumsum(dim=-1, dtype=torch.float64)
    block = _invert(block_cumulative, draws.double() * block_cumulative[:, -1])
    before = torch.where(block > 0, block_cumulative.gather(1, (block - 1).clamp(min=0).unsqueeze(1)).squeeze(1), 0.0)
    # The block's own weights (those past the vocabulary's end are zero), scanned, and the rest of the draw inverted.
    columns = block.unsqueeze(1) * BLOCK + torch.arange(BLOCK).unsqueeze(0)
    inside = weights.gather(1, columns.clamp(max=vocab - 1)) * (columns < vocab)
    cumulative = inside.cumsum(dim=-1, dtype=torch.float64)
    target = draws.double() * block_cumulative[:, -1] - before
    return block * BLOCK + _invert(cumulative, target)


def _invert(cumulative: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index of the first entry of each row's (non-decreasing) `cumulative` above `target`, kept below the total so
    that the entry found adds positive weight."""
    total = cumulative[:, -1]
    target = torch.minimum(target.clamp(min=0.0), torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, target.unsqueeze(1), right=True).squeeze(1)


def _sample_sorted(weights: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    ordered, order = weights.sort(descending=True)
    mass_before = ordered.cumsum(0) - ordered
    kept = ordered.masked_fill(mass_before > top_p * float(ordered.sum()), 0.0)
    return int(order[torch.multinomial(kept, 1, generator=generator)])
