"""Records both tools write into their JSON results: distributions, CPU share, the machine, target verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

# Both tools hold the server's /health to this under load.
HEALTH_P99_LIMIT_MS = 50.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolation percentile (numpy's default method), so numbers compare with vLLM's benchmark."""
    if not values:
        return math.nan
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Distribution(BaseModel):
    """Summary of one measured quantity, in the unit its field name says."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(count=0, mean=math.nan, p50=math.nan, p90=math.nan, p99=math.nan, max=math.nan)
        return cls(
            count=len(values),
            mean=sum(values) / len(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            max=max(values),
        )


class CpuShare(BaseModel):
    """CPU use during a run, in cores: ours (benchmark process and the server under test) and everyone else's."""

    wall_s: float
    ours_cores: float
    others_cores: float
    load_avg_1m_before: float
    load_avg_1m_after: float


class MachineInfo(BaseModel):
    cpu_count: int
    torch_threads: int
    torch_version: str
    platform: str
    python: str
    load_avg_at_start: tuple[float, float, float]


class TargetCheck(BaseModel):
    name: str
    verdict: Literal["PASS", "MISS", "SKIP"]
    detail: str
