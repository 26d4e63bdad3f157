"""The ceiling: the model's own batched `generate` in this process, no server, same lengths."""

from __future__ import annotations

import time
from typing import Any

from ..common.machine import watch_cpu
from .records import RawResult


class RawModel:
    """The store model loaded here once, measured at one batch size at a time."""

    def __init__(self, model_tag: str) -> None:
        from textgen.serving.model_store import find_model, load_model

        loaded = load_model(find_model(model_tag))
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        tok = self.tokenizer
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def measure(self, prompt: str, batch_size: int, new_tokens: int, repeats: int, budget_s: float) -> RawResult:
        """Greedy `generate` of exactly `new_tokens` for `batch_size` copies of `prompt`.

        A short warm-up call first pays one-off costs (the first `generate` is several times slower).
        At least one timed repeat, then more while within `budget_s`.
        """
        import torch

        inputs = self.tokenizer([prompt] * batch_size, return_tensors="pt").to(self.model.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        seconds: list[float] = []
        with torch.inference_mode():
            self._generate(inputs, min(8, new_tokens))
            deadline = time.monotonic() + budget_s
            with watch_cpu() as cpu:
                while len(seconds) < repeats and (not seconds or time.monotonic() < deadline):
                    started = time.perf_counter()
                    made = self._generate(inputs, new_tokens) - prompt_tokens
                    seconds.append(time.perf_counter() - started)
                    if made != new_tokens:
                        raise RuntimeError(f"generate made {made} tokens, not {new_tokens}")
        return RawResult(
            batch_size=batch_size,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            repeats=len(seconds),
            seconds=seconds,
            output_tokens_per_s=batch_size * new_tokens * len(seconds) / sum(seconds),
            cpu=cpu.result,
        )

    def _generate(self, inputs: Any, new_tokens: int) -> int:
        """EOS is masked until `new_tokens` (min_new_tokens), as `ignore_eos` does in the server."""
        out = self.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
        )
        return int(out.shape[1])
