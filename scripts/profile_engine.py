"""The engine alone, in this process: tokens/s of BatchEngine at a few concurrencies, greedy and sampled.

No HTTP, no admission: what one decoding loop costs, so each engine lever can be measured on its own
(scripts/benchmark.py measures the whole server against llama-server). Closed loop: C jobs in flight, a
finished job is replaced at once, until `rounds x C` jobs are done. Variants load the model differently:

    python scripts/profile_engine.py                                   # packed (the default load), C=1,5,32
    python scripts/profile_engine.py --variants packed,unpacked --levels 5
    python scripts/profile_engine.py --variants unpadded,packed --levels 1,2,5  # products of a few rows padded
    python scripts/profile_engine.py --variants unfused,packed                 # the MLP's activation in its product
    python scripts/profile_engine.py --variants forward,unscreened --levels 1,5  # written-out decoding steps
    python scripts/profile_engine.py --variants unscreened,packed --modes greedy # greedy tokens from a bf16 screen
    python scripts/profile_engine.py --prompt-tokens 512 --max-new-tokens 256 --levels 8
    python scripts/profile_engine.py --levels 32 --rounds 2      # and the time spent selecting tokens, per mode

The default model is the random-weight DistilGPT-2 (`import_model.py --random-weights`): the same cost as the
real one, meaningless text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass

import bentoml
import torch

from textgen.engine import BatchEngine, GenerationParams, Job, SamplingParams
from textgen.engine.decoders import TransformersDecoder
from textgen.serving.model_store import LoadedModel, load_model

VARIANTS: dict[str, dict[str, bool]] = {  # load_model's options: everything on, or one lever off
    "packed": {},
    "unpadded": {"pad_rows": False},
    "unfused": {"fuse_activations": False},
    "unpacked": {"pack": False},
    # Decoding steps through the model's own forward pass, not the written-out decoder (and so, for greedy rows,
    # without the greedy screen too: it needs the written-out step's hidden states). Compare it with `unscreened`.
    "forward": {},
    "unscreened": {"screen_greedy": False},  # greedy tokens from the LM head's full float32 product
}
MODES = {
    "greedy": SamplingParams(temperature=0.0),
    "sampled": SamplingParams(temperature=1.0, top_p=0.95),
}


@dataclass
class Run:
    variant: str
    concurrency: int
    mode: str
    jobs: int
    tokens: int
    seconds: float
    selecting_s: float = 0.0  # of `seconds`, the engine thread's time in token selection

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", default="distilgpt2-random:latest")
    p.add_argument("--variants", default="packed", help=f"comma list of {','.join(VARIANTS)} (how linears run)")
    p.add_argument("--levels", default="1,5,32", help="concurrencies")
    p.add_argument("--modes", default="greedy,sampled", help=f"comma list of {','.join(MODES)}")
    p.add_argument("--prompt-tokens", type=int, default=30)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="jobs per level = rounds x concurrency")
    p.add_argument("--json", help="also write the runs to this file")
    return p.parse_args()


def closed_loop(engine: BatchEngine, prompt: list[int], params: GenerationParams, concurrency: int, jobs: int) -> Run:
    lock, done = threading.Lock(), threading.Event()
    counts = {"submitted": 0, "finished": 0, "tokens": 0}

    def submit() -> None:
        counts["submitted"] += 1
        engine.submit(Job(prompt, params, on_done=finished))

    def finished(outcome: object) -> None:
        if isinstance(outcome, BaseException):
            raise outcome
        with lock:
            counts["finished"] += 1
            counts["tokens"] += len(outcome.token_ids)  # type: ignore[attr-defined]
            if counts["submitted"] < jobs:
                submit()
            elif counts["finished"] == jobs:
                done.set()

    start = time.perf_counter()
    with lock:
        for _ in range(min(concurrency, jobs)):
            submit()
    done.wait()
    return Run("", concurrency, "", jobs, counts["tokens"], time.perf_counter() - start)


def time_selection(engine: BatchEngine) -> list[float]:
    """Wrap the engine's token selection (sampling or argmax, per step) with a timer; returns its running total,
    which the caller resets. Whole-run tok/s moves by 10 % between runs on a noisy machine; the selection's own time
    is what a sampler change changes."""
    total = [0.0]
    select = engine._select

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return select(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started

    engine._select = timed  # type: ignore[method-assign]
    return total


def measure(loaded: LoadedModel, variant: str, args: argparse.Namespace) -> list[Run]:
    levels = [int(v) for v in args.levels.split(",")]
    decoder = TransformersDecoder(loaded.model) if variant == "forward" else None
    engine = BatchEngine(
        loaded.model, loaded.tokenizer, max_batch_size=max(levels), decoder=decoder, greedy_screen=loaded.greedy_screen
    )
    selecting = time_selection(engine)
    engine.start()
    prompt = torch.randint(0, len(loaded.tokenizer), (args.prompt_tokens,), generator=torch.Generator().manual_seed(0))
    runs = []
    try:
        for concurrency in levels:
            for mode in args.modes.split(","):
                params = GenerationParams(args.max_new_tokens, MODES[mode], ignore_eos=True)
                closed_loop(engine, prompt.tolist(), params, concurrency, concurrency)  # warm-up
                selecting[0] = 0.0
                run = closed_loop(engine, prompt.tolist(), params, concurrency, args.rounds * concurrency)
                run.variant, run.mode, run.selecting_s = variant, mode, selecting[0]
                print(
                    f"{variant:9} C={concurrency:<3} {mode:8} {run.tokens_per_s:7.1f} tok/s, "
                    f"{run.selecting_s:.2f} of {run.seconds:.2f} s selecting tokens",
                    flush=True,
                )
                runs.append(run)
    finally:
        engine.stop()
    return runs


def main() -> int:
    args = parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model_tag}", flush=True)
    stored = bentoml.models.get(args.model_tag)
    runs: list[Run] = []
    for variant in args.variants.split(","):
        runs += measure(load_model(stored, "cpu", "float32", **VARIANTS[variant]), variant, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in runs], f, indent=2)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    sys.exit(main())
