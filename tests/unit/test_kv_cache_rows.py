"""PaddedBatch on real DynamicCaches of the tiny model: rows join (extend) and leave (keep) between decoding steps,
and every row's next-token logits stay those of the same sequence run alone."""

from __future__ import annotations

import pytest
import torch

from textgen.engine.kv_cache import PaddedBatch

PROMPTS = ["Hello there", "The quick brown fox jumps over the lazy dog", "In 1492 Columbus sailed"]
ATOL = 1e-4  # float32; padding is masked, so only summation order differs from the unbatched pass


@pytest.fixture(autouse=True)
def _inference():
    with torch.inference_mode():
        yield


def prefill(model, ids: list[int]) -> tuple[PaddedBatch, int]:
    """One sequence prefilled alone, as a one-row batch, and its greedy next token."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    return PaddedBatch(out.past_key_values, torch.ones((1, len(ids)), dtype=torch.long)), int(
        out.logits[0, -1].argmax()
    )


def decode(model, batch: PaddedBatch, tokens: list[int]) -> torch.Tensor:
    """One decoding step of every row, the way BatchEngine._decode runs it; returns the next-token logits."""
    positions = batch.next_positions()
    out = model(
        input_ids=torch.tensor([[t] for t in tokens]),
        attention_mask=batch.grow(),
        position_ids=positions,
        past_key_values=batch.cache,
        use_cache=True,
    )
    return out.logits[:, -1]


def alone(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits of `ids` in a fresh, unbatched forward pass."""
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


def batch_of(model, sequences: list[list[int]]) -> tuple[PaddedBatch, list[int]]:
    """The sequences prefilled one by one and joined with `extend`, with each one's next token."""
    batch, first = prefill(model, sequences[0])
    tokens = [first]
    for ids in sequences[1:]:
        other, token = prefill(model, ids)
        batch.extend(other)
        tokens.append(token)
    return batch, tokens


def layer_keys(batch: PaddedBatch) -> list[torch.Tensor]:
    return [layer.keys for layer in batch.cache.layers]


@pytest.fixture
def sequences(tiny_model) -> list[list[int]]:
    tokenizer = tiny_model[1]
    ids = [tokenizer.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == 3  # three widths
    return ids


@pytest.mark.parametrize("narrow_first", [True, False], ids=["narrow-extended-by-wide", "wide-extended-by-narrow"])
def test_extend_pads_the_narrower_rows_on_the_left_and_masks_the_padding(tiny_model, sequences, narrow_first):
    model = tiny_model[0]
    short, long = sequences[0], sequences[1]
    order = [short, long] if narrow_first else [long, short]
    singles = [prefill(model, ids)[0] for ids in order]
    single_keys = [[k.clone() for k in layer_keys(b)] for b in singles]
    single_values = [[layer.values.clone() for layer in b.cache.layers] for b in singles]

    batch = singles[0]
    batch.extend(singles[1])

    pad = len(long) - len(short)
    short_row = 0 if narrow_first else 1
    expected_mask = torch.ones((2, len(long)), dtype=torch.long)
    expected_mask[short_row, :pad] = 0
    assert torch.equal(batch.attention_mask, expected_mask)
    assert (batch.rows, batch.width) == (2, len(long))
    for row in (0, 1):
        for layer, keys, values in zip(batch.cache.layers, single_keys[row], single_values[row], strict=True):
            start = pad if row == short_row else 0
            assert layer.keys.shape[2] == len(long)
            assert torch.equal(layer.keys[row, :, start:], keys[0])
            assert torch.equal(layer.values[row, :, start:], values[0])
            assert not layer.keys[row, :, :start].any()  # zeros where the mask is 0


def test_rows_joined_by_extend_decode_as_they_would_alone(tiny_model, sequences):
    model = tiny_model[0]
    batch, tokens = batch_of(model, sequences)

    logits = decode(model, batch, tokens)

    for row, (ids, token) in enumerate(zip(sequences, tokens, strict=True)):
        assert torch.allclose(logits[row], alone(model, [*ids, token]), atol=ATOL)


def test_after_keep_the_kept_rows_decode_as_they_would_alone(tiny_model, sequences):
    model = tiny_model[0]
    batch, tokens = batch_of(model, sequences)
    grown = [[*ids, token] for ids, token in zip(sequences, tokens, strict=True)]
    logits = decode(model, batch, tokens)
    for ids, row_logits in zip(grown, logits, strict=True):
        ids.append(int(row_logits.argmax()))

    batch.keep([2, 0])  # the widest row leaves; the others swap places
    kept = [grown[2], grown[0]]
    logits = decode(model, batch, [ids[-1] for ids in kept])

    for row, ids in enumerate(kept):
        assert torch.allclose(logits[row], alone(model, ids), atol=ATOL)
    # and once more, after the batch grew past the narrower rows' old width
    batch.keep([1])
    ids = [*kept[1], int(logits[1].argmax())]
    assert torch.allclose(decode(model, batch, [ids[-1]])[0], alone(model, ids), atol=ATOL)


def test_keep_drops_the_padding_columns_no_kept_row_needs(tiny_model, sequences):
    model = tiny_model[0]
    batch, _ = batch_of(model, sequences)
    widest = max(len(ids) for ids in sequences)
    assert batch.width == widest

    batch.keep([2, 0])

    needed = max(len(sequences[2]), len(sequences[0]))
    assert (batch.rows, batch.width) == (2, needed)
    assert all(k.shape[:1] + k.shape[2:3] == (2, needed) for k in layer_keys(batch))
    assert batch.attention_mask.any(dim=0).all()  # every column left is some row's real token
    assert batch.next_positions().flatten().tolist() == [len(sequences[2]), len(sequences[0])]


def test_keep_of_rows_of_full_width_drops_nothing(tiny_model, sequences):
    model = tiny_model[0]
    batch, _ = batch_of(model, sequences)
    batch.keep([1])
    assert (batch.rows, batch.width) == (1, len(sequences[1]))
    assert batch.attention_mask.all()


def test_next_positions_count_each_rows_real_tokens(tiny_model, sequences):
    model = tiny_model[0]
    batch, tokens = batch_of(model, sequences)
    assert batch.next_positions().tolist() == [[len(ids)] for ids in sequences]
    decode(model, batch, tokens)
    assert batch.next_positions().tolist() == [[len(ids) + 1] for ids in sequences]


def test_grow_adds_a_column_of_ones_and_keeps_it(tiny_model, sequences):
    model = tiny_model[0]
    batch, _ = batch_of(model, sequences)
    before = batch.attention_mask.clone()

    mask = batch.grow()

    assert mask is batch.attention_mask
    assert mask.shape == (before.shape[0], before.shape[1] + 1)
    assert torch.equal(mask[:, :-1], before)
    assert mask[:, -1].tolist() == [1, 1, 1]
