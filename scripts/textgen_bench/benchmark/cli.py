"""Serving benchmark: the batched server against a thread-per-request baseline and the raw model.

In the style of vLLM's benchmark_serving: N requests per concurrency level, fixed prompt and output
lengths (`ignore_eos`), optional Poisson arrivals. For each level it measures, side by side:

  server    this service (`bentoml serve`), MAX_CONCURRENCY = MAX_BATCH_SIZE = the level (or --fixed-limit)
  baseline  scripts/textgen_bench/baseline_server.py: one `model.generate` per request in a thread pool
  raw       the model's batched `generate` in this process, batch size = the level: the ceiling

Reports throughput, end-to-end latency p50/p90/p99, queue wait and /health latency under load, checks
the targets, and writes JSON + PNG under bench-results/. Servers run on free 127.0.0.1 ports.

    python scripts/benchmark.py --quick                      # smoke run, < 2 min
    python scripts/benchmark.py                              # levels 1,5,16,32, ~6 min on a quiet 2-core machine
    python scripts/benchmark.py --levels 5 --systems server,raw --rounds 8
    python scripts/benchmark.py --structured --levels 32     # JSON-schema rows against unconstrained ones
    python scripts/benchmark.py --adapters 4 --levels 16     # rows spread over 4 LoRA adapters against base-only
    python scripts/benchmark.py --vs-llama                   # against llama.cpp's llama-server, same weights
                                                             # (scripts/build_llama_server.sh builds it first)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import shlex
import signal
import sys
from pathlib import Path

from ..common.client import warm_up
from ..common.machine import BUSY_OTHERS_CORES, busy_warning, machine_info, watch_cpu
from ..common.servers import REPO_ROOT
from ..common.text import format_targets
from . import adapters, peers, structured
from .load import LoadPlan, run_load
from .plot import plot_levels
from .raw import RawModel
from .records import BenchConfig, BenchReport, LevelSummary, LoadResult, RawResult, SystemName, summarise_load
from .report import check_targets, format_level, format_overview, summarise_level
from .servers import Servers

# 30 GPT-2 tokens.
DEFAULT_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 3)
SYSTEMS = ("server", "baseline", "raw")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke preset: levels 1,5, few requests (< 2 min)")
    p.add_argument("--model-tag", default="distilgpt2-random:latest", help="store model (default: %(default)s)")
    p.add_argument("--levels", type=_int_list, help="concurrency levels (default 1,5,16,32; --quick 1,5)")
    p.add_argument("--systems", type=_systems, default=list(SYSTEMS), help="subset of server,baseline,raw")
    p.add_argument("--rounds", type=int, help="server requests per level = rounds x concurrency (default 4)")
    p.add_argument("--baseline-rounds", type=int, help="the same for the slow baseline (default 2)")
    p.add_argument("--min-requests", type=int, help="at least this many requests per level (default 4)")
    p.add_argument("--fixed-limit", type=int, help="one admission limit for every level instead of the level")
    p.add_argument("--request-rate", type=float, help="Poisson arrivals per second (default: all at once)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stream", action="store_true", help="drive our server's /generate_stream: adds TTFT")
    p.add_argument(
        "--adapters",
        type=int,
        default=0,
        help="our server only: K random LoRA adapters, rows spread over them, against base-only rows",
    )
    p.add_argument(
        "--structured",
        action="store_true",
        help="our server only: every request constrained by a small JSON schema against the same load without",
    )
    p.add_argument(
        "--vs-llama",
        action="store_true",
        help="ours against llama.cpp's llama-server on the same weights, greedy and sampled, via /v1/completions "
        "(default levels 1,5,32)",
    )
    p.add_argument(
        "--llama-types",
        type=lambda text: peers.ensure_known([t.strip() for t in text.split(",") if t.strip()]),
        default=["f32", "f16", "q8_0"],
        help="--vs-llama: GGUF types llama-server serves (default: f32,f16,q8_0)",
    )
    p.add_argument("--llama-server", type=Path, help="--vs-llama: the llama-server binary (default: the build's)")
    p.add_argument("--llama-context", type=int, default=1024, help="--vs-llama: llama-server's context per slot")
    p.add_argument("--int8", action="store_true", help="--vs-llama: also ours with MODEL_QUANTIZATION=int8")
    p.add_argument("--long", action="store_true", help="--vs-llama: C=8, ~30 + 64 against ~512 + 256 tokens")
    p.add_argument(
        "--llama-own-samplers",
        action="store_true",
        help="--vs-llama: keep llama-server's default top_k 40 / min_p 0.05 when sampling (a narrower distribution)",
    )
    p.add_argument(
        "--repeats", type=int, default=2, help="--vs-llama: runs per system and mode (they take turns, ABBA order)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt of every request (default: 30 tokens)")
    p.add_argument("--raw-repeats", type=int, help="timed raw generate calls per batch size (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="short requests sent before each measured run")
    p.add_argument("--health-interval", type=float, default=0.1, help="seconds between /health probes")
    p.add_argument("--request-timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--level-timeout", type=float, default=900.0, help="per system and level, seconds")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench-results")
    p.add_argument("--name", help="file name stem of the results (default: bench-<time>)")
    args = p.parse_args(argv)
    if args.vs_llama and args.levels is None:
        args.levels = [1, 5, 32]
    preset = {"levels": [1, 5], "rounds": 2, "baseline_rounds": 1, "min_requests": 3, "raw_repeats": 1}
    full = {"levels": [1, 5, 16, 32], "rounds": 4, "baseline_rounds": 2, "min_requests": 4, "raw_repeats": 3}
    for key, value in (preset if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _systems(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or set(names) - set(SYSTEMS):
        raise argparse.ArgumentTypeError(f"choose from {','.join(SYSTEMS)}")
    return names


def request_count(args: argparse.Namespace, system: SystemName, concurrency: int) -> int:
    rounds = args.rounds if system == "server" else args.baseline_rounds
    return max(args.min_requests, rounds * concurrency)


def payload(args: argparse.Namespace) -> dict[str, object]:
    return {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "temperature": 0, "ignore_eos": True}


def measure_system(args: argparse.Namespace, servers: Servers, system: SystemName, concurrency: int) -> LoadResult:
    limit = args.fixed_limit or concurrency
    server = servers.get(system, limit)
    body = payload(args)
    stream = args.stream and system == "server"  # the baseline does not stream
    failed = asyncio.run(warm_up(server.base_url, servers.api_key, body, args.warmup, args.request_timeout, stream))
    if failed:
        print(f"  warning: {failed} of {args.warmup} warm-up requests failed", flush=True)
    plan = LoadPlan(
        base_url=server.base_url,
        api_key=servers.api_key,
        payload=body,
        requests=request_count(args, system, concurrency),
        concurrency=concurrency,
        request_rate=args.request_rate,
        request_timeout_s=args.request_timeout,
        run_timeout_s=args.level_timeout,
        health_interval_s=args.health_interval,
        stream=stream,
    )
    print(f"  {system}: {plan.requests} requests at concurrency {concurrency} ...", flush=True)
    with watch_cpu(server.pid) as cpu:
        outcome = asyncio.run(run_load(plan))
    result = summarise_load(
        system=system,
        concurrency=concurrency,
        limit=limit,
        request_rate=args.request_rate,
        max_new_tokens=args.max_new_tokens,
        samples=outcome.samples,
        health_ms=outcome.health_ms,
        health_failures=outcome.health_failures,
        duration_s=outcome.duration_s,
        cpu=cpu.result,
    )
    if note := server.exit_note():
        print(f"  warning: {note}", flush=True)
        result.notes.append(note)
    return result


def measure_level(args: argparse.Namespace, servers: Servers, raw_model: RawModel | None, conc: int) -> LevelSummary:
    print(f"\n== concurrency {conc} ==", flush=True)
    raw: RawResult | None = None
    if raw_model is not None:
        print(f"  raw generate: batch {conc} ...", flush=True)
        raw = raw_model.measure(args.prompt, conc, args.max_new_tokens, args.raw_repeats, args.level_timeout / 4)
    server = measure_system(args, servers, "server", conc) if "server" in args.systems else None
    baseline = measure_system(args, servers, "baseline", conc) if "baseline" in args.systems else None
    return summarise_level(conc, server, baseline, raw)


def build_config(args: argparse.Namespace, argv: list[str] | None) -> BenchConfig:
    import bentoml

    weights = bentoml.models.get(args.model_tag).info.labels.get("weights", "unknown")
    return BenchConfig(
        command=shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        model_tag=args.model_tag,
        model_weights=weights,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        levels=args.levels,
        requests={c: request_count(args, "server", c) for c in args.levels},
        systems=args.systems,
        fixed_limit=args.fixed_limit,
        request_rate=args.request_rate,
        health_interval_s=args.health_interval,
        raw_repeats=args.raw_repeats,
        warmup_requests=args.warmup,
    )


def prompt_tokens(levels: list[LevelSummary]) -> str:
    for level in levels:
        for run in (level.raw, level.server, level.baseline):
            if run is not None:
                return f"{run.prompt_tokens if isinstance(run, RawResult) else run.mean_prompt_tokens:.0f}"
    return "?"


def busiest_others(levels: list[LevelSummary]) -> float:
    """Most CPU (cores) other processes used during any measurement: how far to trust the numbers."""
    shares = [run.cpu.others_cores for lvl in levels for run in (lvl.server, lvl.baseline, lvl.raw) if run and run.cpu]
    return max(shares, default=0.0)


def plot_title(report: BenchReport) -> str:
    c, m = report.config, report.machine
    busy = busiest_others(report.levels)
    machine = f"{m.cpu_count} CPU cores"
    if busy > BUSY_OTHERS_CORES:
        machine += f", BUSY: others used up to {busy:.1f} cores"
    return (
        f"{c.model_tag} ({c.model_weights} weights), {prompt_tokens(report.levels)}-token prompts, "
        f"{c.max_new_tokens} new tokens, {machine}, torch {m.torch_version}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stem = args.name or f"bench-{dt.datetime.now():%Y%m%d-%H%M%S}"
    json_path, png_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.png"
    report = BenchReport(
        started_at=dt.datetime.now().isoformat(timespec="seconds"),
        config=build_config(args, argv),
        machine=machine_info(),
    )
    print(f"load average at start: {report.machine.load_avg_at_start}; results -> {json_path}", flush=True)
    # Servers run in their own sessions: turn SIGTERM into an exit so the `finally` below still stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.adapters:
        return adapters.main(args, secrets.token_urlsafe(16), args.out_dir / "logs" / stem, json_path)
    if args.vs_llama:
        return peers.main(args, secrets.token_urlsafe(16), args.out_dir / "logs" / stem, json_path, png_path)
    if args.structured:
        return structured.main(args, Servers(args, secrets.token_urlsafe(16), args.out_dir / "logs" / stem), json_path)
    raw_model = RawModel(args.model_tag) if "raw" in args.systems else None
    servers = Servers(args, secrets.token_urlsafe(16), args.out_dir / "logs" / stem)
    try:
        for conc in args.levels:
            level = measure_level(args, servers, raw_model, conc)
            report.levels.append(level)
            print("\n" + format_level(level), flush=True)
            _write(report, json_path)  # partial results survive an interrupted run
            if not args.fixed_limit:  # the next level needs new limits: free the CPU and memory now
                servers.close()
    finally:
        servers.close()
    report.targets = check_targets(report.levels)
    report.finished_at = dt.datetime.now().isoformat(timespec="seconds")
    _write(report, json_path)
    if report.levels:
        plot_levels(report.levels, png_path, plot_title(report))
    print("\n## Overview\n\n" + format_overview(report.levels))
    print("\n## Targets\n\n" + format_targets(report.targets))
    if warning := busy_warning(busiest_others(report.levels), report.machine.cpu_count):
        print("\n" + warning)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def _write(report: BenchReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2))
