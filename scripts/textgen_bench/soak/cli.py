"""Soak and fault run: 4x (limit + queue) looping clients against the real server for a minute, loopback only.

Each client sends a request, waits for its end, backs off on 429/503 as Retry-After says (capped, with
jitter) and repeats until the deadline. The mix: plain /generate, /generate_stream read to the end,
clients that leave mid-stream or give up on a /generate, and fault-injected requests (a prompt that
starts with the server's FAULT_INJECTION_MARKER fails inside the engine after a few tokens).

It checks that every request ends in a success or a clean 429/503 (none lost, no other error), that
injected faults fail only their own request, that all slots are free once the clients stop, that
/health stays under 50 ms p99 (probed from a process of its own), and that the server's RSS stays flat.
With `--flood-clients N` a second key (limited to `--flood-concurrency` requests in flight) floods the server
from N clients that ignore Retry-After; its requests must each be answered (200 or 429 `rate_limited`), and
the first key's traffic must lose nothing. With `--stalled-sockets N`, N raw sockets stall (idle, half a head,
half a body) the whole time, replaced as the server closes them; the server must close them only with a 408
or, idle ones, silently.
Prints a Markdown table, writes bench-results/soak-<name>.json, and exits 1 if a check fails.

    python scripts/soak.py                          # starts `bentoml serve` (distilgpt2-random), 60 s
    python scripts/soak.py --flood-clients 24 --stalled-sockets 300   # the issue-13 run: flood + slow clients
    python scripts/soak.py --duration 10 --no-faults
    python scripts/soak.py --url http://127.0.0.1:3000 --pid 1234 --api-key KEY --queue-timeout 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ..common.client import HealthProbe, warm_up
from ..common.machine import busy_warning, machine_info, tree_rss_bytes, watch_cpu
from ..common.records import Distribution
from ..common.servers import HOST, REPO_ROOT, batched_server_spec, ensure_random_model, free_port, serve
from ..common.text import format_targets
from .clients import SoakPlan, run_clients
from .mix import DEFAULT_MIX, parse_mix, without_faults
from .monitor import RssSampler, wait_slots_free
from .records import Attempt, SlotState, SoakConfig, SoakReport, StalledSummary, summarise_attempts
from .report import check_soak, format_soak
from .stalled import StalledSockets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="soak a server already running on a loopback address instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, for its RSS (else RSS is not checked)")
    p.add_argument("--api-key", default=os.environ.get("API_KEY"), help="with --url (default: $API_KEY)")
    p.add_argument("--model-tag", default="distilgpt2-random:latest", help="store model (default: %(default)s)")
    p.add_argument("--max-concurrency", type=int, default=5, help="server's MAX_CONCURRENCY (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64, help="server's MAX_QUEUE (default: %(default)s)")
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=10.0,
        help="server's QUEUE_TIMEOUT_S (default %(default)s: below the real 60 so a minute also sees 503s)",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    p.add_argument("--clients", type=int, help="looping clients (default: 4 x (limit + queue))")
    p.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX, help="e.g. generate=0.5,stream=0.3,fault=0.2")
    p.add_argument("--no-faults", action="store_true", help="no fault-injected requests (and no marker set)")
    p.add_argument("--fault-marker", default="__inject_fault__", help="FAULT_INJECTION_MARKER (default: %(default)s)")
    p.add_argument("--generation-timeout", type=float, default=60.0, help="client bound on top of the queue wait")
    p.add_argument("--health-interval", type=float, default=0.1, help="seconds between /health probes")
    p.add_argument("--drain-timeout", type=float, default=15.0, help="seconds for all slots to come free after")
    p.add_argument("--flood-clients", type=int, default=0, help="clients of a second key that flood (default: none)")
    p.add_argument(
        "--flood-concurrency", type=int, default=2, help="that key's concurrency limit (default: %(default)s)"
    )
    p.add_argument("--flood-api-key", help="with --url: the flooding key (its limits are the server's)")
    p.add_argument(
        "--flood-pause",
        type=float,
        default=0.2,
        help="a flooding client's pause after a refusal, whatever Retry-After says (default: %(default)s s)",
    )
    p.add_argument("--stalled-sockets", type=int, default=0, help="raw sockets kept stalled (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench-results")
    p.add_argument("--name", help="results file stem: soak-<name>.json (default: the time)")
    args = p.parse_args(argv)
    if args.no_faults:
        args.mix, args.fault_marker = without_faults(args.mix), None
    if args.url and not (urlsplit(args.url).hostname or "").startswith("127."):
        p.error("--url must be a loopback address (127.0.0.0/8)")
    if args.url and not args.api_key:
        p.error("--url needs --api-key (or $API_KEY)")
    if args.url and args.flood_clients and not args.flood_api_key:
        p.error("--flood-clients with --url needs --flood-api-key")
    return args


@dataclass(frozen=True)
class Target:
    base_url: str
    pid: int | None
    api_key: str
    flood_api_key: str | None = None


@contextlib.contextmanager
def target(args: argparse.Namespace, log: Path) -> Iterator[Target]:
    """A server of our own with the soak's settings (and a limited flooding key), or --url."""
    if args.url:
        yield Target(args.url.rstrip("/"), args.pid, args.api_key, args.flood_api_key)
        return
    ensure_random_model(args.model_tag)
    api_key, port = secrets.token_urlsafe(16), free_port()
    settings = {
        "MAX_QUEUE": str(args.max_queue),
        "QUEUE_TIMEOUT_S": str(args.queue_timeout),
        "FAULT_INJECTION_MARKER": args.fault_marker or "",
    }
    flood_key = secrets.token_urlsafe(16) if args.flood_clients else None
    if flood_key:  # the second key is API_KEYS' first: named api_keys.1
        settings |= {"API_KEYS": flood_key, "KEY_LIMITS": f"api_keys.1:concurrency={args.flood_concurrency}"}
    spec = batched_server_spec(port, args.model_tag, api_key, args.max_concurrency, args.queue_timeout, settings)
    print(f"starting bentoml serve ({args.model_tag}) on {HOST}:{port}; log: {log}", flush=True)
    with serve(spec, port, log) as server:
        yield Target(server.base_url, server.pid, api_key, flood_key)


def describe_server(base_url: str, api_key: str) -> tuple[dict[str, int], dict[str, str]]:
    """The admission bounds (from /health) and the model's tag and provenance (from /model-info)."""
    with httpx.Client(base_url=base_url, headers={"x-api-key": api_key}, timeout=10.0) as client:
        health = client.get("/health").raise_for_status().json()
        info = client.get("/model-info").raise_for_status().json()
    return health["generations"], info


async def load_phase(
    plan: SoakPlan, flood: SoakPlan | None, sampler: RssSampler | None
) -> tuple[list[Attempt], list[Attempt]]:
    """The clients' attempts, and the flooding key's (if it floods)."""
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop)) if sampler else None
    try:
        if flood is None:
            return await run_clients(plan), []
        attempts, flooded = await asyncio.gather(run_clients(plan), run_clients(flood))
        return attempts, flooded
    finally:
        stop.set()
        if sampling:
            await sampling


def flood_plan(plan: SoakPlan, args: argparse.Namespace, flood_key: str | None) -> SoakPlan | None:
    """The flooding key's clients: plain /generate, back `--flood-pause` after a refusal whatever Retry-After says
    (the load generator shares the machine: a faster flood measures its own CPU use more than the server's)."""
    if not (args.flood_clients and flood_key):
        return None
    mix = dict.fromkeys(plan.mix, 0.0) | {"generate": 1.0}
    pause = args.flood_pause
    return replace(
        plan, api_key=flood_key, clients=args.flood_clients, mix=mix, backoff_cap_s=pause, seed=plan.seed + 1
    )


def stalled_sockets(base_url: str, args: argparse.Namespace, api_key: str) -> StalledSockets | None:
    if not args.stalled_sockets:
        return None
    parts = urlsplit(base_url)
    return StalledSockets(parts.hostname or HOST, parts.port or 80, args.stalled_sockets, api_key)


def summarise_stalled(sockets: StalledSockets | None) -> StalledSummary | None:
    if sockets is None:
        return None
    s = sockets.stats
    return StalledSummary(
        opened=s.opened,
        connect_failures=s.connect_failures,
        peak_open=s.peak_open,
        answers=dict(sorted(s.answers.items())),
        longest_open_s=round(s.longest_open_s, 2),
    )


def soak(args: argparse.Namespace, server: Target, argv: list[str] | None) -> SoakReport:
    base_url, pid, api_key = server.base_url, server.pid, server.api_key
    load, info = describe_server(base_url, api_key)
    clients = args.clients or 4 * (load["limit"] + load["max_queue"])
    config = SoakConfig(
        command=shlex.join(["python", "scripts/soak.py", *(sys.argv[1:] if argv is None else argv)]),
        model_tag=info["tag"],
        model_source=info["source"],
        limit=load["limit"],
        max_queue=load["max_queue"],
        queue_timeout_s=args.queue_timeout,
        clients=clients,
        duration_s=args.duration,
        mix=dict(args.mix),
        fault_marker=args.fault_marker,
        request_timeout_s=args.queue_timeout + args.generation_timeout,
        health_interval_s=args.health_interval,
        flood_clients=args.flood_clients,
        flood_concurrency=args.flood_concurrency if args.flood_clients and not args.url else None,
        flood_pause_s=args.flood_pause if args.flood_clients else None,
        stalled_sockets=args.stalled_sockets,
    )
    plan = SoakPlan(
        base_url=base_url,
        api_key=api_key,
        clients=clients,
        duration_s=args.duration,
        mix=args.mix,
        fault_marker=args.fault_marker,
        request_timeout_s=config.request_timeout_s,
        seed=args.seed,
    )
    started_at = dt.datetime.now().isoformat(timespec="seconds")
    warm = {"prompt": "Warming up", "max_new_tokens": 8, "ignore_eos": True}
    for stream in (False, True):  # the first calls of each route pay one-off costs: not the steady state
        if failed := asyncio.run(warm_up(base_url, api_key, warm, load["limit"], plan.request_timeout_s, stream)):
            print(f"warning: {failed} warm-up requests failed", flush=True)
    sampler = RssSampler(pid) if pid else None
    rss_before = tree_rss_bytes(pid) if pid else 0
    print(f"{clients} clients for {args.duration:g} s against {base_url} ({info['tag']}, {info['source']}) ...")
    probe = HealthProbe(base_url, args.health_interval)
    flood, sockets = flood_plan(plan, args, server.flood_api_key), stalled_sockets(base_url, args, api_key)
    with contextlib.ExitStack() as stack:
        if sockets:  # stalling before the load starts, and all the time it runs
            stack.enter_context(sockets.running())
            sockets.wait_open()
        stack.enter_context(probe.running())
        cpu = stack.enter_context(watch_cpu(pid))
        attempts, flooded = asyncio.run(load_phase(plan, flood, sampler))
    freed_after_s, last = wait_slots_free(base_url, args.drain_timeout)
    health = probe.result()
    report = SoakReport(
        started_at=started_at,
        config=config,
        machine=machine_info(),
        counts=summarise_attempts(attempts),
        latency_s=Distribution.of([a.latency_s for a in attempts if a.outcome == "ok"]),
        health_ms=Distribution.of(health.latencies_ms),
        health_failures=health.failures,
        slots=SlotState(
            peak_running=health.peak_running, peak_waiting=health.peak_waiting, freed_after_s=freed_after_s, last=last
        ),
        memory=sampler.memory(rss_before, tree_rss_bytes(pid)) if sampler and pid else None,
        cpu=cpu.result,
        flood=summarise_attempts(flooded) if flood else None,
        stalled=summarise_stalled(sockets),
    )
    report.checks = check_soak(report)
    report.finished_at = dt.datetime.now().isoformat(timespec="seconds")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stem = f"soak-{args.name or dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    json_path = args.out_dir / f"{stem}.json"
    # The server runs in its own session: turn SIGTERM into an exit so `target` still stops it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with target(args, args.out_dir / "logs" / f"{stem}.log") as server:
        report = soak(args, server, argv)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(report.model_dump_json(indent=2))
    print("\n" + format_soak(report) + "\n\n" + format_targets(report.checks))
    if report.cpu and (warning := busy_warning(report.cpu.others_cores, report.machine.cpu_count)):
        print("\n" + warning)
    print(f"\n{'PASSED' if report.passed else 'FAILED'}; wrote {json_path}")
    return 0 if report.passed else 1
