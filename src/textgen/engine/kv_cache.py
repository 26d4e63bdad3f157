"""The generating rows' KV cache in preallocated buffers, one row per slot, so rows can join and leave between steps.

Row r's tokens sit at columns [0, length_r) of slot r in every layer's key and value buffer [slots, heads, columns,
head_dim]; a decoding step writes each row's new token at its own length. Nothing is concatenated: a step writes
one column per row (per-step concatenation copies the whole cache every step, so a step's cost grew with the
context), a joining row copies its prefill in, and a leaving row's slot is filled by moving the last row into it.
Buffers grow by doubling and are kept for the next batch. Attention reads a strided view of the first `width`
columns, with a mask of each row's own columns.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


def _full_layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = cache.layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        raise TypeError("batching needs full-attention DynamicCache layers (no sliding window or quantised cache)")
    return layers


class _SlotLayer(DynamicLayer):
    """One attention layer as transformers sees it during a decoding step: `update` writes into the slots."""

    def __init__(self, batch: SlotBatch, index: int) -> None:
        super().__init__()
        self._batch, self._index = batch, index
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self._batch.write(self._index, key_states[:, :, 0], value_states[:, :, 0])

    def get_seq_length(self) -> int:
        return self._batch.width - 1  # the columns before this step's token, as the masks count them

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._batch.width, 0


class SlotBatch:
    """The KV cache and lengths of the rows that are generating (rows 0..rows-1, in the engine's job order)."""

    def __init__(self, device: torch.device, max_rows: int) -> None:
        self.device, self.max_rows = device, max_rows
        self.lengths = torch.zeros(0, dtype=torch.long)  # tokens cached per row, on the host (read every step)
        self.width = 0  # columns a step attends over: the longest row plus its new token
        self._keys: list[torch.Tensor] = []  # per layer: [slots, kv_heads, columns, head_dim]
        self._values: list[torch.Tensor] = []
        self._step_rows = self._step_lengths = torch.zeros(0, dtype=torch.long, device=device)
        self.positions = torch.zeros(0, 1, dtype=torch.long, device=device)  # the step's: [rows, 1]
        self.mask = torch.zeros(0, 0, dtype=torch.bool, device=device)  # the step's: [rows, width], each row's columns
        self._cache = Cache(layers=[])

    @property
    def rows(self) -> int:
        return len(self.lengths)

    # --- rows joining and leaving ---------------------------------------------------------------------------------
    def add(self, prefill: DynamicCache, attention_mask: torch.Tensor, rows: list[int]) -> None:
        """Append `rows` of a (left-padded) prefill's cache below ours, each with the tokens its mask marks."""
        layers = _full_layers(prefill)
        if not rows:
            return
        lengths = attention_mask[rows].sum(dim=1).cpu()
        first = self.rows
        self._reserve([layer.keys for layer in layers], first + len(rows), int(lengths.max()) + 1)
        width = attention_mask.shape[1]
        for layer, keys, values in zip(layers, self._keys, self._values, strict=True):
            for slot, (row, length) in enumerate(zip(rows, lengths.tolist(), strict=True), start=first):
                keys[slot, :, :length] = layer.keys[row, :, width - length :]
                values[slot, :, :length] = layer.values[row, :, width - length :]
        self.lengths = torch.cat([self.lengths, lengths])

    def drop(self, rows: list[int]) -> list[int]:
        """Remove `rows`: each freed slot below the new row count takes one of the last remaining rows.

        Returns, for each new position, the old row now there, for the caller to reorder what it keeps per row.
        """
        gone = set(rows)
        remaining = self.rows - len(gone)
        order = list(range(remaining))
        movers = (row for row in range(remaining, self.rows) if row not in gone)
        for hole, mover in zip((row for row in range(remaining) if row in gone), movers, strict=True):
            length = int(self.lengths[mover])
            for keys, values in zip(self._keys, self._values, strict=True):
                keys[hole, :, :length] = keys[mover, :, :length]
                values[hole, :, :length] = values[mover, :, :length]
            order[hole] = mover
        self.lengths = self.lengths[order]
        return order

    def clear(self) -> None:
        """No rows (the buffers are kept for the next batch)."""
        self.lengths = self.lengths[:0]

    # --- a decoding step --------------------------------------------------------------------------------------------
    def begin_step(self) -> None:
        """Make room for one more token in every row; `positions`, `mask` and `attention_mask()` describe the step."""
        self.width = int(self.lengths.max()) + 1
        self._reserve(self._keys, self.rows, self.width)
        self._step_rows = torch.arange(self.rows, device=self.device)
        self._step_lengths = self.lengths.to(self.device)
        self.positions = self._step_lengths.unsqueeze(1)
        self.mask = (torch.arange(self.width).unsqueeze(0) <= self.lengths.unsqueeze(1)).to(self.device)

    def attention_mask(self) -> torch.Tensor | None:
        """The step's mask as attention takes it, [rows, 1, 1, width]; None for one row, whose columns all count."""
        return None if self.rows == 1 else self.mask[:, None, None, :]

    @property
    def cache(self) -> Cache:
        """The step's cache as a transformers model takes it (`past_key_values`)."""
        if len(self._cache.layers) != len(self._keys):
            self._cache = Cache(layers=[_SlotLayer(self, i) for i in range(len(self._keys))])
        return self._cache

    def end_step(self) -> None:
        """The step's forward pass went through: every row holds one more token."""
        self.lengths += 1

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store each row's new key and value ([rows, kv_heads, head_dim]) at its own length in `layer`; return that
        layer's keys and values over the step's first `width` columns, [rows, kv_heads, width, head_dim]."""
        all_keys, all_values = self._keys[layer], self._values[layer]
        all_keys[self._step_rows, :, self._step_lengths] = keys
        all_values[self._step_rows, :, self._step_lengths] = values
        return all_keys[: self.rows, :, : self.width], all_values[: self.rows, :, : self.width]

    # --- storage ------------------------------------------------------------------------------------------------------
    def _reserve(self, likes: list[torch.Tensor], slots: int, columns: int) -> None:
        """Make the buffers hold `slots` rows of `columns` tokens (each layer shaped like `likes`), doubling to grow."""
        have_slots, have_columns = (self._keys[0].shape[0], self._keys[0].shape[2]) if self._keys else (0, 0)
        if have_slots >= slots and have_columns >= columns:
            return
        new_slots = max(slots, min(2 * have_slots, self.max_rows)) if slots > have_slots else have_slots
        new_columns = max(columns, 2 * have_columns) if columns > have_columns else have_columns
        used = int(self.lengths.max()) if self.rows else 0

        def grown(old: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
            _, heads, _, head_dim = like.shape
            # Zeros, not empty(): attention still multiplies masked columns by 0, and NaN * 0 is NaN.
            new = torch.zeros(new_slots, heads, new_columns, head_dim, dtype=like.dtype, device=like.device)
            if old is not None and self.rows:
                new[: self.rows, :, :used] = old[: self.rows, :, :used]
            return new

        none: list[torch.Tensor | None] = [None] * len(likes)
        self._keys = [grown(old, like) for old, like in zip(self._keys or none, likes, strict=True)]
        self._values = [grown(old, like) for old, like in zip(self._values or none, likes, strict=True)]
