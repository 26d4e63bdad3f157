"""Throughput and p99 latency against concurrency, one line per system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .records import LevelSummary


def plot_levels(levels: Sequence[LevelSummary], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, (tput, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    concurrency = [lvl.concurrency for lvl in levels]
    series = {
        "server (iteration-level batching)": [lvl.server for lvl in levels],
        "baseline (thread per request)": [lvl.baseline for lvl in levels],
    }
    for label, runs in series.items():
        points = [(c, r) for c, r in zip(concurrency, runs, strict=True) if r is not None and r.completed]
        if points:
            xs = [c for c, _ in points]
            tput.plot(xs, [r.output_tokens_per_s for _, r in points], marker="o", label=label)
            lat.plot(xs, [r.latency_s.p99 for _, r in points], marker="o", label=label)
    raw = [(lvl.concurrency, lvl.raw.output_tokens_per_s) for lvl in levels if lvl.raw is not None]
    if raw:
        tput.plot([c for c, _ in raw], [t for _, t in raw], marker="s", linestyle="--", label="raw generate (limit)")
    for ax, ylabel in ((tput, "output tokens/s"), (lat, "p99 end-to-end latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    lat.set_yscale("log")
    # Plain seconds at 1-2-5 steps, not 3x10^1 minor labels.
    lat.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    lat.yaxis.set_major_formatter(ScalarFormatter())
    lat.yaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
