"""Side-by-side comparison, the targets, and the text report (Markdown tables, so it pastes into docs)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from ..common.records import HEALTH_P99_LIMIT_MS, TargetCheck
from ..common.text import fmt, table_row
from .records import LevelSummary, LoadResult, RawResult

# "p99 far below the baseline's": at most half of it.
FAR_BELOW = 0.5


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or math.isnan(numerator):
        return None
    return numerator / denominator


def _tokens_per_s(result: LoadResult | RawResult | None) -> float | None:
    return result.output_tokens_per_s if result else None


def _p99(result: LoadResult | None) -> float | None:
    return result.latency_s.p99 if result and result.completed else None


def summarise_level(
    concurrency: int, server: LoadResult | None, baseline: LoadResult | None, raw: RawResult | None
) -> LevelSummary:
    return LevelSummary(
        concurrency=concurrency,
        server=server,
        baseline=baseline,
        raw=raw,
        server_over_raw=ratio(_tokens_per_s(server), _tokens_per_s(raw)),
        server_over_baseline=ratio(_tokens_per_s(server), _tokens_per_s(baseline)),
        baseline_p99_over_server_p99=ratio(_p99(baseline), _p99(server)),
    )


def _verdict(ok: bool) -> Literal["PASS", "MISS"]:
    return "PASS" if ok else "MISS"


def _level(levels: Sequence[LevelSummary], concurrency: int, limit: int) -> LevelSummary | None:
    for level in levels:
        if level.concurrency == concurrency and level.server is not None and level.server.limit == limit:
            return level
    return None


def _level_target(
    levels: Sequence[LevelSummary],
    conc: int,
    claim: str,
    needs: str,
    ratio_of: Callable[[LevelSummary], float | None],
    judge: Callable[[LevelSummary, float], tuple[bool, str]],
) -> TargetCheck:
    """A target at concurrency `conc` run with the limit `conc`: SKIP while its ratio is unknown, else `judge` it."""
    name = f"c{conc} (limit {conc}): {claim}"
    level = _level(levels, conc, conc)
    value = ratio_of(level) if level is not None else None
    if level is None or value is None:
        return TargetCheck(name=name, verdict="SKIP", detail=f"needs the server and {needs} at this level")
    ok, detail = judge(level, value)
    return TargetCheck(name=name, verdict=_verdict(ok), detail=detail)


def _throughput_target(levels: Sequence[LevelSummary], conc: int, share: float) -> TargetCheck:
    def judge(level: LevelSummary, over_raw: float) -> tuple[bool, str]:
        assert level.server and level.raw
        tok_s = f"{level.server.output_tokens_per_s:.1f} vs {level.raw.output_tokens_per_s:.1f} tok/s"
        return over_raw >= share, f"{tok_s} = {over_raw:.0%}"

    claim = f"server >= {share:.0%} of raw batch-{conc} tok/s"
    return _level_target(levels, conc, claim, "raw", lambda level: level.server_over_raw, judge)


def _beats_baseline_target(levels: Sequence[LevelSummary], conc: int) -> TargetCheck:
    def judge(level: LevelSummary, over_baseline: float) -> tuple[bool, str]:
        assert level.server and level.baseline
        tok_s = f"{level.server.output_tokens_per_s:.1f} vs {level.baseline.output_tokens_per_s:.1f} tok/s"
        return over_baseline >= 1.0, f"{tok_s} = {over_baseline:.2f}x"

    claim = "server tok/s >= baseline tok/s"
    return _level_target(levels, conc, claim, "the baseline", lambda level: level.server_over_baseline, judge)


def _p99_target(levels: Sequence[LevelSummary], conc: int) -> TargetCheck:
    def judge(level: LevelSummary, baseline_over_server: float) -> tuple[bool, str]:
        assert level.server and level.baseline
        p99s = f"{level.server.latency_s.p99:.1f} s vs {level.baseline.latency_s.p99:.1f} s"
        return 1 / baseline_over_server <= FAR_BELOW, f"{p99s} (baseline {baseline_over_server:.1f}x slower)"

    claim = f"server p99 latency <= {FAR_BELOW:.0%} of baseline's"
    return _level_target(levels, conc, claim, "the baseline", lambda level: level.baseline_p99_over_server_p99, judge)


def _health_target(levels: Sequence[LevelSummary]) -> TargetCheck:
    name = f"server /health p99 < {HEALTH_P99_LIMIT_MS:.0f} ms at every level"
    runs = [lvl.server for lvl in levels if lvl.server is not None and lvl.server.health_ms.count]
    if not runs:
        return TargetCheck(name=name, verdict="SKIP", detail="no server run")
    worst = max(runs, key=lambda r: r.health_ms.p99)
    failures = sum(r.health_failures for r in runs)
    ok = worst.health_ms.p99 < HEALTH_P99_LIMIT_MS and failures == 0
    detail = f"worst p99 {worst.health_ms.p99:.1f} ms (c{worst.concurrency}), {failures} failed probes"
    return TargetCheck(name=name, verdict=_verdict(ok), detail=detail)


def check_targets(levels: Sequence[LevelSummary]) -> list[TargetCheck]:
    return [
        _throughput_target(levels, 5, 0.9),
        _beats_baseline_target(levels, 5),
        _throughput_target(levels, 32, 0.8),
        _p99_target(levels, 32),
        _health_target(levels),
    ]


# --- text -----------------------------------------------------------------------------------------


LOAD_HEADER = (
    "| system | limit | ok/sent | req/s | out tok/s | latency p50 / p90 / p99 (s) | queue p50 / p99 (ms) "
    "| /health p50 / p99 (ms) | TTFT p50 / p99 (ms) | other procs' CPU (cores) |"
)


def load_row(r: LoadResult) -> str:
    lat, queue, health = r.latency_s, r.queue_ms, r.health_ms
    cells = [
        r.system,
        str(r.limit),
        f"{r.completed}/{r.requests}",
        fmt(r.request_throughput, ".2f"),
        fmt(r.output_tokens_per_s),
        f"{fmt(lat.p50, '.2f')} / {fmt(lat.p90, '.2f')} / {fmt(lat.p99, '.2f')}",
        f"{fmt(queue.p50, '.0f')} / {fmt(queue.p99, '.0f')}",
        f"{fmt(health.p50, '.1f')} / {fmt(health.p99, '.1f')}",
        f"{fmt(r.ttft_ms.p50, '.0f')} / {fmt(r.ttft_ms.p99, '.0f')}" if r.ttft_ms else "n/a",
        fmt(r.cpu.others_cores if r.cpu else None, ".2f"),
    ]
    return table_row(cells)


def raw_row(r: RawResult) -> str:
    cells = [f"raw generate (batch {r.batch_size})", "-", f"{r.repeats} runs", "-", fmt(r.output_tokens_per_s)]
    cells += [
        f"{fmt(min(r.seconds), '.2f')} per batch",
        "-",
        "-",
        "-",
        fmt(r.cpu.others_cores if r.cpu else None, ".2f"),
    ]
    return table_row(cells)


def format_level(level: LevelSummary) -> str:
    lines = [f"### Concurrency {level.concurrency}", "", LOAD_HEADER, "|" + "---|" * 10]
    lines += [load_row(r) for r in (level.server, level.baseline) if r is not None]
    if level.raw is not None:
        lines.append(raw_row(level.raw))
    lines += ["", format_ratios(level)]
    for r in (level.server, level.baseline):
        lines += [f"- {r.system}: {note}" for note in (r.notes if r else [])]
        if r is not None and (r.failed or r.wrong_length or r.health_failures):
            lines.append(
                f"- {r.system}: {r.failed} failed {r.errors or ''}, {r.wrong_length} with the wrong length, "
                f"{r.health_failures} failed /health probes"
            )
    return "\n".join(lines)


def format_ratios(level: LevelSummary) -> str:
    return (
        f"Ratios: server/raw tok/s **{fmt(level.server_over_raw, '.2f')}**, "
        f"server/baseline tok/s **{fmt(level.server_over_baseline, '.2f')}**, "
        f"baseline p99 / server p99 **{fmt(level.baseline_p99_over_server_p99, '.2f')}**"
    )


def format_overview(levels: Sequence[LevelSummary]) -> str:
    lines = [
        "| concurrency | server tok/s | baseline tok/s | raw tok/s | server/raw | server/baseline "
        "| server p99 (s) | baseline p99 (s) | server /health p99 (ms) |",
        "|" + "---|" * 9,
    ]
    for lvl in levels:
        s, b, r = lvl.server, lvl.baseline, lvl.raw
        cells = [
            str(lvl.concurrency),
            fmt(s.output_tokens_per_s if s else None),
            fmt(b.output_tokens_per_s if b else None),
            fmt(r.output_tokens_per_s if r else None),
            fmt(lvl.server_over_raw, ".2f"),
            fmt(lvl.server_over_baseline, ".2f"),
            fmt(s.latency_s.p99 if s else None, ".2f"),
            fmt(b.latency_s.p99 if b else None, ".2f"),
            fmt(s.health_ms.p99 if s else None),
        ]
        lines.append(table_row(cells))
    return "\n".join(lines)
