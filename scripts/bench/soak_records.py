"""The soak run's pure parts: request kinds, how each answer is classified, back-off, records, the table.

Outcomes, per request the client sent:
  ok            200 with a whole response of the requested length (`ignore_eos`), or a stream ending in `done`
  rejected      429 `overloaded` / 503 `queue_timeout`|`model_not_ready`|`shutting_down`, structured body
                and `Retry-After`
  disconnected  the client left on purpose: closed a stream after its first token, or gave up on /generate
  fault_failed  a fault-injected request failed as designed: 500 (or an in-stream error) `generation_failed`
  error         a complete answer that is wrong: another status, an unstructured error body, a success of
                the wrong shape or length, a fault that did not fire, or `generation_failed` without the marker
  lost          no complete answer: client timeout, connection refused/reset, a stream cut before its last event
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from .records import CpuShare, Distribution, MachineInfo, TargetCheck
from .report import HEALTH_P99_LIMIT_MS, fmt

Kind = Literal["generate", "stream", "disconnect_stream", "disconnect_generate", "fault", "fault_stream"]
Outcome = Literal["ok", "rejected", "disconnected", "fault_failed", "error", "lost"]
BAD: frozenset[Outcome] = frozenset({"error", "lost"})
KINDS: tuple[Kind, ...] = get_args(Kind)
STREAM_KINDS: frozenset[Kind] = frozenset({"stream", "disconnect_stream", "fault_stream"})
FAULT_KINDS: frozenset[Kind] = frozenset({"fault", "fault_stream"})
DEFAULT_MIX: dict[Kind, float] = {
    "generate": 0.40,
    "stream": 0.25,
    "disconnect_stream": 0.10,
    "disconnect_generate": 0.10,
    "fault": 0.075,
    "fault_stream": 0.075,
}
REJECTIONS: dict[int, frozenset[str]] = {
    429: frozenset({"overloaded"}),
    503: frozenset({"queue_timeout", "model_not_ready", "shutting_down"}),
}
FAULT_ERROR_TYPE = "generation_failed"
# A minute of load should not grow the server much: 10 % of its resident size (~115 MiB for DistilGPT-2's
# ~1.1 GiB tree) leaves room for allocator and cache settling (+17 to +38 MiB measured) yet catches a leak of
# ~30 KiB per request over the ~3,600 requests a minute sends here.
RSS_GROWTH_LIMIT_PCT = 10.0


# --- request mix ----------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[Kind, float]:
    """`generate=0.5,stream=0.5` -> fractions summing to 1; kinds left out get 0."""
    mix: dict[Kind, float] = dict.fromkeys(KINDS, 0.0)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in mix:
            raise ValueError(f"unknown request kind {name!r}; choose from {', '.join(KINDS)}")
        mix[name] = float(value)  # type: ignore[index]
    return normalise_mix(mix)


def normalise_mix(mix: Mapping[Kind, float]) -> dict[Kind, float]:
    total = sum(mix.values())
    if total <= 0 or min(mix.values()) < 0:
        raise ValueError("the mix needs non-negative fractions and at least one above 0")
    return {kind: mix.get(kind, 0.0) / total for kind in KINDS}


def without_faults(mix: Mapping[Kind, float]) -> dict[Kind, float]:
    return normalise_mix({k: (0.0 if k in FAULT_KINDS else v) for k, v in mix.items()})


def pick_kind(mix: Mapping[Kind, float], rng: random.Random) -> Kind:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


# --- back-off -------------------------------------------------------------------------------------


def backoff_s(retry_after: str | None, rejections: int, rng: random.Random, cap_s: float, jitter: float = 0.5) -> float:
    """Wait before retrying: the server's `Retry-After` (seconds), else 0.1 s doubling per rejection in a row;
    capped at `cap_s`, then up to `jitter` more (a fraction), so rejected clients do not return in lockstep."""
    try:
        base = float(retry_after) if retry_after is not None else math.nan
    except ValueError:  # an HTTP date: not sent by this server; fall back
        base = math.nan
    if not base >= 0:
        base = 0.1 * 2 ** min(max(rejections - 1, 0), 10)
    return min(base, cap_s) * (1 + jitter * rng.random())


# --- classification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str = ""


def error_type(body: object) -> str | None:
    """The `type` of a body in the one error shape `{"error": {"type", "message", "request_id"}}`, else None."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    fields = [error.get(name) for name in ("type", "message", "request_id")]
    return fields[0] if all(isinstance(f, str) and f for f in fields) else None  # type: ignore[return-value]


def _success(kind: Kind, body: Mapping[str, Any], max_new_tokens: int) -> Verdict:
    if kind in FAULT_KINDS:
        return Verdict("error", "fault-injected request succeeded: the fault did not fire")
    usage = body.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(body.get("completion"), str) or tokens is None:
        return Verdict("error", "200 without completion and usage")
    if tokens != max_new_tokens:
        return Verdict("error", f"{tokens} tokens instead of {max_new_tokens} (ignore_eos)")
    return Verdict("ok")


def _failure(kind: Kind, status: int | str, body: object) -> Verdict:
    """`status` is the HTTP status, or "stream" for an error event after the 200 headers."""
    etype = error_type(body)
    if etype is None:
        return Verdict("error", f"{status}: body not in the error shape")
    if etype == FAULT_ERROR_TYPE and kind in FAULT_KINDS:
        expected = "stream" if kind in STREAM_KINDS else 500
        return Verdict("fault_failed") if status == expected else Verdict("error", f"fault failed as {status}")
    if etype == FAULT_ERROR_TYPE:
        return Verdict("error", f"{status} {etype} on a request without the fault marker")
    return Verdict("error", f"{status} {etype}")


def classify_response(kind: Kind, status: int, body: object, retry_after: str | None, max_new_tokens: int) -> Verdict:
    """A complete HTTP answer: /generate's, or a /generate_stream refusal (its status is not 200)."""
    if status in REJECTIONS:
        etype = error_type(body)
        if etype not in REJECTIONS[status]:
            return Verdict("error", f"{status} with error type {etype!r}")
        return Verdict("rejected") if retry_after else Verdict("error", f"{status} {etype} without Retry-After")
    if status == 200 and kind not in STREAM_KINDS:
        return _success(kind, body, max_new_tokens) if isinstance(body, dict) else Verdict("error", "200 not JSON")
    return _failure(kind, status, body)


def classify_stream_end(kind: Kind, last_event: Mapping[str, Any] | None, max_new_tokens: int) -> Verdict:
    """A 200 stream read to its end: it must close with `done` (or, injected, an `error` event)."""
    if last_event is None:
        return Verdict("lost", "stream ended without a done or error event")
    if last_event.get("type") == "done":
        return _success(kind, last_event, max_new_tokens)
    return _failure(kind, "stream", last_event)


# --- records --------------------------------------------------------------------------------------


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


# --- checks and text ------------------------------------------------------------------------------


def _check(name: str, ok: bool | None, detail: str) -> TargetCheck:
    return TargetCheck(name=name, verdict="SKIP" if ok is None else ("PASS" if ok else "MISS"), detail=detail)


def describe_slots(slots: SlotState) -> str:
    after = (
        f"free {slots.freed_after_s:.1f} s after the clients stopped"
        if slots.freed_after_s is not None
        else (f"NOT free: {slots.last}")
    )
    return f"peak {slots.peak_running} running / {slots.peak_waiting} waiting; {after}"


def check_soak(report: SoakReport) -> list[TargetCheck]:
    c, cfg, slots, mem = report.counts, report.config, report.slots, report.memory
    faults_on = any(cfg.mix.get(kind, 0) > 0 for kind in FAULT_KINDS)
    checks = [
        _check("no request lost", c.lost == 0, f"{c.lost} lost"),
        _check("no errors", c.errors == 0, f"{c.errors} errors"),
        _check(
            "injected faults fail only their own request",
            c.faults_failed_as_expected > 0 if faults_on else None,
            f"{c.faults_failed_as_expected} of {c.faults_sent} failed as expected" if faults_on else "faults off",
        ),
        _check(
            "slots within bounds, all free after the load",
            slots.freed_after_s is not None and slots.peak_running <= cfg.limit and slots.peak_waiting <= cfg.max_queue,
            describe_slots(slots),
        ),
        _check(
            f"/health p99 < {HEALTH_P99_LIMIT_MS:.0f} ms, no failed probe",
            report.health_ms.p99 < HEALTH_P99_LIMIT_MS and report.health_failures == 0,
            f"p99 {fmt(report.health_ms.p99)} ms, {report.health_failures} failed of {report.health_ms.count}",
        ),
        _check(
            f"server RSS growth <= {RSS_GROWTH_LIMIT_PCT:.0f} %",
            None if mem is None else mem.growth_pct <= RSS_GROWTH_LIMIT_PCT,
            "no server pid" if mem is None else f"{mem.growth_mib:+.1f} MiB ({mem.growth_pct:+.1f} %)",
        ),
    ]
    return checks


def _breakdown(counts: Mapping[str, int]) -> str:
    parts = [f"{name} {n:,}" for name, n in counts.items() if n]
    return f" ({', '.join(parts)})" if parts else ""


def format_soak(report: SoakReport) -> str:
    """The run as a Markdown table (it pastes into the README), with a line that says what ran."""
    c, cfg, kinds = report.counts, report.config, report.counts.by_kind
    weights = "RANDOM weights" if cfg.random_weights else cfg.model_source
    title = (
        f"{cfg.model_tag} ({weights}), limit {cfg.limit}, queue {cfg.max_queue}, queue timeout "
        f"{cfg.queue_timeout_s:g} s, {cfg.clients} clients for {cfg.duration_s:g} s, "
        f"{report.machine.cpu_count} CPU cores, {report.started_at}"
    )
    ok_by = {kind: kinds.get(kind, {}).get("ok", 0) for kind in ("generate", "stream", "disconnect_generate")}
    left_by = {
        "mid-stream": kinds.get("disconnect_stream", {}).get("disconnected", 0),
        "/generate timeout": kinds.get("disconnect_generate", {}).get("disconnected", 0),
    }
    faults_rejected = sum(kinds.get(k, {}).get("rejected", 0) for k in FAULT_KINDS)
    mem, health, lat = report.memory, report.health_ms, report.latency_s
    rows = [
        ("requests sent", f"{c.sent:,}"),
        ("succeeded", f"{c.succeeded:,}{_breakdown(ok_by)}"),
        ("rejected (clean, with Retry-After)", ", ".join(f"{code}: {n:,}" for code, n in c.rejected.items()) or "0"),
        ("intentional disconnects", f"{c.disconnected:,}{_breakdown(left_by)}"),
        (
            "injected faults",
            f"{c.faults_sent:,} sent: {c.faults_failed_as_expected:,} failed with `{FAULT_ERROR_TYPE}` (expected), "
            f"{faults_rejected:,} rejected before admission"
            if cfg.fault_marker
            else "off",
        ),
        ("**errors**", f"**{c.errors:,}**"),
        ("**lost**", f"**{c.lost:,}**"),
        ("latency of successes p50 / p99", f"{fmt(lat.p50, '.2f')} s / {fmt(lat.p99, '.2f')} s"),
        (
            "`/health` p50 / p99",
            f"{fmt(health.p50)} ms / {fmt(health.p99)} ms ({health.count:,} probes, {report.health_failures} failed)",
        ),
        ("slots (from `/health`)", describe_slots(report.slots)),
        (
            "server RSS before / peak / after",
            "-" if mem is None else f"{mem.before_mib:.0f} / {mem.peak_mib:.0f} / {mem.after_mib:.0f} MiB",
        ),
        ("RSS growth", "-" if mem is None else f"{mem.growth_mib:+.1f} MiB ({mem.growth_pct:+.1f} %)"),
        ("other processes' CPU", fmt(report.cpu.others_cores if report.cpu else None, ".2f", " cores")),
    ]
    lines = [title, "", "| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    if c.error_details:
        lines += ["", "Errors and lost requests:", *(f"- {n} x {what}" for what, n in c.error_details.items())]
    return "\n".join(lines)
