"""`benchmark.py --adapters K`: throughput with the rows spread over K LoRA adapters against base-only rows.

Makes K random LoRA adapters (rank 8 on attention and MLP layers: `c_attn`, `c_fc`, `mlp.c_proj`) of the
benchmarked model, imports them with `scripts/import_model.py` (as a user would), serves them with
LORA_ADAPTERS, and runs the same load at each level twice per round: every request on the base model, and
request i on adapter i mod K. The target (issue 12): at c=16 over 4 adapters, at least 70 % of base-only
throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import bentoml
from transformers import AutoModelForCausalLM

from ..common.lora import make_lora_adapter
from ..common.servers import REPO_ROOT, batched_server_spec, free_port, serve
from .paired import Variant, VariantResult, ratio_table, run_variants

TARGET = 0.70
TARGET_MODULES = ("c_attn", "c_fc", "mlp.c_proj")


def import_adapters(model_tag: str, count: int) -> list[str]:
    """K adapters of the store model `model_tag`, in the store as bench-lora-0..K-1; their store names."""
    stored = bentoml.models.get(model_tag)
    base = AutoModelForCausalLM.from_pretrained(stored.path)
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            name = f"bench-lora-{i}"
            folder = make_lora_adapter(base, Path(tmp) / name, i, 8, TARGET_MODULES, base_name=stored.tag.name)
            command = [sys.executable, "scripts/import_model.py", "--source", str(folder), "--name", name, "--force"]
            subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
            names.append(name)
    return names


def main(args: argparse.Namespace, api_key: str, log_dir: Path, json_path: Path) -> int:
    names = import_adapters(args.model_tag, args.adapters)
    base = {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    results: list[VariantResult] = []
    for conc in args.levels:
        print(f"\n== {args.adapters} LoRA adapters, concurrency {conc} ==", flush=True)
        env = {"LORA_ADAPTERS": ",".join(names), "MAX_LORAS": str(len(names))}
        port = free_port()
        spec = batched_server_spec(port, args.model_tag, api_key, conc, args.request_timeout, extra_env=env)
        requests = max(args.min_requests, args.rounds * conc)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(serve(spec, port, log_dir / f"adapters-limit{conc}.log"))
            for sampling, temperature in (("greedy", 0.0), ("T=1", 1.0)):
                payload = {**base, "temperature": temperature}
                spread = tuple({"adapter": name} for name in names)
                variants = [
                    Variant(f"{sampling}, base only", payload),
                    Variant(f"{sampling}, {len(names)} adapters", payload, spread),
                ]
                results += run_variants(server, api_key, variants, conc, requests, args.rounds, args.warmup)
    table = ratio_table(list(zip(results[::2], results[1::2], strict=True)), TARGET, ("base", "adapters"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"adapters": names, "runs": [r.model_dump() for r in results]}, indent=2))
    print("\n## LoRA adapters (medians over rounds)\n\n" + table + f"\n\nwrote {json_path}")
    return 0
