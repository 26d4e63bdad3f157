"""scripts/import_model.py without the hub: store names, which repository files a snapshot takes, and the checks
of each source that need no model: MLflow URIs and credentials, LoRA adapter configs, GGUF and MLflow refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from bentoml._internal.tag import validate_tag_str
from huggingface_hub.utils import filter_repo_objects

from scripts import import_model
from textgen_import import common, hub, lora, mlflow_source

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
    kept = list(filter_repo_objects(KEPT + LEFT_OUT, ignore_patterns=hub.IGNORE_PATTERNS))
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
    assert common.tag_name(hub_id) == name
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
    folder, commit = hub.download("org/model", "main")
    assert calls == [{"repo_id": "org/model", "revision": "main", "ignore_patterns": hub.IGNORE_PATTERNS}]
    assert (folder.name, commit) == ("0123abcd", "0123abcd")  # offline metadata: the snapshot names the commit


def test_a_repository_without_safetensors_is_refused_and_nothing_stored(tmp_path, monkeypatch, capsys):
    fake_snapshot(tmp_path, monkeypatch, ["config.json", "tokenizer.json"])  # its *.bin weights were ignored
    monkeypatch.setattr(import_model, "existing", lambda name: None)
    monkeypatch.setattr(import_model, "save_to_store", lambda *a: pytest.fail("stored"))
    assert import_model.main(["--hub-id", "org/pickled-only"]) == 2
    err = capsys.readouterr().err
    assert "org/pickled-only@main has no safetensors weights" in err and "Nothing was stored" in err


def test_default_names_of_the_other_sources(tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    assert import_model.parse_args(["--source", str(gguf)]).name == "smollm2-135m-instruct.q4_1"
    assert import_model.parse_args(["--mlflow", "models:/Tiny_Model/3"]).name == "tiny_model"
    assert import_model.parse_args(["--mlflow", "models:/tiny@champion"]).name == "tiny"
    assert import_model.parse_args(["--mlflow", "runs:/0123456789abcdef0123/model"]).name == "mlflow-run-0123456789ab"
    with pytest.raises(SystemExit):
        import_model.parse_args(["--mlflow", "s3://bucket/model"])  # not a model URI
    with pytest.raises(SystemExit):
        import_model.parse_args(["--mlflow", "models:/a/1", "--source", str(tmp_path)])  # two sources
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SystemExit):
        import_model.parse_args(["--source", str(tmp_path / "weights.bin"), "--name", "x"])  # a file, not a GGUF


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("http://alice:s3cret@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://token@mlflow.example.com/api?token=s3cret&x=1#s3cret", "https://mlflow.example.com/api"),
        ("https://user:p%40ss@host:8443/mlflow", "https://host:8443/mlflow"),
        ("https://a:b@c@host/", "https://host/"),  # an unescaped @ in the password
        ("postgresql://mlflow:s3cret@db:5432/mlflow?sslmode=require&password=s3cret", "postgresql://db:5432/mlflow"),
        ("https://storage.example.com/mlflow?sv=2024&sig=s3cret", "https://storage.example.com/mlflow"),
        ("sqlite:////tmp/run/mlflow.db", "sqlite:////tmp/run/mlflow.db"),  # nothing to remove, nothing broken
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("databricks://profile:prefix", "databricks://profile:prefix"),
        ("file:///srv/mlruns", "file:///srv/mlruns"),
        ("./mlruns", "./mlruns"),
    ],
)
def test_tracking_uris_lose_their_credentials(uri, redacted):
    assert mlflow_source.redact_uri(uri) == redacted


def write_adapter(folder: Path, weights: str = "adapter_model.safetensors", **config) -> Path:
    folder.mkdir()
    defaults = {"peft_type": "LORA", "base_model_name_or_path": "tiny-gpt2", "r": 8, "lora_alpha": 16}
    (folder / "adapter_config.json").write_text(json.dumps(defaults | {"target_modules": ["v", "q"]} | config))
    (folder / weights).write_bytes(b"")
    return folder


def test_adapter_labels_come_from_its_config_as_the_loader_expects_them(tmp_path):
    folder = write_adapter(tmp_path / "a", base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    (folder / "README.md").write_text("card")
    (folder / "training_args.bin").write_bytes(b"")  # a pickle beside the weights: never copied
    files, provenance = lora.read(folder)
    assert [f.name for f in files] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert provenance.labels == {
        "kind": "lora-adapter",
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "lora_rank": "8",
        "lora_alpha": "16",
        "target_modules": "q,v",
        "weights": "pretrained",
        "source_kind": "local",
    }
    regex = write_adapter(tmp_path / "b", target_modules=r".*\.(q|v)_proj")
    assert lora.read(regex)[1].labels["target_modules"] == r".*\.(q|v)_proj"


@pytest.mark.parametrize(
    ("config", "weights", "message"),
    [
        ({}, "adapter_model.bin", "has no safetensors weights (it has pickled weights: adapter_model.bin)"),
        ({"peft_type": "IA3"}, "adapter_model.safetensors", "holds a IA3 adapter; only LoRA"),
        ({"base_model_name_or_path": None}, "adapter_model.safetensors", "has no base_model_name_or_path"),
        ({"target_modules": []}, "adapter_model.safetensors", "names no target_modules"),
    ],
)
def test_adapters_that_cannot_be_served_are_refused(tmp_path, config, weights, message):
    with pytest.raises(common.ImportRefused, match=re.escape(message)):
        lora.read(write_adapter(tmp_path / "a", weights, **config))


def write_mlmodel(folder: Path, flavors: dict) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": flavors}))
    return folder


def test_mlflow_models_without_transformers_weights_are_refused(tmp_path):
    with pytest.raises(common.ImportRefused, match="no MLmodel file"):
        mlflow_source.read_flavor(tmp_path, "runs:/r/model")
    sklearn = write_mlmodel(tmp_path / "sk", {"python_function": {}, "sklearn": {}})
    with pytest.raises(common.ImportRefused, match=r"transformers flavor .*python_function, sklearn"):
        mlflow_source.read_flavor(sklearn, "models:/sk/1")
    reference = {"transformers": {"source_model_name": "org/model", "source_model_revision": "abc123"}}
    with pytest.raises(common.ImportRefused, match=r"only a reference to hub model org/model@abc123"):
        mlflow_source.read_flavor(write_mlmodel(tmp_path / "ref", reference), "models:/ref/1")
    pickled = write_mlmodel(tmp_path / "pkl", {"transformers": {"model_binary": "model"}})
    (pickled / "model").mkdir()
    (pickled / "model/pytorch_model.bin").write_bytes(b"")
    with pytest.raises(common.ImportRefused, match=r"pickled weights: pytorch_model\.bin"):
        mlflow_source.read_flavor(pickled, "models:/pkl/1")
