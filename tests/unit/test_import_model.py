"""scripts/import_model.py without the hub: store names from hub ids, and which repository files a snapshot takes."""

from __future__ import annotations

from pathlib import Path

import pytest
from bentoml._internal.tag import validate_tag_str
from huggingface_hub.utils import filter_repo_objects

from scripts import import_model

# Files as they lie in hub repositories of causal LMs (distilgpt2, SmolLM2, Llama, Mistral, exports).
KEPT = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-00001-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/tool_use.jinja",
    "vocab.json",
    "merges.txt",
    "README.md",
]
LEFT_OUT = [
    "pytorch_model.bin",
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model.bin.index.json",
    "training_args.bin",
    "flax_model.msgpack",
    "tf_model.h5",
    "rust_model.ot",
    "model.onnx",
    "onnx/model.onnx",
    "onnx/decoder_model_merged_quantized.onnx",
    "onnx/model.onnx_data",
    "model.tflite",
    "smollm2-135m-q8_0.gguf",
    "original/consolidated.00.pth",
    "original/params.json",
    "original/tokenizer.model",
    "consolidated.safetensors",
    "coreml/text-generation/float32_model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
    "openvino/openvino_model.xml",
]


def test_a_snapshot_keeps_what_transformers_loads_and_leaves_other_formats_out():
    kept = list(filter_repo_objects(KEPT + LEFT_OUT, ignore_patterns=import_model.IGNORE_PATTERNS))
    assert kept == KEPT


@pytest.mark.parametrize(
    ("hub_id", "name"),
    [
        ("distilbert/distilgpt2", "distilgpt2"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b-instruct"),
        ("gpt2", "gpt2"),
        ("someone/My_Model v2+extra", "my_model-v2-extra"),
        ("org/-._Edge_", "edge"),
        ("org/" + "x" * 70 + "-y", "x" * 63),
    ],
)
def test_store_name_from_hub_id_is_a_valid_bentoml_name(hub_id, name):
    assert import_model.name_from_hub_id(hub_id) == name
    validate_tag_str(name)  # raises on a name BentoML refuses


def test_name_defaults_follow_the_hub_id_or_the_folder(tmp_path):
    assert import_model.parse_args([]).name == "distilgpt2"
    assert import_model.parse_args(["--hub-id", "HuggingFaceTB/SmolLM2-135M-Instruct"]).name == "smollm2-135m-instruct"
    assert import_model.parse_args(["--hub-id", "a/b", "--name", "mine"]).name == "mine"
    random = import_model.parse_args(["--source", "x", "--random-weights", "--hub-id", "a/b"])
    assert random.name == "distilgpt2-random"
    assert import_model.parse_args(["--source", str(tmp_path / "My_FineTune")]).name == "my_finetune"
    with pytest.raises(SystemExit):
        import_model.parse_args(["--hub-id", "org/..."])  # nothing left to name it after


def fake_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: list[str]) -> list[dict]:
    """Replace the hub with a snapshot folder holding `files`; returns the calls made to snapshot_download."""
    import huggingface_hub

    folder = tmp_path / "snapshots" / "0123abcd"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    calls: list[dict] = []

    def snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(folder)

    def model_info(*_, **__):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    return calls


def test_download_asks_for_the_ignore_list(tmp_path, monkeypatch):
    calls = fake_snapshot(tmp_path, monkeypatch, ["config.json", "model.safetensors", "chat_template.jinja"])
    folder, commit = import_model.download("org/model", "main")
    assert calls == [{"repo_id": "org/model", "revision": "main", "ignore_patterns": import_model.IGNORE_PATTERNS}]
    assert (folder.name, commit) == ("0123abcd", "0123abcd")  # offline metadata: the snapshot names the commit


def test_a_repository_without_safetensors_is_refused_and_nothing_stored(tmp_path, monkeypatch, capsys):
    fake_snapshot(tmp_path, monkeypatch, ["config.json", "tokenizer.json"])  # its *.bin weights were ignored
    monkeypatch.setattr(import_model, "existing", lambda name: None)
    monkeypatch.setattr(import_model, "save_to_store", lambda *a: pytest.fail("stored"))
    assert import_model.main(["--hub-id", "org/pickled-only"]) == 2
    err = capsys.readouterr().err
    assert "org/pickled-only@main has no safetensors weights" in err and "Nothing was stored" in err
