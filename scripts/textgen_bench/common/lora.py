"""Real PEFT LoRA adapters for benchmarks and tests: PEFT initialises lora_B to zero (an adapter that changes
nothing), so every factor gets seeded random values instead."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel


def make_lora_adapter(
    base: PreTrainedModel,
    folder: Path,
    seed: int,
    r: int = 4,
    target_modules: Sequence[str] = ("c_attn",),
    base_name: str | None = None,
) -> Path:
    """Save a LoRA adapter of `base` (left untouched) to `folder`; `base_name` is the base model it records."""
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), fan_in_fan_out=True)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    if base_name is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.save_pretrained(str(folder))
    return folder
