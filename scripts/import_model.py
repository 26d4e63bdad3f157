#!/usr/bin/env python3
"""Put a Hugging Face causal LM into the BentoML model store.

    python scripts/import_model.py                                  # distilbert/distilgpt2 from the hub
    python scripts/import_model.py --hub-id HuggingFaceTB/SmolLM2-135M-Instruct   # stored as smollm2-135m-instruct
    python scripts/import_model.py --source ./my-model              # a local folder with weights
    python scripts/import_model.py --source DIR --random-weights    # config + tokenizer, seeded random weights

From the hub it downloads the whole repository except weights in other formats than safetensors and
exports (ONNX, TFLite, GGUF, Core ML, OpenVINO, original/, consolidated*), so that tokenizer files and
chat templates come along whatever their names. Pickled weights (*.bin, *.pt, *.pth, *.ckpt) are never
downloaded, since loading them can run code: a hub model needs safetensors weights.

The store model records where its weights came from (hub id and revision, local
path, or random) in its labels and metadata. An existing model is kept unless --force.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import bentoml
import torch
from bentoml.exceptions import NotFound
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from textgen.serving.model_store import save_to_store

DEFAULT_HUB_ID = "distilbert/distilgpt2"
DEFAULT_NAME = "distilgpt2"
# What a snapshot leaves out (huggingface_hub's fnmatch patterns; `*` crosses `/`). An ignore list rather than
# an allow list: tokenizers and chat templates come in many file names (tokenizer.model, chat_template.jinja, ...).
IGNORE_PATTERNS = [
    *("*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt"),  # pickled weights: loading them can run code
    *("*.h5", "*.msgpack", "*.msgpack.index.json", "*.ot"),  # TensorFlow, Flax and Rust weights
    *("*.onnx", "*.onnx_data", "onnx/*", "*.tflite", "*.gguf", "*.mlmodel", "coreml/*", "openvino/*"),  # exports
    *("original/*", "consolidated*"),  # the authors' own checkpoint format, next to the transformers one
]
TAG_NAME_MAX = 63  # BentoML's limit on a tag's name


class HubUnreachable(RuntimeError):
    pass


class NoSafetensors(RuntimeError):
    pass


def name_from_hub_id(hub_id: str) -> str:
    """The store name for a hub repository (or a folder): its last path segment as a BentoML tag name.

    BentoML names are lower-case letters, digits and `-._` inside, at most 63 characters, starting and ending
    with a letter or digit: `HuggingFaceTB/SmolLM2-135M-Instruct` -> `smollm2-135m-instruct`.
    """
    name = re.sub(r"[^a-z0-9._-]+", "-", hub_id.rstrip("/").rsplit("/", 1)[-1].lower())
    name = name.strip("-._")[:TAG_NAME_MAX].rstrip("-._")
    if not name:
        raise ValueError(f"cannot make a model name of {hub_id!r}: pass --name")
    return name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub-id", default=DEFAULT_HUB_ID, help="Hugging Face hub repository (default: %(default)s)")
    parser.add_argument("--revision", default="main", help="hub branch, tag or commit (default: %(default)s)")
    parser.add_argument("--source", type=Path, help="local folder instead of the hub")
    parser.add_argument("--random-weights", action="store_true", help="random init from --source's config.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default: %(default)s)")
    parser.add_argument(
        "--name",
        help=f"store name (default: the last part of --hub-id or --source as a tag name, {DEFAULT_NAME} for "
        f"{DEFAULT_HUB_ID}; {DEFAULT_NAME}-random with --random-weights)",
    )
    parser.add_argument("--force", action="store_true", help="import again even if the store has the model")
    args = parser.parse_args(argv)
    if args.random_weights and args.source is None:
        parser.error("--random-weights needs --source DIR (a folder with config.json and the tokenizer)")
    if args.name is None:
        try:
            origin = str(args.source.resolve()) if args.source is not None else args.hub_id
            args.name = f"{DEFAULT_NAME}-random" if args.random_weights else name_from_hub_id(origin)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def existing(name: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(f"{name}:latest")
    except NotFound:
        return None


def download(hub_id: str, revision: str) -> tuple[Path, str]:
    """Fetch the repository (with progress bars); returns its folder and resolved commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(hub_id, revision=revision, ignore_patterns=IGNORE_PATTERNS)
    except (LocalEntryNotFoundError, OSError) as exc:
        raise HubUnreachable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    if not any(Path(folder).glob("*.safetensors")):
        raise NoSafetensors(
            f"{hub_id}@{revision} has no safetensors weights (pickled *.bin/*.pt weights are not downloaded: "
            "loading them can run code). Convert them yourself and import the folder with --source DIR"
        )
    from huggingface_hub import model_info

    try:
        commit = model_info(hub_id, revision=revision).sha or revision
    except Exception:  # the snapshot folder is named after the commit
        commit = Path(folder).name
    return Path(folder), commit


def import_model(args: argparse.Namespace) -> bentoml.Model:
    if args.random_weights:
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.source))
        tokenizer = AutoTokenizer.from_pretrained(args.source)
        source = f"random (seed {args.seed}, config from {args.source.resolve()})"
        labels = {"weights": "random", "source_kind": "random"}
        meta = {"seed": args.seed, "config_from": str(args.source.resolve())}
    elif args.source is not None:
        model = AutoModelForCausalLM.from_pretrained(args.source)
        tokenizer = AutoTokenizer.from_pretrained(args.source)
        source = f"local:{args.source.resolve()}"
        labels = {"weights": "pretrained", "source_kind": "local"}
        meta = {"local_path": str(args.source.resolve())}
    else:
        folder, commit = download(args.hub_id, args.revision)
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        source = f"hf://{args.hub_id}@{commit}"
        labels = {"weights": "pretrained", "source_kind": "hub"}
        meta = {"hub_id": args.hub_id, "revision": commit}
    return save_to_store(args.name, model, tokenizer, source, labels, meta)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    found = existing(args.name)
    if found is not None and not args.force:
        print(
            f"{found.tag} is already in the model store (weights: {found.info.metadata.get('source')}); "
            "nothing to do (--force imports again)"
        )
        return 0
    try:
        stored = import_model(args)
    except HubUnreachable as exc:
        print(
            f"error: cannot download {args.hub_id} from the Hugging Face hub ({exc}). Offline, import a local "
            "folder with --source DIR, or DistilGPT-2's architecture with random weights with "
            "--source DIR --random-weights (stored as distilgpt2-random). Nothing was stored.",
            file=sys.stderr,
        )
        return 2
    except NoSafetensors as exc:
        print(f"error: {exc}. Nothing was stored.", file=sys.stderr)
        return 2
    meta = stored.info.metadata
    print(
        f"stored {stored.tag}: {meta['architecture']}, {meta['parameters']:,} parameters, {meta['dtype']}, "
        f"weights: {meta['source']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
