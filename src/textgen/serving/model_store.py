"""The model in the BentoML model store: find it by tag, save into it, load it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import bentoml
import torch
from bentoml.exceptions import NotFound
from pydantic import BaseModel, Field
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from textgen.engine.greedy_screen import GreedyScreen
from textgen.engine.packed_linear import can_pack, pack_linears, pad_small_products
from textgen.engine.quantization import check_quantizable, quantize_int8

logger = logging.getLogger(__name__)

IMPORT_HINT = (
    "import it with `python scripts/import_model.py` (hub), or offline with "
    "`python scripts/import_model.py --source DIR [--random-weights]`"
)


class ModelNotInStore(RuntimeError):
    pass


class ModelInfo(BaseModel):
    """The served model, as /model-info reports it."""

    tag: str
    source: str = Field(description="Where the weights came from: hub id@revision, a local path, or random.")
    labels: dict[str, str]
    architecture: str
    parameters: int
    context_length: int
    dtype: str
    quantization: str = Field("none", description="none, or int8 (dynamic int8 linear layers).")
    device: str


def find_model(tag: str) -> bentoml.Model:
    """The store's model for `tag`, or an error that says how to import it."""
    try:
        return bentoml.models.get(tag)
    except (NotFound, ValueError) as exc:
        raise ModelNotInStore(f"model '{tag}' is not in the BentoML model store; {IMPORT_HINT}") from exc


def resolve_model_ref(tag: str) -> bentoml.models.BentoModel:
    """A service-level model reference (so `bentoml build` packs the model), checked against the local store.

    `BentoModel` alone would look for a missing tag in BentoCloud and fail with an unrelated message.
    """
    stored = find_model(tag)
    if stored.info.labels.get("kind") == "lora-adapter":
        base = stored.info.labels.get("base_model", "its base model")
        raise ModelNotInStore(f"'{tag}' is a LoRA adapter: serve {base} and set LORA_ADAPTERS={stored.tag.name}")
    return bentoml.models.BentoModel(str(stored.tag))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_to_store(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    labels: dict[str, str],
    metadata: dict[str, Any],
) -> bentoml.Model:
    """Write model + tokenizer into a new store version, recording where the weights came from."""
    info = {
        "source": source,
        "architecture": type(model).__name__,
        "parameters": parameter_count(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "context_length": context_length(model),
        **metadata,
    }
    with bentoml.models.create(name=name, labels=labels, metadata=info) as stored:
        model.save_pretrained(stored.path)
        tokenizer.save_pretrained(stored.path)
    return bentoml.models.get(stored.tag)


def context_length(model: PreTrainedModel) -> int:
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the context length of {type(model).__name__}")


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype | str:
    if setting != "auto":
        return getattr(torch, setting)
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo
    greedy_screen: GreedyScreen | None = None  # greedy tokens from a bfloat16 screen of the LM head (exact)

    @property
    def context_length(self) -> int:
        return self.info.context_length


def _pad_small_products(model: PreTrainedModel) -> None:
    rows, times = pad_small_products(model)
    timed = ", ".join(f"{n}: {t * 1e3:.2f}" for n, t in times.items())
    logger.info("products of fewer than %d rows are padded to %d (LM head, ms by rows: %s)", rows, rows, timed)


def _greedy_screen(model: PreTrainedModel) -> GreedyScreen | None:
    screen, times = GreedyScreen.timed(model.get_output_embeddings())
    if times:
        timed = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in times.items())
        verdict = "greedy tokens come from a bfloat16 screen of the LM head" if screen else "no greedy screen"
        logger.info("%s (one row's argmax: %s)", verdict, timed)
    return screen


def load_model(
    stored: bentoml.Model,
    device_setting: str = "auto",
    dtype_setting: str = "auto",
    quantization: str = "none",
    pack: bool = True,
    pad_rows: bool = True,
    fuse_activations: bool = True,
    screen_greedy: bool = True,
) -> LoadedModel:
    """`quantization` "int8": dynamic int8 linear layers (CPU, float32). Otherwise `pack`: linear layers through
    oneDNN with prepacked weights where that pays (float32 on the CPU), and with `pad_rows`, products of a few rows
    padded to the row count oneDNN reads the weights fastest at (timed here, at load), with `fuse_activations`
    an MLP's activation applied by the linear layer before it, and with `screen_greedy` a GreedyScreen of the LM
    head where it is faster (timed here too)."""
    device = pick_device(device_setting)
    dtype = pick_dtype(dtype_setting, device)
    screen = None
    if quantization == "int8":
        check_quantizable(device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(stored.path)
    model = AutoModelForCausalLM.from_pretrained(stored.path, dtype=dtype).to(device).eval()
    parameters = parameter_count(model)  # before the layers are swapped: quantized ones hold no parameters
    if quantization == "int8":
        logger.info("quantized %d linear layers to int8 (MODEL_QUANTIZATION=int8)", quantize_int8(model))
    elif pack and can_pack(model):
        logger.info("packed %d linear layers for oneDNN", pack_linears(model, fuse_activations))
        if pad_rows:
            _pad_small_products(model)
        if screen_greedy:
            screen = _greedy_screen(model)
    meta = stored.info.metadata
    info = ModelInfo(
        tag=str(stored.tag),
        source=str(meta.get("source", "unknown")),
        labels={str(k): str(v) for k, v in stored.info.labels.items()},
        architecture=type(model).__name__,
        parameters=parameters,
        context_length=context_length(model),
        dtype=str(model.dtype).removeprefix("torch."),
        quantization=quantization,
        device=str(device),
    )
    logger.info(
        "loaded %s (%s, %d parameters, %s%s on %s, weights: %s)",
        info.tag,
        info.architecture,
        info.parameters,
        info.dtype,
        "" if quantization == "none" else f", {quantization} linear layers",
        info.device,
        info.source,
    )
    return LoadedModel(model, tokenizer, info, screen)
