"""Token-by-token text for streaming: decoded incrementally, never a broken character, never a stop string."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextDeltas:
    """Turns a growing list of token ids into text pieces; each piece extends what was sent before.

    `hold_back` characters stay unsent until the end, so a stop string that is still being
    generated (it spans tokens) is never streamed before the engine cuts it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, hold_back: int = 0) -> None:
        self.tokenizer = tokenizer
        self.hold_back = hold_back
        self.token_ids: list[int] = []
        self.sent = ""

    def add(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return ""
        return self._send_up_to(text, len(text) - self.hold_back)

    def finish(self, final_text: str) -> str:
        """The rest of the completion, once the engine has its final (stop-cut) text."""
        return self._send_up_to(final_text, len(final_text))

    def _send_up_to(self, text: str, end: int) -> str:
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent) : end]
        self.sent += piece
        return piece
