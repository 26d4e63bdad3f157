"""Token-by-token text for streaming: decoded incrementally, never a broken character, never a stop string."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces; each piece extends what was sent before.

    Each token decodes only a short window of the latest ids (the offsets technique of TGI and vLLM),
    not the whole completion, so streaming a long completion stays linear on the event loop.
    `hold_back` characters stay unsent until the end, so a stop string that is still being
    generated (it spans tokens) is never streamed before the engine cuts it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, hold_back: int = 0) -> None:
        self.tokenizer = tokenizer
        self.hold_back = hold_back
        self.token_ids: list[int] = []
        self.text = ""  # decoded so far
        self.sent = ""
        self._prefix_offset = 0  # window start: context that makes the next token decode as it would in full
        self._read_offset = 0  # tokens up to here are already in `text`

    def add(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        window = decode(self.token_ids[self._prefix_offset :], skip_special_tokens=True)
        if len(window) <= len(prefix) or window.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return ""
        self.text += window[len(prefix) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        return self._send_up_to(self.text, len(self.text) - self.hold_back)

    def finish(self, final_text: str) -> str:
        """The rest of the completion, once the engine has its final (stop-cut) text."""
        return self._send_up_to(final_text, len(final_text))

    def _send_up_to(self, text: str, end: int) -> str:
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent) : end]
        self.sent += piece
        return piece
