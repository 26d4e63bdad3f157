"""A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), stored as it is.

No model is loaded: the store model's folder is what `peft.PeftModel.from_pretrained(base, path)` reads. The
labels are the contract with the server's adapter loader (same names, same spelling):

    kind: lora-adapter            base_model: adapter_config.json's base_model_name_or_path, as is
    lora_rank: r                  lora_alpha: lora_alpha
    target_modules: the adapted module names, sorted, comma-separated (a regex string as it is)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textgen_import.common import ImportRefused, Provenance, is_pickled, require_safetensors

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model"  # the stem PEFT's save_pretrained writes: adapter_model.safetensors (or .bin)
KIND = "lora-adapter"


def is_adapter(folder: Path) -> bool:
    return (folder / CONFIG).is_file()


def target_modules(config: dict[str, Any]) -> str:
    modules = config.get("target_modules")
    if isinstance(modules, str):  # PEFT takes a regex over module names as well as a list
        return modules
    if not modules:
        raise ImportRefused(f"{CONFIG} names no target_modules")
    return ",".join(sorted(modules))


def read(folder: Path) -> tuple[list[Path], Provenance]:
    """The files to store and the provenance of the adapter in `folder`; refuses what cannot be served."""
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportRefused(f"cannot read {folder / CONFIG}: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise ImportRefused(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA adapters are served")
    base = config.get("base_model_name_or_path")
    if not base:  # the loader refuses an adapter for another base: it must know which one this is for
        raise ImportRefused(f"{folder / CONFIG} has no base_model_name_or_path: set it to the base model")
    require_safetensors(folder, f"LoRA adapter {folder}", stem=WEIGHTS)
    path = str(folder.resolve())
    labels = {
        "kind": KIND,
        "base_model": str(base),
        "lora_rank": str(config["r"]),
        "lora_alpha": str(config["lora_alpha"]),
        "target_modules": target_modules(config),
        "weights": "pretrained",
        "source_kind": "local",
    }
    # Top-level files only, as PEFT saved them (README.md too); pickles never, even beside safetensors.
    files = sorted(p for p in folder.iterdir() if p.is_file() and not is_pickled(p))
    return files, Provenance(f"local:{path}", labels, {"local_path": path, "peft_type": "LORA"})
