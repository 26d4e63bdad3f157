"""`benchmark.py --vs-llama`: our server against llama.cpp's llama-server on the same weights, in one run.

Every system gets the same OpenAI `/v1/completions` requests (the benchmark prompt, `max_tokens`, `ignore_eos`),
closed loop at each concurrency C, greedy and sampled (temperature 1, top_p 0.95). A level's servers all run at
once; the systems, and within each the two modes, take turns `--repeats` times in ABBA order; the median counts.
Our server runs with MAX_CONCURRENCY = MAX_BATCH_SIZE = C, and llama-server with `-np C -t <cores>` and the model's
full context per slot. Before measuring, one greedy request to each system: llama-server f32 must write our text
token for token (same weights, same work); the other GGUF types are compared for information. llama-server adds
default samplers of its own (top_k 40, min_p 0.05) to what an OpenAI request sets; they are switched off so that
both draw from the same distribution. Its prompt cache is switched off too (`cache_prompt: false`): every request
here has the same prompt, which it would otherwise reuse.

    python scripts/benchmark.py --vs-llama                      # C = 1, 5, 32; llama f32, f16, q8_0
    python scripts/benchmark.py --vs-llama --int8               # and ours with MODEL_QUANTIZATION=int8
    python scripts/benchmark.py --vs-llama --long               # C = 8: ~100 against ~750 tokens per sequence
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from ..common.client import warm_up
from ..common.llama import GGUF_TYPES, LlamaSystem, llama_systems
from ..common.records import TargetCheck
from ..common.servers import RunningServer, batched_server_spec, free_port, serve
from ..common.text import format_targets
from .load import LoadPlan, run_load

ROUTE = "/v1/completions"
MODES: dict[str, dict[str, float]] = {"greedy": {"temperature": 0.0}, "sampled": {"temperature": 1.0, "top_p": 0.95}}
LLAMA_SAMPLING = {"top_k": 0, "min_p": 0.0}  # llama-server's own extra samplers (top_k 40, min_p 0.05), off
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 51)  # ~512 GPT-2 tokens
LONG_LEVEL, LONG_NEW_TOKENS = 8, 256
OURS, OURS_INT8 = "ours", "ours-int8"
MIN_REQUESTS = 16


class Case(BaseModel):
    """One request shape: the prompt, the tokens to generate and the concurrencies to run it at."""

    label: str
    prompt: str
    max_tokens: int
    levels: list[int]


class PeerRun(BaseModel):
    system: str
    case: str
    concurrency: int
    mode: str
    tokens_per_s: list[float]  # one per repeat
    failed: int
    prompt_tokens: float
    health_p99_ms: float | None

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s) if self.tokens_per_s else 0.0


class GreedyCheck(BaseModel):
    system: str
    case: str
    concurrency: int
    equal: bool
    first_difference: int | None  # character offset of the first difference
    ours: str
    theirs: str


class PeersReport(BaseModel):
    model_tag: str
    cases: list[Case]
    systems: list[str]
    skipped: dict[str, str]
    checks: list[GreedyCheck] = []
    runs: list[PeerRun] = []
    targets: list[TargetCheck] = []


def request_body(prompt: str, max_tokens: int, mode: str, system: str, llama_own: bool = False) -> dict[str, Any]:
    """The same OpenAI request for every system; llama-server's own default samplers are turned off unless
    `llama_own` (then it samples from its narrower default distribution, as a user who sets nothing else gets)."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, **MODES[mode]}
    if system.startswith("llama"):
        # Every request of the benchmark has the same prompt, which llama-server would take from a slot's cache
        # instead of computing it; users' prompts differ, and ours has no such cache: both compute every prompt.
        body["cache_prompt"] = False
        if mode != "greedy" and not llama_own:
            body.update(LLAMA_SAMPLING)
    return body


def first_difference(a: str, b: str) -> int | None:
    """Offset of the first character where the texts differ (None when equal)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def cases(args: argparse.Namespace) -> list[Case]:
    short = Case(label="short", prompt=args.prompt, max_tokens=args.max_new_tokens, levels=args.levels)
    if not args.long:
        return [short]
    short.levels = [LONG_LEVEL]
    return [short, Case(label="long", prompt=LONG_PROMPT, max_tokens=LONG_NEW_TOKENS, levels=[LONG_LEVEL])]


@contextlib.contextmanager
def start(
    system: str, llama: dict[str, LlamaSystem], args: argparse.Namespace, api_key: str, level: int, log_dir: Path
) -> Iterator[RunningServer]:
    port = free_port()
    if system in llama:
        spec = llama[system].spec(port, level, context_per_slot=args.llama_context, threads=os.cpu_count() or 1)
    else:
        extra = {"MODEL_QUANTIZATION": "int8"} if system == OURS_INT8 else {}
        spec = batched_server_spec(port, args.model_tag, api_key, level, args.request_timeout, extra)
    print(f"  starting {system} (C={level}) on port {port} ...", flush=True)
    with serve(spec, port, log_dir / f"{system}-c{level}.log") as server:
        yield server


def greedy_text(server: RunningServer, api_key: str, case: Case, system: str) -> str:
    body = request_body(case.prompt, case.max_tokens, "greedy", system)
    response = httpx.post(server.base_url + ROUTE, json=body, headers={"x-api-key": api_key}, timeout=300)
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


def new_runs(case: Case, system: str, level: int) -> dict[str, PeerRun]:
    return {
        mode: PeerRun(
            system=system,
            case=case.label,
            concurrency=level,
            mode=mode,
            tokens_per_s=[],
            failed=0,
            prompt_tokens=0.0,
            health_p99_ms=None,
        )
        for mode in MODES
    }


def measure(servers: dict[str, RunningServer], api_key: str, case: Case, level: int, args: argparse.Namespace):
    """Every system at one level, the systems and, within each, the modes taking turns in ABBA order."""
    runs = {system: new_runs(case, system, level) for system in servers}
    for system, server in servers.items():
        for mode in MODES:
            body = request_body(case.prompt, case.max_tokens, mode, system, args.llama_own_samplers)
            asyncio.run(warm_up(server.base_url, api_key, body, args.warmup, args.request_timeout, route=ROUTE))
    # At least MIN_REQUESTS even at C=1: a run of 4 requests (under 3 s) measured 0.6x or 1.1x on different runs.
    requests = max(args.min_requests, args.rounds * level, MIN_REQUESTS)
    health: dict[str, list[float]] = {system: [] for system in servers}
    # Systems and modes take turns in ABBA order (ours then llama's, llama's then ours, ...; greedy first, then
    # sampled first, ...): a machine that drifts over the run (speeds here wandered by 10-20 % over minutes)
    # then weighs on every system and mode alike, not on whichever ran later.
    for repeat in range(args.repeats):
        for system in abba(list(servers), repeat):
            for mode in abba(list(MODES), repeat):
                body = request_body(case.prompt, case.max_tokens, mode, system, args.llama_own_samplers)
                plan = LoadPlan(
                    servers[system].base_url,
                    api_key,
                    body,
                    requests,
                    level,
                    request_timeout_s=args.request_timeout,
                    run_timeout_s=args.level_timeout,
                    health_interval_s=args.health_interval,
                    route=ROUTE,
                )
                outcome = asyncio.run(run_load(plan))
                done = [s for s in outcome.samples if s.ok]
                run = runs[system][mode]
                run.tokens_per_s.append(sum(s.completion_tokens for s in done) / outcome.duration_s)
                run.failed += len(outcome.samples) - len(done)
                run.prompt_tokens = statistics.mean(s.prompt_tokens for s in done) if done else 0.0
                health[system] += outcome.health_ms
                print(f"  {system} C={level} {mode}: {run.tokens_per_s[-1]:.1f} tok/s", flush=True)
    for system, by_mode in runs.items():
        p99 = statistics.quantiles(health[system], n=100)[98] if len(health[system]) >= 2 else None
        for run in by_mode.values():
            run.health_p99_ms = p99
    return [run for by_mode in runs.values() for run in by_mode.values()]


def abba(items: list[str], repeat: int) -> list[str]:
    """The items in order on even repeats, reversed on odd ones."""
    return items if repeat % 2 == 0 else items[::-1]


def systems_of(args: argparse.Namespace) -> list[str]:
    return [OURS, *([OURS_INT8] if args.int8 else []), *(f"llama-{t}" for t in args.llama_types)]


def main(args: argparse.Namespace, api_key: str, log_dir: Path, json_path: Path, png_path: Path) -> int:
    from .peers_report import check_targets, format_report, plot_report

    llama = {s.name: s for s in llama_systems(args.model_tag, args.llama_types, args.llama_server)}
    skipped = {name: why for name, system in llama.items() if (why := system.missing(args.model_tag))}
    report = PeersReport(model_tag=args.model_tag, cases=cases(args), systems=systems_of(args), skipped=skipped)
    for name, why in skipped.items():
        print(f"  skipping {name}: {why}", flush=True)
    for case in report.cases:
        for level in case.levels:
            print(f"\n== {case.label}: {case.max_tokens} new tokens, concurrency {level} ==", flush=True)
            systems = [s for s in report.systems if s not in skipped]
            # All of a level's servers run at once (the idle ones cost nothing), so their runs can take turns.
            with contextlib.ExitStack() as stack:
                servers = {s: stack.enter_context(start(s, llama, args, api_key, level, log_dir)) for s in systems}
                texts = {system: greedy_text(server, api_key, case, system) for system, server in servers.items()}
                reference = texts.get(OURS)
                for system, text in texts.items():
                    if system == OURS or reference is None:
                        continue
                    check = GreedyCheck(
                        system=system,
                        case=case.label,
                        concurrency=level,
                        equal=text == reference,
                        first_difference=first_difference(reference, text),
                        ours=reference,
                        theirs=text,
                    )
                    report.checks.append(check)
                    print(
                        f"  greedy text of {system} {'equals' if check.equal else 'DIFFERS from'} ours"
                        + ("" if check.equal else f" (from character {check.first_difference})"),
                        flush=True,
                    )
                report.runs += measure(servers, api_key, case, level, args)
            json_path.write_text(report.model_dump_json(indent=2))  # partial results survive an interrupt
    report.targets = check_targets(report)
    json_path.write_text(report.model_dump_json(indent=2))
    plot_report(report, png_path)
    print("\n" + format_report(report) + "\n\n## Targets\n\n" + format_targets(report.targets))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def ensure_known(types: list[str]) -> list[str]:
    unknown = set(types) - set(GGUF_TYPES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown GGUF type(s) {sorted(unknown)}; choose from {','.join(GGUF_TYPES)}")
    return types
