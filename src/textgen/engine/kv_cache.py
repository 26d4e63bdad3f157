"""Row operations on a left-padded batch of KV caches, so rows can join and leave between steps.

Rows are right-aligned: padding sits on the left and is masked out by the
attention mask, the approach TGI uses for models without paged attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def _full_layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = cache.layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        raise TypeError("batching needs full-attention DynamicCache layers (no sliding window or quantised cache)")
    return layers


class PaddedBatch:
    """KV cache plus attention mask [rows, width] of the rows that are generating."""

    def __init__(self, cache: DynamicCache, attention_mask: torch.Tensor) -> None:
        self.cache = cache
        self.attention_mask = attention_mask

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def width(self) -> int:
        return self.attention_mask.shape[1]

    def _pad_left(self, width: int) -> None:
        extra = width - self.width
        if extra <= 0:
            return
        for layer in _full_layers(self.cache):
            layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
            layer.values = F.pad(layer.values, (0, 0, extra, 0))
        self.attention_mask = F.pad(self.attention_mask, (extra, 0))

    def extend(self, other: PaddedBatch) -> None:
        """Append `other`'s rows below ours, padding the narrower one on the left."""
        width = max(self.width, other.width)
        self._pad_left(width)
        other._pad_left(width)
        for mine, theirs in zip(_full_layers(self.cache), _full_layers(other.cache), strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.attention_mask = torch.cat([self.attention_mask, other.attention_mask])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop padding columns no row needs any more."""
        index = torch.tensor(rows, dtype=torch.long)
        self.attention_mask = self.attention_mask[index]
        used = self.attention_mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.width
        self.attention_mask = self.attention_mask[:, start:]
        for layer in _full_layers(self.cache):
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]

    def next_positions(self) -> torch.Tensor:
        """Position id of each row's next token: the count of its real tokens so far."""
        return self.attention_mask.sum(dim=1, keepdim=True)

    def grow(self) -> torch.Tensor:
        """Mask for a step that adds one token to every row; it becomes the batch's mask."""
        self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
        return self.attention_mask
