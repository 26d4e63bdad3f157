#!/usr/bin/env python3
"""In-process decode throughput, side by side: raw `generate`, our BatchEngine, transformers' CB manager.

Why the service has its own engine: this measures what transformers' continuous-batching
manager would give on this machine. Same model, prompts and lengths for all three;
EOS is ignored so every request makes exactly --new-tokens tokens.

    python scripts/compare_engines.py --model-dir ../shared/models/distilgpt2-no-weights --batches 1 5 32
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig

from textgen.engine import BatchEngine, GenerationParams, Job, SamplingParams


def raw_generate(model, prompts: list[list[int]], new_tokens: int) -> float:
    ids = torch.tensor(prompts)
    start = time.perf_counter()
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return time.perf_counter() - start


def our_engine(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> float:
    engine = BatchEngine(model, tokenizer, max_batch_size=len(prompts))
    engine.start()
    left = threading.Semaphore(0)
    start = time.perf_counter()
    for prompt in prompts:
        engine.submit(
            Job(
                prompt,
                GenerationParams(new_tokens, SamplingParams(temperature=0.0), ignore_eos=True),
                on_done=lambda _: left.release(),
            )
        )
    for _ in prompts:
        left.acquire()
    elapsed = time.perf_counter() - start
    engine.stop()
    return elapsed


def transformers_cb(model_dir: Path, seed: int, prompts: list[list[int]], new_tokens: int) -> float:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), attn_implementation="paged|eager")
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    manager = model.eval().init_continuous_batching(
        generation_config=config,
        continuous_batching_config=ContinuousBatchingConfig(page_size=32, num_blocks=256, max_batch_tokens=256),
    )
    manager.start()

    async def run() -> float:
        finished = asyncio.Event()
        count = 0

        def on_result(output) -> None:
            nonlocal count
            if output.is_finished():
                count += 1
                if count == len(prompts):
                    finished.set()

        start = time.perf_counter()
        for i, prompt in enumerate(prompts):
            manager.register_result_handler(f"r{i}", on_result)
            manager.add_request(prompt, request_id=f"r{i}", max_new_tokens=new_tokens)
        await finished.wait()
        return time.perf_counter() - start

    try:
        return asyncio.run(run())
    finally:
        manager.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/models/distilgpt2-no-weights"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 5, 32])
    parser.add_argument("--prompt-tokens", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    print(
        f"DistilGPT-2 architecture, RANDOM weights; {torch.get_num_threads()} torch threads; "
        f"{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens; output tokens/s"
    )
    print(
        f"{'batch':>5} {'raw generate':>13} {'BatchEngine':>12} {'transformers CB':>16} {'ours/raw':>9} {'CB/raw':>7}"
    )
    for batch in args.batches:
        prompts = torch.randint(100, 50000, (batch, args.prompt_tokens), generator=torch.Generator().manual_seed(batch))
        prompts = prompts.tolist()
        with torch.inference_mode():
            raw_generate(model, prompts[:1], 4)  # warm-up
            rates = [
                batch * args.new_tokens / raw_generate(model, prompts, args.new_tokens),
                batch * args.new_tokens / our_engine(model, tokenizer, prompts, args.new_tokens),
                batch * args.new_tokens / transformers_cb(args.model_dir, args.seed, prompts, args.new_tokens),
            ]
        print(
            f"{batch:>5} {rates[0]:>13.1f} {rates[1]:>12.1f} {rates[2]:>16.1f} "
            f"{rates[1] / rates[0]:>9.2f} {rates[2] / rates[0]:>7.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
