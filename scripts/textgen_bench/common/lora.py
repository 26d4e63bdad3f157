"""Real PEFT LoRA adapters for tests and benchmarks: made with PEFT itself, with weights that change the output."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel


def make_lora_adapter(
    base_model: PreTrainedModel,
    folder: Path,
    seed: int,
    r: int = 4,
    target_modules: Sequence[str] = ("c_attn",),
    lora_alpha: int = 8,
    base_name: str | None = None,
) -> Path:
    """Save a LoRA adapter for `base_model` into `folder` (adapter_config.json + adapter_model.safetensors).

    PEFT initialises lora_B to zeros, which makes a fresh adapter a no-op; here lora_B gets seeded random values,
    so each seed gives an adapter that visibly changes the output. `base_name` is what adapter_config.json records
    as base_model_name_or_path (default: the base model's name_or_path). `base_model` itself is left untouched.
    """
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules),
        fan_in_fan_out=base_model.config.model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(copy.deepcopy(base_model), config)  # it injects layers into the model it gets
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    base_name = base_name or base_model.name_or_path
    if not base_name:  # a model built from a config has no name: the adapter must still say what it is for
        raise ValueError("the base model has no name_or_path: pass base_name")
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.save_pretrained(folder, save_embedding_layers=False)  # "auto" looks the base up on the hub
    return folder
