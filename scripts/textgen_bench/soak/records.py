"""The soak's records: each request as the client saw it, the run's settings and counts, and its report."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from ..common.records import CpuShare, Distribution, MachineInfo, TargetCheck
from .mix import FAULT_KINDS, Kind
from .verdicts import BAD, Outcome


@dataclass(frozen=True)
class Attempt:
    """One request as the client saw it."""

    kind: Kind
    outcome: Outcome
    latency_s: float
    status: int | None = None
    detail: str = ""
    started_s: float = 0.0  # since the load began


class SoakConfig(BaseModel):
    command: str
    model_tag: str
    model_source: str = Field(description="Where the served weights came from, as /model-info says.")
    limit: int
    max_queue: int
    queue_timeout_s: float
    clients: int
    duration_s: float
    mix: dict[str, float]
    fault_marker: str | None
    request_timeout_s: float
    health_interval_s: float
    flood_clients: int = 0
    flood_concurrency: int | None = None
    flood_pause_s: float | None = None
    stalled_sockets: int = 0

    @property
    def random_weights(self) -> bool:
        return self.model_source.startswith("random")


class SoakCounts(BaseModel):
    sent: int
    succeeded: int
    rejected: dict[int, int] = Field(description="Clean 429/503 refusals by status.")
    disconnected: int
    faults_sent: int
    faults_failed_as_expected: int
    errors: int
    lost: int
    by_kind: dict[str, dict[str, int]]
    error_details: dict[str, int] = Field(description="Errors and lost requests by what went wrong.")
    first_problems: list[str] = Field(default_factory=list, description="The first errors and lost requests.")


class Memory(BaseModel):
    """Resident memory of the server's process tree, MiB."""

    before_mib: float
    peak_mib: float
    after_mib: float
    during_mib: list[float] = Field(default_factory=list, description="Once a second under load: flat, or climbing?")

    @property
    def growth_mib(self) -> float:
        return self.after_mib - self.before_mib

    @property
    def growth_pct(self) -> float:
        return 100 * self.growth_mib / self.before_mib if self.before_mib else math.nan


class SlotState(BaseModel):
    peak_running: int
    peak_waiting: int
    freed_after_s: float | None = Field(description="Until /health showed nothing running or waiting; None: never.")
    last: dict[str, int] = Field(default_factory=dict)


class StalledSummary(BaseModel):
    """The slow and idle sockets held open during the load (see stalled.py)."""

    opened: int
    connect_failures: int
    peak_open: int
    answers: dict[str, int] = Field(description="By kind and answer: body:408, head:408, idle:closed.")
    longest_open_s: float


class SoakReport(BaseModel):
    started_at: str
    finished_at: str = ""
    config: SoakConfig
    machine: MachineInfo
    counts: SoakCounts
    latency_s: Distribution = Field(description="Successful requests, end to end.")
    health_ms: Distribution
    health_failures: int
    slots: SlotState
    memory: Memory | None = None
    cpu: CpuShare | None = None
    flood: SoakCounts | None = Field(None, description="The flooding key's requests, if one flooded.")
    stalled: StalledSummary | None = None
    checks: list[TargetCheck] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.verdict != "MISS" for check in self.checks)


def summarise_attempts(attempts: Sequence[Attempt]) -> SoakCounts:
    outcomes = Counter(a.outcome for a in attempts)
    by_kind: dict[str, Counter[str]] = {}
    for a in attempts:
        by_kind.setdefault(a.kind, Counter())[a.outcome] += 1
    faults = [a for a in attempts if a.kind in FAULT_KINDS]
    bad = sorted((a for a in attempts if a.outcome in BAD), key=lambda a: a.started_s)
    return SoakCounts(
        sent=len(attempts),
        succeeded=outcomes["ok"],
        rejected=dict(sorted(Counter(a.status or 0 for a in attempts if a.outcome == "rejected").items())),
        disconnected=outcomes["disconnected"],
        faults_sent=len(faults),
        faults_failed_as_expected=outcomes["fault_failed"],
        errors=outcomes["error"],
        lost=outcomes["lost"],
        by_kind={kind: dict(counts) for kind, counts in by_kind.items()},
        error_details=dict(Counter(f"{a.outcome}: {a.kind}: {a.detail}" for a in bad)),
        first_problems=[
            f"{a.outcome} {a.kind} at {a.started_s:.2f} s after {a.latency_s:.3f} s: {a.detail}" for a in bad[:20]
        ],
    )
