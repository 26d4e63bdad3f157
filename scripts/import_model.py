#!/usr/bin/env python3
"""Put a causal LM, or a LoRA adapter for one, into the BentoML model store.

    python scripts/import_model.py                                  # distilbert/distilgpt2 from the hub
    python scripts/import_model.py --hub-id HuggingFaceTB/SmolLM2-135M-Instruct   # stored as smollm2-135m-instruct
    python scripts/import_model.py --source ./my-model              # a local folder with weights
    python scripts/import_model.py --source DIR --random-weights    # config + tokenizer, seeded random weights
    python scripts/import_model.py --source model.Q4_1.gguf --name NAME           # a GGUF file, dequantized
    python scripts/import_model.py --source ./my-adapter --name NAME              # a PEFT LoRA adapter folder
    MLFLOW_TRACKING_URI=... python scripts/import_model.py --mlflow models:/NAME/VERSION   # or @ALIAS, runs:/ID/PATH

From the hub it downloads the whole repository except weights in other formats than safetensors and
exports (ONNX, TFLite, GGUF, Core ML, OpenVINO, original/, consolidated*), so that tokenizer files and
chat templates come along whatever their names. Pickled weights (*.bin, *.pt, *.pth, *.ckpt) are never
read, from any source, since loading them can run code.

The store model records where its weights came from in its labels (shown by /model-info) and metadata: hub
id and revision, local path, GGUF file and quantization, MLflow tracking URI (credentials removed), registered
name, version and run, or random. A LoRA adapter is stored as its files with the labels kind: lora-adapter,
base_model, lora_rank, lora_alpha and target_modules. An existing model is kept unless --force.
The sources live in scripts/textgen_import/; GGUF and MLflow need requirements-import.txt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from textgen.serving.model_store import save_to_store
from textgen_import import gguf_file, hub, local, lora, mlflow_source
from textgen_import.common import ImportRefused, LoadedModel, store_files, tag_name

DEFAULT_HUB_ID = "distilbert/distilgpt2"
DEFAULT_NAME = "distilgpt2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub-id", default=DEFAULT_HUB_ID, help="Hugging Face hub repository (default: %(default)s)")
    parser.add_argument("--revision", default="main", help="hub branch, tag or commit (default: %(default)s)")
    parser.add_argument(
        "--source", type=Path, help="instead of the hub: a model folder, a LoRA adapter folder or a .gguf file"
    )
    parser.add_argument("--mlflow", metavar="URI", help=f"instead of the hub: MLflow's {mlflow_source.URI_FORMS}")
    parser.add_argument("--random-weights", action="store_true", help="random init from --source's config.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default: %(default)s)")
    parser.add_argument(
        "--name",
        help=f"store name (default: the last part of --hub-id or --source as a tag name, {DEFAULT_NAME} for "
        f"{DEFAULT_HUB_ID}; {DEFAULT_NAME}-random with --random-weights; the registered name with --mlflow)",
    )
    parser.add_argument("--force", action="store_true", help="import again even if the store has the model")
    args = parser.parse_args(argv)
    if args.mlflow and args.source is not None:
        parser.error("--mlflow and --source are two sources: give one")
    if args.random_weights and (args.source is None or args.source.is_file()):
        parser.error("--random-weights needs --source DIR (a folder with config.json and the tokenizer)")
    if args.source is not None and args.source.is_file() and args.source.suffix != ".gguf":
        parser.error(f"--source {args.source}: a file must be a .gguf file; otherwise give a folder")
    if args.name is None:
        try:
            args.name = default_name(args)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def default_name(args: argparse.Namespace) -> str:
    if args.random_weights:
        return f"{DEFAULT_NAME}-random"
    if args.mlflow:
        return mlflow_source.default_name(args.mlflow)
    if args.source is not None:
        source = args.source.resolve()
        return tag_name(str(source.with_suffix("") if source.suffix == ".gguf" else source))
    return tag_name(args.hub_id)


def existing(name: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(f"{name}:latest")
    except NotFound:
        return None


def load_source(args: argparse.Namespace) -> LoadedModel:
    if args.mlflow:
        return mlflow_source.load(args.mlflow)
    if args.source is None:
        return hub.load(args.hub_id, args.revision)
    if args.random_weights:
        return local.random_weights(args.source, args.seed)
    if args.source.suffix == ".gguf":
        return gguf_file.load(args.source)
    return local.load(args.source)


def import_model(args: argparse.Namespace) -> bentoml.Model:
    if args.source is not None and lora.is_adapter(args.source):
        files, provenance = lora.read(args.source)
        return store_files(args.name, files, provenance)
    loaded = load_source(args)
    found = loaded.provenance
    return save_to_store(args.name, loaded.model, loaded.tokenizer, found.source, found.labels, found.metadata)


def describe(stored: bentoml.Model) -> str:
    labels, meta = stored.info.labels, stored.info.metadata
    if labels.get("kind") == lora.KIND:
        what = f"LoRA adapter for {labels['base_model']}, rank {labels['lora_rank']}, on {labels['target_modules']}"
    else:
        what = f"{meta['architecture']}, {meta['parameters']:,} parameters, {meta['dtype']}"
    return f"stored {stored.tag}: {what}, weights: {meta['source']}"


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
    except ImportRefused as exc:
        print(f"error: {exc}. Nothing was stored.", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the optional packages of the GGUF and MLflow sources
        print(
            f"error: {exc}: GGUF and MLflow imports need `pip install -r requirements-import.txt`. Nothing was stored.",
            file=sys.stderr,
        )
        return 2
    print(describe(stored))
    return 0


if __name__ == "__main__":
    sys.exit(main())
