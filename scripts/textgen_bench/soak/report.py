"""The soak's checks and its text report (a Markdown table, so it pastes into the README)."""

from __future__ import annotations

from collections.abc import Mapping

from ..common.records import HEALTH_P99_LIMIT_MS, TargetCheck
from ..common.text import fmt, table_row
from .mix import FAULT_KINDS
from .records import SlotState, SoakReport, StalledSummary
from .verdicts import FAULT_ERROR_TYPE

# A minute of load should not grow the server much: 10 % of its resident size (~115 MiB for DistilGPT-2's
# ~1.1 GiB tree) leaves room for allocator and cache settling (+17 to +38 MiB measured) yet catches a leak of
# ~30 KiB per request over the ~3,600 requests a minute sends here.
RSS_GROWTH_LIMIT_PCT = 10.0


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
    if (flood := report.flood) is not None:
        checks.append(
            _check(
                "the flooding key: every request answered (200, or a clean 429/503 with Retry-After)",
                flood.lost == 0 and flood.errors == 0 and flood.rejected.get(429, 0) > 0,
                f"{flood.succeeded:,} ok, rejected {flood.rejected}, {flood.errors} errors, {flood.lost} lost",
            )
        )
    if (stalled := report.stalled) is not None:
        checks.append(
            _check(
                f"{cfg.stalled_sockets} stalled sockets held, closed only with 408 (or, idle ones, silently)",
                stalled.peak_open >= cfg.stalled_sockets
                and stalled.connect_failures == 0
                and set(stalled.answers) <= STALLED_ANSWERS,
                describe_stalled(stalled),
            )
        )
    return checks


STALLED_ANSWERS = {"body:408", "head:408", "idle:closed"}


def describe_stalled(stalled: StalledSummary) -> str:
    answers = ", ".join(f"{what} {n:,}" for what, n in stalled.answers.items()) or "none closed"
    return (
        f"{stalled.opened:,} opened, peak {stalled.peak_open} at once, {stalled.connect_failures} failed to connect; "
        f"{answers}; the longest stalled {stalled.longest_open_s:.1f} s"
    )


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
    if (flood := report.flood) is not None:
        limit = f", limited to {cfg.flood_concurrency} in flight" if cfg.flood_concurrency else ""
        limit += f", back {cfg.flood_pause_s:g} s after a 429" if cfg.flood_pause_s else ""
        rows.append(
            (
                f"flooding key ({cfg.flood_clients} clients{limit})",
                f"{flood.sent:,} sent: {flood.succeeded:,} ok, rejected "
                + (", ".join(f"{code}: {n:,}" for code, n in flood.rejected.items()) or "0")
                + f", **{flood.errors} errors, {flood.lost} lost**",
            )
        )
    if report.stalled is not None:
        rows.append((f"stalled sockets ({cfg.stalled_sockets} at once)", describe_stalled(report.stalled)))
    lines = [title, "", "| | |", "|---|---|", *(table_row(row) for row in rows)]
    if c.error_details:
        lines += ["", "Errors and lost requests:", *(f"- {n} x {what}" for what, n in c.error_details.items())]
    return "\n".join(lines)
