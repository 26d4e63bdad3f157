"""A Hugging Face hub repository: downloaded (safetensors only), then read by transformers."""

from __future__ import annotations

from pathlib import Path

from textgen_import.common import PICKLED, ImportRefused, LoadedModel, Provenance, require_safetensors

# What a snapshot leaves out (huggingface_hub's fnmatch patterns; `*` crosses `/`). An ignore list rather than
# an allow list: tokenizers and chat templates come in many file names (tokenizer.model, chat_template.jinja, ...).
IGNORE_PATTERNS = [
    *PICKLED,  # loading them can run code
    *("*.h5", "*.msgpack", "*.msgpack.index.json", "*.ot"),  # TensorFlow, Flax and Rust weights
    *("*.onnx", "*.onnx_data", "onnx/*", "*.tflite", "*.gguf", "*.mlmodel", "coreml/*", "openvino/*"),  # exports
    *("original/*", "consolidated*"),  # the authors' own checkpoint format, next to the transformers one
]


def download(hub_id: str, revision: str) -> tuple[Path, str]:
    """Fetch the repository (with progress bars); returns its folder and resolved commit."""
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(hub_id, revision=revision, ignore_patterns=IGNORE_PATTERNS)
    except (LocalEntryNotFoundError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImportRefused(
            f"cannot download {hub_id} from the Hugging Face hub ({reason}). Offline, import a local folder with "
            "--source DIR, a GGUF file with --source FILE.gguf, or DistilGPT-2's architecture with random weights "
            "with --source DIR --random-weights (stored as distilgpt2-random)"
        ) from exc
    require_safetensors(Path(folder), f"{hub_id}@{revision}")
    try:
        commit = model_info(hub_id, revision=revision).sha or revision
    except Exception:  # the snapshot folder is named after the commit
        commit = Path(folder).name
    return Path(folder), commit


def load(hub_id: str, revision: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, commit = download(hub_id, revision)
    return LoadedModel(
        AutoModelForCausalLM.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
        Provenance(
            f"hf://{hub_id}@{commit}",
            {"weights": "pretrained", "source_kind": "hub"},
            {"hub_id": hub_id, "revision": commit},
        ),
    )
