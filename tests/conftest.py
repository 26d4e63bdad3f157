"""Shared fixtures: a tiny GPT-2 (real tokenizer, random weights) built locally.

The tokenizer is DistilGPT-2's: from OFFLINE_MODEL_DIR (by default the sibling shared/ folder of our build
machines) if it is there, else from the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tests.k8s_render import VARIANTS, render_all

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = Path(os.environ.get("OFFLINE_MODEL_DIR", REPO.parent / "shared/models/distilgpt2-no-weights"))
TOKENIZER_HUB_ID = "distilbert/distilgpt2"

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def build_tiny_model(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """GPT-2 shape at toy size: 2 layers, 64 wide, the real 50257-token vocabulary and 1024 positions."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=1024, vocab_size=50257)
    model = GPT2LMHeadModel(config).eval()
    return model, load_tokenizer()


def build_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """Llama's shape at toy size, with grouped-query attention (4 query heads share 2 key-value heads)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def load_tokenizer() -> PreTrainedTokenizerBase:
    source = TOKENIZER_DIR if (TOKENIZER_DIR / "tokenizer_config.json").is_file() else TOKENIZER_HUB_ID
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        pytest.exit(
            f"the tests need DistilGPT-2's tokenizer: {TOKENIZER_DIR} has none and the hub gave: {exc}. Set "
            "OFFLINE_MODEL_DIR to a folder with it (config.json, tokenizer.json, ...), or allow the hub.",
            returncode=2,
        )


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


@pytest.fixture(scope="module")
def k8s_rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """deploy/k8s rendered by `kubectl kustomize`, each variant of tests/k8s_render.py (once per test module)."""
    return render_all(tmp_path_factory.mktemp("kustomize"))


@pytest.fixture(params=VARIANTS)
def k8s_manifests(request: pytest.FixtureRequest, k8s_rendered: dict[str, list[dict]]) -> list[dict]:
    """One variant's objects: a test taking it runs for each."""
    return k8s_rendered[request.param]
