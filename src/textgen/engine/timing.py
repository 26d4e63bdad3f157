"""Timing alternatives against each other at load (or in a script), on a machine whose speed drifts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch

K = TypeVar("K")


def time_in_turns(ways: Mapping[K, Callable[[], object]], rounds: int) -> dict[K, list[float]]:
    """Seconds each way took in each of `rounds` rounds. The ways take turns within a round, so a drift in the
    machine's speed touches every way alike; a first round warms up and does not count."""
    taken: dict[K, list[float]] = {key: [] for key in ways}
    with torch.inference_mode():
        for round_ in range(rounds + 1):
            for key, run in ways.items():
                started = time.perf_counter()
                run()
                if round_:
                    taken[key].append(time.perf_counter() - started)
    return taken
