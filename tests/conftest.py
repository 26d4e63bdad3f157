"""Shared fixtures: a tiny GPT-2 (real tokenizer, random weights) built locally, no hub needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = Path(os.environ.get("OFFLINE_MODEL_DIR", REPO.parent / "shared/models/distilgpt2-no-weights"))

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def build_tiny_model(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """GPT-2 shape at toy size: 2 layers, 64 wide, the real 50257-token vocabulary and 1024 positions."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=1024, vocab_size=50257)
    model = GPT2LMHeadModel(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_model() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = build_tiny_model()
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
