"""The `--vs-llama` report: side-by-side tables, the issue's targets, and a plot."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..common.records import TargetCheck
from ..common.text import fmt, table_row
from .peers import MODES, OURS, OURS_INT8, PeerRun, PeersReport

REFERENCE, QUANTIZED_REFERENCE = "llama-f32", "llama-q8_0"
# Issue 16: at least llama-server f32 at C=5 and C=32, at least 0.8x at C=1, sampling at most 5 % dearer at C=32.
MIN_RATIO = {1: 0.8, 5: 1.0, 32: 1.0}
MAX_SAMPLING_COST, SAMPLING_LEVEL, HEALTH_P99_MS = 0.05, 32, 50.0


def _run(report: PeersReport, system: str, case: str, level: int, mode: str) -> PeerRun | None:
    wanted = (system, case, level, mode)
    return next((r for r in report.runs if (r.system, r.case, r.concurrency, r.mode) == wanted), None)


def median(report: PeersReport, system: str, case: str, level: int, mode: str) -> float | None:
    run = _run(report, system, case, level, mode)
    return run.median if run is not None and run.tokens_per_s else None


def sampled_over_greedy(report: PeersReport, system: str, case: str, level: int) -> float | None:
    """The median of each repeat's sampled / greedy ratio: the two runs of a repeat are adjacent (ABBA order), so a
    machine whose speed wanders over minutes moves both alike, and the ratio keeps what sampling costs."""
    greedy, sampled = _run(report, system, case, level, "greedy"), _run(report, system, case, level, "sampled")
    if greedy is None or sampled is None or not greedy.tokens_per_s or not sampled.tokens_per_s:
        return None
    pairs = zip(sampled.tokens_per_s, greedy.tokens_per_s, strict=False)
    return statistics.median(s / g for s, g in pairs if g)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def format_report(report: PeersReport) -> str:
    parts = [f"## {report.model_tag}: output tokens/s through /v1/completions (medians)"]
    present = [s for s in report.systems if s not in report.skipped]
    for case in report.cases:
        header = ["C", "mode", *present, f"{OURS} / {REFERENCE}"]
        if OURS_INT8 in present:
            header.append(f"{OURS_INT8} / {QUANTIZED_REFERENCE}")
        lines = [f"\n### {case.label}: {_prompt_tokens(report, case.label)}-token prompt, {case.max_tokens} new"]
        lines += [table_row(header), table_row(["---"] * len(header))]
        for level in case.levels:
            for mode in MODES:
                values = [median(report, s, case.label, level, mode) for s in present]
                cells = [str(level), mode, *(fmt(v) for v in values)]
                ours = median(report, OURS, case.label, level, mode)
                cells.append(fmt(ratio(ours, _ref(report, case, level, mode)), ".2f"))
                if OURS_INT8 in present:
                    int8 = median(report, OURS_INT8, case.label, level, mode)
                    cells.append(fmt(ratio(int8, median(report, QUANTIZED_REFERENCE, case.label, level, mode)), ".2f"))
                lines.append(table_row(cells))
        parts.append("\n".join(lines))
        parts.append(_sampling_costs(report, case.label, case.levels, present))
    if len(report.cases) > 1:
        parts.append(_lengths_table(report, present))
    parts.append(_checks(report))
    parts += [f"- skipped {name}: {why}" for name, why in report.skipped.items()]
    return "\n\n".join(p for p in parts if p)


def _ref(report: PeersReport, case, level: int, mode: str) -> float | None:
    return median(report, REFERENCE, case.label, level, mode)


def _prompt_tokens(report: PeersReport, case: str) -> str:
    run = next((r for r in report.runs if r.case == case and r.system == OURS and r.prompt_tokens), None)
    return f"{run.prompt_tokens:.0f}" if run else "?"


def _sampling_costs(report: PeersReport, case: str, levels: list[int], systems: list[str]) -> str:
    """Sampled throughput over greedy, per system and level: what sampling costs each."""
    cells = []
    for system in systems:
        costs = []
        for level in levels:
            cost = sampled_over_greedy(report, system, case, level)
            costs.append(f"C={level} {fmt(cost, '.2f')}")
        cells.append(f"{system} " + ", ".join(costs))
    return "Sampled / greedy: " + "; ".join(cells)


def _lengths_table(report: PeersReport, systems: list[str]) -> str:
    """Decoding a long sequence against a short one at the same concurrency, greedy."""
    short, long = report.cases[0], report.cases[1]
    lines = [
        f"### Long sequences at C={short.levels[0]}, greedy: tokens/s at ~{_total(report, short)} and "
        f"~{_total(report, long)} tokens per sequence",
        table_row(["system", f"~{_total(report, short)} tokens", f"~{_total(report, long)} tokens", "long / short"]),
        table_row(["---"] * 4),
    ]
    for system in systems:
        a = median(report, system, short.label, short.levels[0], "greedy")
        b = median(report, system, long.label, long.levels[0], "greedy")
        lines.append(table_row([system, fmt(a), fmt(b), fmt(ratio(b, a), ".2f")]))
    return "\n".join(lines)


def _total(report: PeersReport, case) -> str:
    run = next((r for r in report.runs if r.case == case.label and r.prompt_tokens), None)
    return f"{run.prompt_tokens + case.max_tokens:.0f}" if run else f"? + {case.max_tokens}"


def _checks(report: PeersReport) -> str:
    """One line per system and case: equal at every concurrency, or where it first differed."""
    lines = []
    for system in dict.fromkeys(c.system for c in report.checks):
        for case in dict.fromkeys(c.case for c in report.checks if c.system == system):
            checks = [c for c in report.checks if (c.system, c.case) == (system, case)]
            levels = ", ".join(f"C={c.concurrency}" for c in checks)
            differing = [c for c in checks if not c.equal]
            verdict = (
                "equal to ours"
                if not differing
                else (
                    f"DIFFERS from ours from character {differing[0].first_difference} (C={differing[0].concurrency})"
                )
            )
            lines.append(f"- {system} ({case}; {levels}): {verdict}")
    return "Greedy text, one request each (same weights, same work):\n" + "\n".join(lines) if lines else ""


def check_targets(report: PeersReport) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
    short = report.cases[0]
    for level, needed in MIN_RATIO.items():
        if level not in short.levels:
            continue
        for mode in MODES:
            r = ratio(
                median(report, OURS, short.label, level, mode), median(report, REFERENCE, short.label, level, mode)
            )
            name = f"C={level} {mode}: ours >= {needed:.1f}x llama-server f32"
            checks.append(_verdict(name, r, r is not None and r >= needed, f"{fmt(r, '.2f')}x"))
    if SAMPLING_LEVEL in short.levels:
        paired = sampled_over_greedy(report, OURS, short.label, SAMPLING_LEVEL)
        cost = 1 - paired if paired is not None else None
        name = f"C={SAMPLING_LEVEL}: sampling costs ours at most {MAX_SAMPLING_COST:.0%}"
        checks.append(_verdict(name, cost, cost is not None and cost <= MAX_SAMPLING_COST, f"{fmt(cost, '.1%')}"))
    f32 = [c for c in report.checks if c.system == REFERENCE]
    if f32:
        checks.append(_verdict("llama-server f32 writes our greedy text", 1, all(c.equal for c in f32), "checked"))
    ours = [r for r in report.runs if r.system == OURS and r.health_p99_ms is not None]
    if ours:
        worst = max(r.health_p99_ms or 0.0 for r in ours)
        checks.append(
            _verdict(f"/health p99 < {HEALTH_P99_MS:.0f} ms", worst, worst < HEALTH_P99_MS, f"{worst:.1f} ms")
        )
    return checks


def _verdict(name: str, value: float | None, ok: bool, detail: str) -> TargetCheck:
    if value is None:
        return TargetCheck(name=name, verdict="SKIP", detail="a system did not run")
    return TargetCheck(name=name, verdict="PASS" if ok else "MISS", detail=detail)


def plot_report(report: PeersReport, path: Path) -> None:
    """Grouped bars: tokens/s per system at each concurrency, one panel per mode (first case)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = report.cases[0]
    systems = [s for s in report.systems if s not in report.skipped]
    fig, axes = plt.subplots(1, len(MODES), figsize=(11, 4.2), sharey=True)
    width = 0.8 / max(len(systems), 1)
    for ax, mode in zip(axes, MODES, strict=True):
        for i, system in enumerate(systems):
            values = [median(report, system, case.label, level, mode) or 0.0 for level in case.levels]
            xs = [x + (i - (len(systems) - 1) / 2) * width for x in range(len(case.levels))]
            ax.bar(xs, values, width, label=system)
        ax.set_xticks(range(len(case.levels)), [f"C={level}" for level in case.levels])
        ax.set_title(f"{mode} ({', '.join(f'{k} {v}' for k, v in MODES[mode].items())})", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("output tokens/s")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report.model_tag}: {case.max_tokens} new tokens per request, through /v1/completions", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["PeerRun", "check_targets", "format_report", "plot_report"]
