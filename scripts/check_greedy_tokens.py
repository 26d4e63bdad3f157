"""Does the engine's fast path keep transformers' greedy tokens on a stored model? Loads it as the server does
(packed and padded layers, the written-out decoding step, the greedy screen where they apply), generates greedily
for a few prompts in one batch and for the last one alone, and compares every token with transformers' `generate`
on the plain float32 model. Exits 1 on any difference.

    python scripts/check_greedy_tokens.py --model-tag smollm2-135m-instruct:latest   # after scripts/import_smollm2.sh
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import bentoml
import torch
from transformers import AutoModelForCausalLM

from textgen.engine import BatchEngine, GenerationParams, GenerationResult, Job, SamplingParams
from textgen.serving.model_store import load_model

PROMPTS = [
    "The capital of France is",
    "Question: What is 2 + 3?\nAnswer:",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
]


def run(engine: BatchEngine, jobs: list[Job]) -> list[GenerationResult]:
    results: list[GenerationResult | BaseException | None] = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]
    for row, job in enumerate(jobs):
        job.on_done = lambda outcome, row=row: (results.__setitem__(row, outcome), done[row].set())
        engine.submit(job)
    for event in done:
        event.wait(600)
    for outcome in results:
        if not isinstance(outcome, GenerationResult):
            raise RuntimeError(f"a generation failed: {outcome!r}")
    return results  # type: ignore[return-value]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", default="distilgpt2-random:latest")
    p.add_argument("--new-tokens", type=int, default=48)
    args = p.parse_args()
    stored = bentoml.models.get(args.model_tag)
    loaded = load_model(stored, "cpu", "float32")
    tokenizer = loaded.tokenizer
    engine = BatchEngine(loaded.model, tokenizer, max_batch_size=len(PROMPTS), greedy_screen=loaded.greedy_screen)
    params = GenerationParams(args.new_tokens, SamplingParams(temperature=0.0), ignore_eos=True)
    engine.start()
    try:
        together = run(engine, [Job(tokenizer(prompt).input_ids, params) for prompt in PROMPTS])
        alone = run(engine, [Job(tokenizer(PROMPTS[-1]).input_ids, params)])
    finally:
        engine.stop()
    plain = AutoModelForCausalLM.from_pretrained(stored.path, dtype=torch.float32).eval()
    differ = 0
    print(f"{args.model_tag}: decoding steps: {engine.decoder.name}, greedy screen: {loaded.greedy_screen is not None}")
    with torch.inference_mode():
        for prompt, result in zip(PROMPTS, together, strict=True):
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            out = plain.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new_tokens,
                do_sample=False,
                eos_token_id=None,
            )
            same = result.token_ids == out[0, ids.shape[1] :].tolist()
            differ += not same
            print(f"  {'same' if same else 'DIFFERENT'}: {prompt!r} -> {tokenizer.decode(result.token_ids)[:50]!r}")
    same_alone = alone[0].token_ids == together[-1].token_ids
    differ += not same_alone
    print(f"  {'same' if same_alone else 'DIFFERENT'} alone as in the batch: {PROMPTS[-1]!r}")
    return 1 if differ else 0


if __name__ == "__main__":
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    sys.exit(main())
