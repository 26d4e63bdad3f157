"""Tiny GGUF files for tests, written with the `gguf` package's writer as llama.cpp's converter writes them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

# GPT-2's Conv1D layers keep weights as (in, out); GGUF stores them as (out, in), like llama.cpp's converter does.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def write_gpt2_gguf(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    quantization: str = "Q8_0",
    chat_template: str | None = None,
) -> GPT2LMHeadModel:
    """Write `model` and its byte-level BPE tokenizer (cut to the model's vocabulary) as a GGUF file, weight
    matrices quantized.

    Returns the reference: a copy of `model` whose weights went through the same quantization and back (with
    gguf's own numpy code, not transformers'), i.e. what a correct reader of the file must compute.
    """
    qtype = gguf.GGMLQuantizationType[quantization]
    config = model.config
    arch = gguf.MODEL_ARCH.GPT2
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("tiny-gpt2")
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{quantization}"])
    add_bpe_tokenizer(writer, tokenizer, config.vocab_size, chat_template)

    reference = copy.deepcopy(model)
    reference_state = reference.state_dict()
    names = gguf.get_tensor_name_map(arch, config.n_layer)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # no output.weight in the file: the reader ties it to token_embd
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        assert gguf_name is not None, f"no GGUF name for {hf_name}"
        data = tensor.numpy().astype(np.float32)
        transposed = hf_name.endswith(TRANSPOSED)
        if transposed:
            data = np.ascontiguousarray(data.T)
        if data.ndim == 2:  # llama.cpp quantizes matrices; norms and biases stay float32
            packed = gguf.quants.quantize(data, qtype)
            writer.add_tensor(f"{gguf_name}.{suffix}", packed, raw_dtype=qtype)
            data = gguf.quants.dequantize(packed, qtype)
            reference_state[hf_name].copy_(torch.from_numpy(data.T if transposed else data))
        else:
            writer.add_tensor(f"{gguf_name}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference.eval()


def add_bpe_tokenizer(
    writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, size: int, chat_template: str | None
) -> None:
    """The tokenizer as llama.cpp's converter records a byte-level BPE one: tokens by id, merges, special ids.

    With `size` below the tokenizer's vocabulary, only its first `size - 1` tokens and its end-of-text token (as the
    last id) are written: GPT-2's merge k makes token 256 + k, so the first `size - 257` merges go with them, and the
    smaller tokenizer splits text as the full one does wherever the full one's ids stay below `size - 1`. Parsing a
    50k-token vocabulary takes transformers seconds each time it opens the file.
    """
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    eos = tokenizer.eos_token
    if size < len(tokens):
        tokens = [*tokens[: size - 1], eos]
        merges = merges[: size - 1 - 256]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(eos))  # GPT-2's BOS is its end-of-text token
    writer.add_eos_token_id(tokens.index(eos))
    if chat_template is not None:
        writer.add_chat_template(chat_template)
