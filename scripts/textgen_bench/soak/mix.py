"""The soak's request kinds, the mix it draws them from, and how a rejected client backs off."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Literal, get_args

Kind = Literal["generate", "stream", "disconnect_stream", "disconnect_generate", "fault", "fault_stream"]
KINDS: tuple[Kind, ...] = get_args(Kind)
STREAM_KINDS: frozenset[Kind] = frozenset({"stream", "disconnect_stream", "fault_stream"})
FAULT_KINDS: frozenset[Kind] = frozenset({"fault", "fault_stream"})
DEFAULT_MIX: dict[Kind, float] = {
    "generate": 0.40,
    "stream": 0.25,
    "disconnect_stream": 0.10,
    "disconnect_generate": 0.10,
    "fault": 0.075,
    "fault_stream": 0.075,
}

# --- request mix ----------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[Kind, float]:
    """`generate=0.5,stream=0.5` -> fractions summing to 1; kinds left out get 0."""
    mix: dict[Kind, float] = dict.fromkeys(KINDS, 0.0)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in mix:
            raise ValueError(f"unknown request kind {name!r}; choose from {', '.join(KINDS)}")
        mix[name] = float(value)  # type: ignore[index]
    return normalise_mix(mix)


def normalise_mix(mix: Mapping[Kind, float]) -> dict[Kind, float]:
    total = sum(mix.values())
    if total <= 0 or min(mix.values()) < 0:
        raise ValueError("the mix needs non-negative fractions and at least one above 0")
    return {kind: mix.get(kind, 0.0) / total for kind in KINDS}


def without_faults(mix: Mapping[Kind, float]) -> dict[Kind, float]:
    return normalise_mix({k: (0.0 if k in FAULT_KINDS else v) for k, v in mix.items()})


def pick_kind(mix: Mapping[Kind, float], rng: random.Random) -> Kind:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


# --- back-off -------------------------------------------------------------------------------------


def backoff_s(retry_after: str | None, rejections: int, rng: random.Random, cap_s: float, jitter: float = 0.5) -> float:
    """Wait before retrying: the server's `Retry-After` (seconds), else 0.1 s doubling per rejection in a row;
    capped at `cap_s`, then up to `jitter` more (a fraction), so rejected clients do not return in lockstep."""
    try:
        base = float(retry_after) if retry_after is not None else math.nan
    except ValueError:  # an HTTP date: not sent by this server; fall back
        base = math.nan
    if not base >= 0:
        base = 0.1 * 2 ** min(max(rejections - 1, 0), 10)
    return min(base, cap_s) * (1 + jitter * rng.random())
