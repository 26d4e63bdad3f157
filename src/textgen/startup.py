"""Checks and process settings applied when a worker starts."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

import torch

from .config import Settings

logger = logging.getLogger(__name__)


class AuthNotConfigured(RuntimeError):
    pass


def check_auth_configured(settings: Settings) -> None:
    """Secure by default: no key and no explicit opt-out means no start."""
    if settings.auth_disabled:
        logger.warning("!!! AUTH_DISABLED=true: every route is open to anyone who can reach this port !!!")
        return
    if not settings.auth_configured():
        raise AuthNotConfigured(
            "no API key configured: set API_KEY (or API_KEYS, or API_KEYS_FILE), "
            "or set AUTH_DISABLED=true to serve without authentication"
        )


def configure_torch(settings: Settings) -> None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def is_serve_command() -> bool:
    """True in the `bentoml serve` CLI process, which imports the service before it spawns workers.

    A worker whose `__init__` raises is restarted by BentoML forever, so configuration errors are
    raised here, where they end the command; `bentoml build` imports the service too and must not need keys.
    """
    return len(sys.argv) > 1 and Path(sys.argv[0]).name == "bentoml" and sys.argv[1] == "serve"


def freeze_startup_objects() -> None:
    """Exclude what startup created (libraries, model, tokenizer: ~440k objects) from garbage collection.

    A full collection walks every tracked object; over those it took 260-280 ms here, during which the
    event loop, and so `/health`, stands still. Later objects are collected as usual.
    """
    gc.collect()
    gc.freeze()
