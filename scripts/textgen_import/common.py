"""What every model source shares: how it refuses, what it hands to the store, store names."""

from __future__ import annotations

import fnmatch
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import bentoml
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TAG_NAME_MAX = 63  # BentoML's limit on a tag's name
# Pickled weights: loading them can run code, so no source imports them.
PICKLED = ("*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt")


class ImportRefused(RuntimeError):
    """The source cannot be imported as it is; the message says why and what to do. Nothing was stored."""


@dataclass
class Provenance:
    """Where a store model came from: a one-line `source` (metadata), labels (shown by /model-info) and metadata."""

    source: str
    labels: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A full model read from a source, ready for textgen.serving.model_store.save_to_store."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    provenance: Provenance


def tag_name(text: str) -> str:
    """`text`'s last path segment as a BentoML tag name.

    BentoML names are lower-case letters, digits and `-._` inside, at most 63 characters, starting and ending
    with a letter or digit: `HuggingFaceTB/SmolLM2-135M-Instruct` -> `smollm2-135m-instruct`.
    """
    name = re.sub(r"[^a-z0-9._-]+", "-", text.rstrip("/").rsplit("/", 1)[-1].lower())
    name = name.strip("-._")[:TAG_NAME_MAX].rstrip("-._")
    if not name:
        raise ValueError(f"cannot make a model name of {text!r}: pass --name")
    return name


def is_pickled(path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in PICKLED)


def require_safetensors(folder: Path, what: str, stem: str = "*") -> None:
    """Refuse `folder` unless it holds `{stem}.safetensors` weights; name pickled ones if that is all there is."""
    if any(folder.glob(f"{stem}.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if is_pickled(p)) if folder.is_dir() else []
    found = f" (it has pickled weights: {', '.join(pickled)})" if pickled else ""
    raise ImportRefused(
        f"{what} has no safetensors weights{found}. Pickled weights (*.bin, *.pt) are refused, since loading them "
        "can run code: convert them to safetensors (save_pretrained does by default) and import the folder again"
    )


def store_files(name: str, files: list[Path], provenance: Provenance) -> bentoml.Model:
    """A new store version holding `files` as they are (no model is loaded), with the provenance recorded."""
    import bentoml

    metadata = {"source": provenance.source, **provenance.metadata}
    with bentoml.models.create(name=name, labels=provenance.labels, metadata=metadata) as stored:
        for file in files:
            shutil.copy2(file, Path(stored.path) / file.name)
    return bentoml.models.get(stored.tag)
