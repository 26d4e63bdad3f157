"""A GGUF file (llama.cpp's format), read by transformers, which dequantizes it to float weights.

Needs the `gguf` and `accelerate` packages (requirements-import.txt). The stored model is a plain transformers
checkpoint: the server never needs `gguf`, and the weights keep the precision loss of the quantization.
"""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

from textgen_import.common import ImportRefused, LoadedModel, Provenance

# Weights at these types are not quantized; a file whose 2-D tensors are all of them is called by that type.
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def read_metadata(path: Path) -> tuple[str, str | None]:
    """The file's quantization type (`Q4_1`, `Q8_0`, `F16`, ...) and the chat template it carries, if any."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)
    file_type = reader.get_field("general.file_type")
    if file_type is not None:  # what llama.cpp's converter or quantizer wrote: `MOSTLY_Q4_1`
        quantization = LlamaFileType(int(file_type.contents())).name.removeprefix("MOSTLY_")
    else:  # older files: the type most weight matrices have (norms and biases stay float whatever the type)
        matrices = [t for t in reader.tensors if len(t.shape) > 1] or reader.tensors
        counts = collections.Counter(t.tensor_type.name for t in matrices)
        quantized = [name for name, _ in counts.most_common() if name not in FLOAT_TYPES]
        quantization = quantized[0] if quantized else counts.most_common(1)[0][0]
    template = reader.get_field("tokenizer.chat_template")
    return quantization, template.contents() if template is not None else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load(path: Path) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path.resolve()
    try:
        quantization, template = read_metadata(path)
    except (ValueError, OSError) as exc:  # GGUFReader: wrong magic, truncated file
        raise ImportRefused(f"{path} is not a readable GGUF file ({exc})") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ValueError as exc:  # "GGUF model with architecture X is not supported yet."
        raise ImportRefused(f"transformers cannot load {path.name}: {exc}") from exc
    # transformers reads the template from the file's metadata; set it ourselves should a version not do so.
    if tokenizer.chat_template is None and template:
        tokenizer.chat_template = template
    # The weights are dequantized now; left marked as GGUF-quantized, save_pretrained refuses to write them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return LoadedModel(
        model,
        tokenizer,
        Provenance(
            f"gguf:{path} ({quantization})",
            {
                "weights": "pretrained",
                "source_kind": "gguf",
                "gguf_file": path.name,
                "gguf_quantization": quantization,
            },
            {"local_path": str(path), "gguf_sha256": sha256(path)},
        ),
    )
