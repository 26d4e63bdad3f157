"""One decoding step of every generating row: each row's next-token logits from its last token and its KV cache.

A transformers model's forward pass serves any causal LM, but at batch 1 on the CPU its bookkeeping (mask
building, cache objects, attention dispatch, output classes: over a hundred Python calls a layer) took 1-2 ms of a
14-17 ms DistilGPT-2 step, time in which memory, the step's real limit, sits idle. For the architectures below, a
step here is the same computation written out: the same modules for everything with weights (so packed and int8
layers, fused activations and LoRA hooks all apply), the same attention kernel (SDPA, as transformers' default
`sdpa` attention calls it), and the KV cache written in place. The logits are transformers' own
(tests/unit/test_decoders.py checks them against its forward pass). Prefill stays transformers' forward.

Other models, and models loaded with another attention implementation, decode through their own forward pass.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, LlamaForCausalLM, PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .kv_cache import SlotBatch


class Decoder(Protocol):
    name: str
    model: PreTrainedModel

    def __call__(self, ids: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        """Logits [rows, vocab] for the step `batch.begin_step()` began, each row fed its token in `ids` [rows, 1]."""
        ...


class TransformersDecoder:
    """Any causal LM: its own forward pass, with the slots as its cache."""

    name = "transformers forward"

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    def __call__(self, ids: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=batch.mask,
            position_ids=batch.positions,
            past_key_values=batch.cache,
            use_cache=True,
        )
        return out.logits[:, -1]


def padded_rows(model: PreTrainedModel, rows: int) -> int:
    """Rows a step carries: packed layers pad products of a few rows to more (`pad_small_products`), and a step
    padded once at its start spares every layer its own padding (0.3 ms of a 13 ms DistilGPT-2 step)."""
    return max(rows, getattr(model.get_output_embeddings(), "min_rows", 1))


def pad(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x` [r, ...] with rows of zeros below, up to `rows`: spare rows, whose outputs are never read."""
    return x if x.shape[0] == rows else torch.cat((x, x.new_zeros(rows - x.shape[0], *x.shape[1:])))


def attend(
    batch: SlotBatch, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, rows: int
) -> torch.Tensor:
    """Store one layer's new keys and values and attend over each row's columns, as transformers' SDPA attention
    does. `query` [r, heads, 1, head_dim] and `key`, `value` [r, kv_heads, head_dim] are the batch's r rows; returns
    [rows, 1, heads x head_dim], padded with spare rows."""
    keys, values = batch.write(layer, key, value)
    mask = batch.attention_mask()
    grouped = {}
    if keys.shape[1] != query.shape[1]:  # grouped-query attention: transformers repeats the heads under a mask
        if mask is None:
            grouped = {"enable_gqa": True}
        else:
            repeats = query.shape[1] // keys.shape[1]
            keys, values = keys.repeat_interleave(repeats, dim=1), values.repeat_interleave(repeats, dim=1)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, **grouped)
    return pad(out.transpose(1, 2).reshape(query.shape[0], 1, -1), rows)


class WrittenOutDecoder:
    """A step written out: `hidden` gives the last hidden state, which the LM head turns into logits."""

    name: str
    model: PreTrainedModel

    def __call__(self, ids: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        return self.model.lm_head(self.hidden(ids, batch))[:, -1]

    def hidden(self, ids: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        """Each row's hidden state after the final norm, [rows, 1, hidden_size]: what the LM head multiplies (as
        one position a row, which is what LoRA hooks on the LM head expect)."""
        raise NotImplementedError


class Gpt2Decoder(WrittenOutDecoder):
    """GPT-2 (and DistilGPT-2): transformers' GPT2Model, GPT2Block and GPT2Attention, for one new token a row."""

    name = "GPT-2 decoder"

    def __init__(self, model: GPT2LMHeadModel) -> None:
        self.model = model
        self.transformer = model.transformer
        self.heads = model.config.n_head

    def hidden(self, ids: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        transformer = self.transformer
        rows, padded = ids.shape[0], padded_rows(self.model, ids.shape[0])
        hidden = pad(transformer.wte(ids) + transformer.wpe(batch.positions), padded)
        for index, block in enumerate(transformer.h):
            attention = block.attn
            qkv = attention.c_attn(block.ln_1(hidden))[:rows].view(rows, 3, self.heads, -1)
            query = qkv[:, 0].unsqueeze(2)
            mixed = attend(batch, index, query, qkv[:, 1], qkv[:, 2], attention.scaling, padded)
            hidden = hidden + attention.c_proj(mixed)
            hidden = hidden + block.mlp(block.ln_2(hidden))
        return transformer.ln_f(hidden[:rows])


class LlamaDecoder(WrittenOutDecoder):
    """Llama (SmolLM2, TinyLlama, ...): transformers' LlamaModel, LlamaDecoderLayer and LlamaAttention."""

    name = "Llama decoder"

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model
        self.inner = model.model

    def hidden(self, ids: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        inner = self.inner
        rows, padded = ids.shape[0], padded_rows(self.model, ids.shape[0])
        embedded = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(embedded, batch.positions)
        hidden = pad(embedded, padded)
        for index, layer in enumerate(inner.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            by_head = (rows, 1, -1, attention.head_dim)
            query = attention.q_proj(x)[:rows].view(by_head).transpose(1, 2)
            key = attention.k_proj(x)[:rows].view(by_head).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            value = attention.v_proj(x)[:rows].view(rows, -1, attention.head_dim)
            mixed = attend(batch, index, query, key[:, :, 0], value, attention.scaling, padded)
            hidden = hidden + attention.o_proj(mixed)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return inner.norm(hidden[:rows])


def decoder_for(model: PreTrainedModel) -> Decoder:
    """The written-out step where the model is one it covers exactly, else the model's own forward pass."""
    config = model.config
    if config._attn_implementation == "sdpa":
        if type(model) is GPT2LMHeadModel and not config.add_cross_attention:
            return Gpt2Decoder(model)
        if type(model) is LlamaForCausalLM:
            return LlamaDecoder(model)
    return TransformersDecoder(model)
