"""Incremental detokenisation: whole characters only, pieces that add up, stop strings never leaked."""

from __future__ import annotations

from textgen.engine import IncrementalDetokenizer


def stream_pieces(tokenizer, text: str, hold_back: int = 0) -> tuple[list[str], IncrementalDetokenizer]:
    deltas = IncrementalDetokenizer(tokenizer, hold_back)
    return [p for t in tokenizer.encode(text) if (p := deltas.add(t))], deltas


def test_multibyte_characters_are_never_split(tiny_model):
    tokenizer = tiny_model[1]
    text = "Smile 😀, café and 東京 tonight"
    assert len(tokenizer.encode("😀")) > 1  # one character, several byte-level tokens
    pieces, _ = stream_pieces(tokenizer, text)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_held_back_tail_is_sent_at_the_end(tiny_model):
    tokenizer = tiny_model[1]
    text = "The end is near, they said."
    pieces, deltas = stream_pieces(tokenizer, text, hold_back=4)
    assert "".join(pieces) == text[:-4]
    assert deltas.finish(text) == text[-4:]


def test_a_stop_string_spanning_tokens_is_never_streamed(tiny_model):
    tokenizer = tiny_model[1]
    generated, stop = "Answer: forty-two. STOP HERE and more", "STOP HERE"
    deltas = IncrementalDetokenizer(tokenizer, hold_back=len(stop) - 1)
    pieces, ids = [], []
    for token in tokenizer.encode(generated):  # as the engine does: tokens until the stop string is complete
        ids.append(token)
        if stop in tokenizer.decode(ids):
            break
        pieces.append(deltas.add(token))
    final = generated[: generated.index(stop)]  # what the engine returns once it sees the stop string
    assert "".join(pieces) + deltas.finish(final) == final
    assert "S" not in "".join(pieces)[len("Answer: forty-two. ") :]


def test_pieces_match_a_full_decode_of_long_mixed_text(tiny_model):
    tokenizer = tiny_model[1]
    text = ("Ünïcödé 😀😀 and spaces   and\nnew lines, 東京タワー. " * 20).strip()
    pieces, deltas = stream_pieces(tokenizer, text)
    assert "".join(pieces) == tokenizer.decode(tokenizer.encode(text)) == deltas.text
