"""The greedy screen on a stored model: does it pick the float32 argmax, how many candidates it recomputes, and what
one row's argmax costs through it and through the float32 LM head (timed in turns, in this process).

    python scripts/measure_greedy_screen.py                                           # random-weight DistilGPT-2
    python scripts/measure_greedy_screen.py --model-tag smollm2-135m-instruct:latest  # real weights (import_smollm2.sh)

The hidden states are the model's own over a fixed English text (the perplexity text, up to --positions tokens).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from pathlib import Path

import bentoml
import torch

from textgen.engine.greedy_screen import GreedyScreen
from textgen.engine.timing import time_in_turns
from textgen.serving.model_store import load_model

TEXT = Path(__file__).parent / "textgen_bench/data/perplexity.txt"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", default="distilgpt2-random:latest")
    p.add_argument("--positions", type=int, default=512)
    p.add_argument("--rounds", type=int, default=50, help="timed argmaxes of one row, each way")
    args = p.parse_args()
    loaded = load_model(bentoml.models.get(args.model_tag), "cpu", "float32")
    model, head = loaded.model, loaded.model.get_output_embeddings()
    screen = GreedyScreen(head)  # whether or not load_model kept it: this measures it
    with torch.inference_mode():
        ids = loaded.tokenizer(TEXT.read_text(), return_tensors="pt").input_ids[:, : args.positions]
        hidden = model.base_model(input_ids=ids).last_hidden_state[0]
        agree = torch.equal(screen(hidden), head(hidden).argmax(dim=-1))
        rows, _ = screen.candidates(hidden.float())
        counts = torch.bincount(rows, minlength=len(hidden)).float()
    # One row at a time, a new position each round, the same position for both ways within a round.
    walks = {name: itertools.cycle(hidden.split(1)) for name in ("float32", "screen")}
    times = time_in_turns(
        {
            "float32": lambda: head(next(walks["float32"])).argmax(dim=-1),
            "screen": lambda: screen(next(walks["screen"])),
        },
        args.rounds,
    )
    print(f"{args.model_tag}: {len(hidden)} positions of {TEXT.name}")
    print(f"  screen picks the float32 argmax at every position: {agree}")
    print(
        f"  candidates a position: mean {counts.mean():.2f}, median {counts.median():.0f}, "
        f"p90 {counts.quantile(0.9):.0f}, max {counts.max():.0f} (of {head.out_features} tokens)"
    )
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"  one row's argmax (median of {args.rounds}): float32 {ms['float32']:.2f} ms, screen {ms['screen']:.2f} ms")
    return 0 if agree else 1


if __name__ == "__main__":
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    sys.exit(main())
