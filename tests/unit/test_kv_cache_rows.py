"""SlotBatch on real caches of the tiny model: rows join (add) and leave (drop) between decoding steps, buffers grow,
and every row's next-token logits stay those of the same sequence run alone, whether the steps run through the
model's own forward pass or through the written-out GPT-2 decoder."""

from __future__ import annotations

import pytest
import torch

from textgen.engine.decoders import Decoder, Gpt2Decoder, TransformersDecoder
from textgen.engine.kv_cache import SlotBatch

PROMPTS = ["Hello there", "The quick brown fox jumps over the lazy dog", "In 1492 Columbus sailed", "A"]
ATOL = 1e-4  # float32; other rows' columns are masked, so only summation order differs from the unbatched pass


@pytest.fixture(autouse=True)
def _inference():
    with torch.inference_mode():
        yield


@pytest.fixture(params=[TransformersDecoder, Gpt2Decoder], ids=["transformers", "gpt2"])
def decoder(request, tiny_model) -> Decoder:
    return request.param(tiny_model[0])


def join(model, batch: SlotBatch, sequences: list[list[int]]) -> list[int]:
    """Prefill `sequences` together, left-padded as the engine does, add them to the batch; their next tokens."""
    width = max(len(ids) for ids in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :], mask[row, width - len(seq) :] = torch.tensor(seq), 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    batch.add(out.past_key_values, mask, list(range(len(sequences))))
    return out.logits[:, -1].argmax(dim=-1).tolist()


def decode(decoder: Decoder, batch: SlotBatch, tokens: list[int]) -> torch.Tensor:
    """One decoding step of every row, the way BatchEngine._decode runs it; returns the next-token logits."""
    batch.begin_step()
    logits = decoder(torch.tensor([[t] for t in tokens]), batch)
    batch.end_step()
    return logits


def alone(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits of `ids` in a fresh, unbatched forward pass."""
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


def step_all(decoder: Decoder, batch: SlotBatch, sequences: list[list[int]], tokens: list[int]) -> list[int]:
    """Decode one step; check every row against its sequence run alone; extend the sequences; next tokens."""
    logits = decode(decoder, batch, tokens)
    for row, token in enumerate(tokens):
        sequences[row].append(token)
        torch.testing.assert_close(logits[row], alone(decoder.model, sequences[row]), atol=ATOL, rtol=0)
    return logits.argmax(dim=-1).tolist()


@pytest.fixture
def sequences(tiny_model) -> list[list[int]]:
    tokenizer = tiny_model[1]
    ids = [tokenizer.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == 4  # four lengths
    return ids


def test_rows_prefilled_together_decode_as_they_would_alone(tiny_model, sequences, decoder):
    model, batch = tiny_model[0], SlotBatch(torch.device("cpu"), max_rows=8)
    tokens = join(model, batch, sequences)
    for _ in range(6):  # the column buffers grow (double) along the way
        tokens = step_all(decoder, batch, sequences, tokens)
    assert batch.lengths.tolist() == [len(s) for s in sequences]


def test_rows_joining_a_running_batch_and_growing_its_slots_decode_as_alone(tiny_model, sequences, decoder):
    model, batch = tiny_model[0], SlotBatch(torch.device("cpu"), max_rows=8)
    running, later = sequences[:1], sequences[1:]
    tokens = join(model, batch, running)
    tokens = step_all(decoder, batch, running, tokens)
    tokens += join(model, batch, later[:1])  # one slot -> two
    tokens += join(model, batch, later[1:])  # two -> four
    running += later
    for _ in range(3):
        tokens = step_all(decoder, batch, running, tokens)


@pytest.mark.parametrize("gone", [[0], [1], [3], [0, 3], [1, 2], [0, 1, 2, 3]])
def test_dropped_rows_leave_and_the_rest_keep_decoding_as_alone(tiny_model, sequences, gone, decoder):
    model, batch = tiny_model[0], SlotBatch(torch.device("cpu"), max_rows=8)
    tokens = join(model, batch, sequences)
    tokens = step_all(decoder, batch, sequences, tokens)
    order = batch.drop(gone)
    assert sorted(order) == sorted(set(range(4)) - set(gone))  # every survivor once, in some slot
    sequences, tokens = [sequences[r] for r in order], [tokens[r] for r in order]
    assert batch.rows == len(order)
    for _ in range(2 if order else 0):
        tokens = step_all(decoder, batch, sequences, tokens)
    if not order:  # an emptied batch takes new rows into the same buffers
        again = [list(s) for s in sequences_of(tiny_model)]
        step_all(decoder, batch, again, join(model, batch, again))


def test_a_dropped_row_moves_only_one_row_into_its_slot(tiny_model, sequences):
    batch = SlotBatch(torch.device("cpu"), max_rows=8)
    join(tiny_model[0], batch, sequences)
    assert batch.drop([1]) == [0, 3, 2]  # the last row fills the hole; the others stay where they are


def sequences_of(tiny_model) -> list[list[int]]:
    return [tiny_model[1].encode(p) for p in PROMPTS[:2]]
