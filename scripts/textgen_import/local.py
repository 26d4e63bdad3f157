"""A local model folder (config, weights, tokenizer), or a config + tokenizer given seeded random weights."""

from __future__ import annotations

from pathlib import Path

from textgen_import.common import LoadedModel, Provenance


def load(folder: Path) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(folder.resolve())
    return LoadedModel(
        AutoModelForCausalLM.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
        Provenance(f"local:{path}", {"weights": "pretrained", "source_kind": "local"}, {"local_path": path}),
    )


def random_weights(folder: Path, seed: int) -> LoadedModel:
    """The architecture of `folder`'s config.json with seeded random weights: costs what the real model costs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = str(folder.resolve())
    torch.manual_seed(seed)
    return LoadedModel(
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)),
        AutoTokenizer.from_pretrained(folder),
        Provenance(
            f"random (seed {seed}, config from {path})",
            {"weights": "random", "source_kind": "random"},
            {"seed": seed, "config_from": path},
        ),
    )
