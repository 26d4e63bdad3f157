"""When a generation is done: end of sequence, a stop string in its text, or its token budget."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .types import FinishReason, GenerationParams


class StopRules:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def check(
        self, params: GenerationParams, output_ids: list[int], grammar_done: bool = False
    ) -> tuple[FinishReason, str] | None:
        """The finish reason and final text once `output_ids` (the last one just picked) end the generation.

        A stop string ends the text before it, and is cut even when it spans tokens. `grammar_done`: the
        output's grammar is complete and can take nothing more.
        """
        reason: FinishReason | None = None
        text: str | None = None
        if output_ids[-1] == self.eos_token_id and not params.ignore_eos:
            reason = "eos"
        elif grammar_done:
            reason = "stop"
        elif params.stop:
            text = self.text(output_ids)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                reason, text = "stop", text[:cut]
        if reason is None and len(output_ids) >= params.max_new_tokens:
            reason = "length"
        if reason is None:
            return None
        return reason, self.text(output_ids) if text is None else text
