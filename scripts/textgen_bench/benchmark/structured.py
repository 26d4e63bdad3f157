"""`benchmark.py --structured`: what a JSON-schema constraint on every row costs, side by side in one run.

One server per level (MAX_CONCURRENCY = MAX_BATCH_SIZE = the level). At each level the same load runs
unconstrained and with every request constrained by a small JSON schema, greedy and sampled (temperature 1,
no seed: each request draws its own), the runs interleaved over `--rounds` so drift on a busy machine hits both alike.
Throughput is completion tokens over wall time. A constrained row may finish early (the schema is complete),
so the number of tokens differs; tokens per second is what users compare. The target (issue 11): constrained
at most 15 % fewer tokens/s than unconstrained at c=32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..common.client import warm_up
from .load import LoadPlan, run_load
from .servers import Servers

# A small schema like the ones users send: an object with a few typed, bounded fields.
SMALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
MAX_SLOWDOWN = 0.15


class StructuredRun(BaseModel):
    concurrency: int
    sampling: str  # "greedy" or "T=1"
    constrained: bool
    tokens_per_s: list[float]  # one per round
    failed: int

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)


def body(args: argparse.Namespace, constrained: bool, sampled: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    payload["temperature"] = 1.0 if sampled else 0.0
    if constrained:
        payload["json_schema"] = SMALL_SCHEMA
    return payload


def measure(args: argparse.Namespace, servers: Servers, concurrency: int) -> list[StructuredRun]:
    server = servers.get("server", concurrency)
    runs = {
        (sampled, constrained): StructuredRun(
            concurrency=concurrency,
            sampling="T=1" if sampled else "greedy",
            constrained=constrained,
            tokens_per_s=[],
            failed=0,
        )
        for sampled in (False, True)
        for constrained in (False, True)
    }
    requests = max(args.min_requests, args.rounds * concurrency)
    for sampled, constrained in runs:
        asyncio.run(warm_up(server.base_url, servers.api_key, body(args, constrained, sampled), args.warmup, 120))
    for round_ in range(args.rounds):
        for (sampled, constrained), run in runs.items():
            payload = body(args, constrained, sampled)
            plan = LoadPlan(server.base_url, servers.api_key, payload, requests, concurrency, seed=round_)
            outcome = asyncio.run(run_load(plan))
            tokens = sum(s.completion_tokens for s in outcome.samples if s.ok)
            run.tokens_per_s.append(tokens / outcome.duration_s)
            run.failed += sum(1 for s in outcome.samples if not s.ok)
            label = f"{run.sampling}, {'json_schema' if constrained else 'unconstrained'}"
            print(f"  c={concurrency} {label}: {run.tokens_per_s[-1]:.1f} tok/s", flush=True)
    return list(runs.values())


def report(runs: list[StructuredRun]) -> str:
    lines = [
        "| c | sampling | unconstrained tok/s | json_schema tok/s | ratio | target (>= 0.85) |",
        "|---|---|---|---|---|---|",
    ]
    by_key = {(r.concurrency, r.sampling, r.constrained): r for r in runs}
    for (conc, sampling, constrained), run in by_key.items():
        if constrained:
            continue
        other = by_key[(conc, sampling, True)]
        ratio = other.median / run.median if run.median else 0.0
        verdict = "met" if ratio >= 1 - MAX_SLOWDOWN else "MISSED"
        lines.append(f"| {conc} | {sampling} | {run.median:.1f} | {other.median:.1f} | {ratio:.2f} | {verdict} |")
    return "\n".join(lines)


def main(args: argparse.Namespace, servers: Servers, json_path: Path) -> int:
    runs: list[StructuredRun] = []
    try:
        for conc in args.levels:
            print(f"\n== structured output, concurrency {conc} ==", flush=True)
            runs.extend(measure(args, servers, conc))
            servers.close()
    finally:
        servers.close()
    table = report(runs)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"schema": SMALL_SCHEMA, "runs": [r.model_dump() for r in runs]}, indent=2))
    print("\n## Structured output (medians over rounds)\n\n" + table + f"\n\nwrote {json_path}")
    return 0
