"""`benchmark.py --structured`: what a JSON-schema constraint on every row costs, side by side in one run.

One server per level (MAX_CONCURRENCY = MAX_BATCH_SIZE = the level). At each level the same load runs
unconstrained and with every request constrained by a small JSON schema, greedy and sampled (temperature 1,
no seed: each request draws its own), interleaved over `--rounds`. A constrained row may finish early (its
JSON is complete), so the number of tokens differs; tokens per second is what users compare. The target
(issue 11): constrained at most 15 % fewer tokens/s than unconstrained at c=32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .paired import Variant, VariantResult, ratio_table, run_variants
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
TARGET = 0.85


def variants(args: argparse.Namespace) -> list[Variant]:
    base = {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    return [
        Variant(f"{sampling}, {'json_schema' if schema else 'unconstrained'}", {**base, "temperature": t, **schema})
        for sampling, t in (("greedy", 0.0), ("T=1", 1.0))
        for schema in ({}, {"json_schema": SMALL_SCHEMA})
    ]


def main(args: argparse.Namespace, servers: Servers, json_path: Path) -> int:
    results: list[VariantResult] = []
    try:
        for conc in args.levels:
            print(f"\n== structured output, concurrency {conc} ==", flush=True)
            server = servers.get("server", conc)
            requests = max(args.min_requests, args.rounds * conc)
            results += run_variants(server, servers.api_key, variants(args), conc, requests, args.rounds, args.warmup)
            servers.close()
    finally:
        servers.close()
    table = ratio_table(list(zip(results[::2], results[1::2], strict=True)), TARGET, ("unconstrained", "constrained"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"schema": SMALL_SCHEMA, "runs": [r.model_dump() for r in results]}, indent=2))
    print("\n## Structured output (medians over rounds)\n\n" + table + f"\n\nwrote {json_path}")
    return 0
