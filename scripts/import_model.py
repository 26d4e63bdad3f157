#!/usr/bin/env python3
"""Put a Hugging Face causal LM into the BentoML model store.

    python scripts/import_model.py                                  # distilbert/distilgpt2 from the hub
    python scripts/import_model.py --source ./my-model              # a local folder with weights
    python scripts/import_model.py --source DIR --random-weights    # config + tokenizer, seeded random weights

The store model records where its weights came from (hub id and revision, local
path, or random) in its labels and metadata. An existing model is kept unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bentoml
import torch
from bentoml.exceptions import NotFound
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from textgen.serving.model_store import save_to_store

DEFAULT_HUB_ID = "distilbert/distilgpt2"
DEFAULT_NAME = "distilgpt2"


class HubUnreachable(RuntimeError):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub-id", default=DEFAULT_HUB_ID, help="Hugging Face hub repository (default: %(default)s)")
    parser.add_argument("--revision", default="main", help="hub branch, tag or commit (default: %(default)s)")
    parser.add_argument("--source", type=Path, help="local folder instead of the hub")
    parser.add_argument("--random-weights", action="store_true", help="random init from --source's config.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default: %(default)s)")
    parser.add_argument("--name", help=f"store name (default: {DEFAULT_NAME}, or {DEFAULT_NAME}-random)")
    parser.add_argument("--force", action="store_true", help="import again even if the store has the model")
    args = parser.parse_args(argv)
    if args.random_weights and args.source is None:
        parser.error("--random-weights needs --source DIR (a folder with config.json and the tokenizer)")
    if args.name is None:
        args.name = f"{DEFAULT_NAME}-random" if args.random_weights else DEFAULT_NAME
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
        folder = snapshot_download(hub_id, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except (LocalEntryNotFoundError, OSError) as exc:
        raise HubUnreachable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
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
    meta = stored.info.metadata
    print(
        f"stored {stored.tag}: {meta['architecture']}, {meta['parameters']:,} parameters, {meta['dtype']}, "
        f"weights: {meta['source']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
