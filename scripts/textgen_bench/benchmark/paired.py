"""Variants of one load against one running server, interleaved round by round, compared by their medians.

For `--structured` and `--adapters`: what a feature costs is a ratio measured in the same run, each round
running every variant once, so drift on a busy machine hits them alike.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..common.client import warm_up
from ..common.servers import RunningServer
from .load import LoadPlan, run_load


@dataclass(frozen=True)
class Variant:
    label: str
    payload: dict[str, Any]
    variations: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # per request, cycled


class VariantResult(BaseModel):
    label: str
    concurrency: int
    tokens_per_s: list[float]  # completion tokens over wall time, one per round
    failed: int

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)


def run_variants(
    server: RunningServer,
    api_key: str,
    variants: list[Variant],
    concurrency: int,
    requests: int,
    rounds: int,
    warmup: int,
) -> list[VariantResult]:
    results = [VariantResult(label=v.label, concurrency=concurrency, tokens_per_s=[], failed=0) for v in variants]
    for variant in variants:
        asyncio.run(
            warm_up(server.base_url, api_key, {**variant.payload, **next(iter(variant.variations), {})}, warmup, 120)
        )
    for round_ in range(rounds):
        for variant, result in zip(variants, results, strict=True):
            plan = LoadPlan(
                server.base_url,
                api_key,
                variant.payload,
                requests,
                concurrency,
                seed=round_,
                variations=variant.variations,
            )
            outcome = asyncio.run(run_load(plan))
            tokens = sum(s.completion_tokens for s in outcome.samples if s.ok)
            result.tokens_per_s.append(tokens / outcome.duration_s)
            result.failed += sum(1 for s in outcome.samples if not s.ok)
            print(f"  c={concurrency} {variant.label}: {result.tokens_per_s[-1]:.1f} tok/s", flush=True)
    return results


def ratio_table(pairs: list[tuple[VariantResult, VariantResult]], target: float, names: tuple[str, str]) -> str:
    """One line per (reference, variant) pair: both medians, their ratio and whether it meets `target`."""
    reference_name, variant_name = names
    lines = [
        f"| c | {reference_name} | tok/s | {variant_name} | tok/s | ratio | target (>= {target:.2f}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for reference, variant in pairs:
        ratio = variant.median / reference.median if reference.median else 0.0
        verdict = "met" if ratio >= target else "MISSED"
        lines.append(
            f"| {reference.concurrency} | {reference.label} | {reference.median:.1f} | {variant.label} | "
            f"{variant.median:.1f} | {ratio:.2f} | {verdict} |"
        )
    return "\n".join(lines)
