"""scripts/import_model.py with a GGUF file and with a PEFT LoRA adapter folder, into temporary stores.

The GGUF file is written here with the `gguf` package's writer (Q8_0 matrices, a chat template) and read back by
the script through transformers; the adapter is made with PEFT. Both are real files of their formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from scripts import import_model as cli
from tests.conftest import load_tokenizer
from tests.gguf_support import write_gpt2_gguf
from tests.integration.conftest import CHAT_TEMPLATE, import_model, stored_version
from textgen_bench.common.lora import make_lora_adapter

PROMPT = "Once upon a time there was"  # GPT-2 token ids under 8192: the small GGUF vocabulary splits it alike
SMALL_VOCAB = 8193


def imported(tmp_path: Path, name: str, *args: str) -> tuple[str, Path, dict]:
    """scripts/import_model.py ARGS into a new store: its output, the folder of model `name` and its model.yaml."""
    home = tmp_path / "home"
    done = import_model(home, *args)
    version = stored_version(home, name)
    return done.stdout, version, yaml.safe_load((version / "model.yaml").read_text())


def greedy(model: PreTrainedModel, ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)[0].tolist()


def test_a_gguf_file_is_dequantized_into_the_store_with_its_quantization_and_template(tmp_path):
    torch.manual_seed(0)
    # n_positions stays 1024: transformers reads GPT-2's GGUF context length into n_ctx, not n_positions.
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=SMALL_VOCAB, eos_token_id=SMALL_VOCAB - 1)
    model = GPT2LMHeadModel(config).eval()
    tokenizer = load_tokenizer()
    gguf = tmp_path / "Tiny-GPT2.Q8_0.gguf"
    reference = write_gpt2_gguf(model, tokenizer, gguf, "Q8_0", chat_template=CHAT_TEMPLATE)

    stdout, version, info = imported(tmp_path, "tiny-gpt2.q8_0", "--source", str(gguf))

    assert "stored tiny-gpt2.q8_0:" in stdout and "GPT2LMHeadModel" in stdout
    assert info["labels"] == {
        "weights": "pretrained",
        "source_kind": "gguf",
        "gguf_file": "Tiny-GPT2.Q8_0.gguf",
        "gguf_quantization": "Q8_0",
    }
    assert info["metadata"]["local_path"] == str(gguf.resolve()) and len(info["metadata"]["gguf_sha256"]) == 64
    stored = AutoModelForCausalLM.from_pretrained(version).eval()
    # Exactly the weights of the file: the Q8_0 blocks dequantized (by gguf's numpy code for the reference).
    for name, weight in reference.state_dict().items():
        assert torch.equal(stored.state_dict()[name], weight), name
    assert not torch.equal(reference.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)
    stored_tokenizer = AutoTokenizer.from_pretrained(version)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert max(ids[0]) < SMALL_VOCAB - 1
    assert stored_tokenizer(PROMPT).input_ids == ids[0].tolist()  # the vocabulary and merges came through
    assert greedy(stored, ids) == greedy(reference, ids)
    messages = [{"role": "user", "content": "Hi"}]
    assert stored_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|user|>Hi\n<|assistant|>"
    )


def refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> str:
    """scripts/import_model.py's main(ARGS) in this process, which must refuse before it stores anything: its stderr."""
    monkeypatch.setattr(cli, "existing", lambda name: None)
    monkeypatch.setattr(cli, "save_to_store", lambda *a: pytest.fail("stored"))
    monkeypatch.setattr(cli, "store_files", lambda *a: pytest.fail("stored"))
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.endswith("Nothing was stored.\n")
    return err


def test_a_file_that_is_not_gguf_is_refused(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    assert "model.gguf is not a readable GGUF file" in refused(monkeypatch, capsys, "--source", str(fake))


def test_a_lora_adapter_is_stored_as_it_is_with_the_labels_of_its_base(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    adapter = make_lora_adapter(
        model, tmp_path / "My_Adapter", seed=3, r=4, target_modules=("c_proj", "c_attn"), base_name="tiny-gpt2"
    )

    stdout, version, info = imported(tmp_path, "tiny-lora", "--source", str(adapter), "--name", "tiny-lora")

    assert "stored tiny-lora:" in stdout and "LoRA adapter for tiny-gpt2, rank 4" in stdout
    assert info["labels"] == {
        "kind": "lora-adapter",
        "base_model": "tiny-gpt2",
        "lora_rank": "4",
        "lora_alpha": "8",
        "target_modules": "c_attn,c_proj",
        "weights": "pretrained",
        "source_kind": "local",
    }
    assert info["metadata"]["source"] == f"local:{adapter.resolve()}"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (version / name).read_bytes() == (adapter / name).read_bytes()
    # PEFT loads the store's folder, and the adapter changes the base model's output.
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    adapted = PeftModel.from_pretrained(build_base(model), version, adapter_name="tiny-lora").eval()
    with torch.no_grad():
        assert not torch.allclose(adapted(ids).logits, model(ids).logits, atol=1e-3)
    assert adapted.active_adapter == "tiny-lora"


def build_base(model: PreTrainedModel) -> PreTrainedModel:
    """A fresh copy of the base model: PEFT injects its layers into the model it is given."""
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def test_a_lora_adapter_with_pickled_weights_is_refused(tiny_model, tmp_path, monkeypatch, capsys):
    model, _ = tiny_model
    adapter = make_lora_adapter(model, tmp_path / "pickled", seed=3, base_name="tiny-gpt2")
    weights = adapter / "adapter_model.safetensors"
    torch.save(load_file(weights), adapter / "adapter_model.bin")  # what PEFT wrote before safetensors
    weights.unlink()
    err = refused(monkeypatch, capsys, "--source", str(adapter), "--name", "pickled-lora")
    assert "has no safetensors weights (it has pickled weights: adapter_model.bin)" in err
