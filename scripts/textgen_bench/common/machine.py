"""How busy the machine was: our CPU use against everyone else's, so a noisy run is visible in its results."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from .records import CpuShare, MachineInfo


def _busy_cpu_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _process_trees(pids: list[int]) -> list[psutil.Process]:
    """These processes and all their live descendants, each once."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.Error:
            continue
    return list(procs.values())


def _tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes and all their live descendants, each counted once."""
    total = 0.0
    for proc in _process_trees(pids):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live descendants (`bentoml serve` runs the model in a child)."""
    total = 0
    for proc in _process_trees([pid]):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


# Other processes using more than this many cores make a run's timings unrepresentative.
BUSY_OTHERS_CORES = 0.25


def busy_warning(others_cores: float, cpu_count: int) -> str | None:
    if others_cores <= BUSY_OTHERS_CORES:
        return None
    return (
        f"WARNING: other processes used up to {others_cores:.1f} of {cpu_count} cores during the run;\n"
        "the numbers (and the targets) are not representative. Rerun on a quiet machine."
    )


class CpuWatch:
    """Filled in when its `watch` block ends."""

    result: CpuShare | None = None


@contextmanager
def watch_cpu(server_pid: int | None = None) -> Iterator[CpuWatch]:
    """Measure CPU cores used during the block by us (this process + the server tree) and by everything else.

    Server workers live for the whole block, so their CPU time is counted exactly; others' share is
    the machine's busy time minus ours, averaged over the wall time.
    """
    pids = [os.getpid()] + ([server_pid] if server_pid else [])
    watch = CpuWatch()
    load_before = os.getloadavg()[0]
    busy0, ours0, t0 = _busy_cpu_s(), _tree_cpu_s(pids), time.monotonic()
    yield watch
    wall = time.monotonic() - t0
    busy, ours = _busy_cpu_s() - busy0, _tree_cpu_s(pids) - ours0
    ours = max(0.0, ours)  # a server that died mid-block took its CPU time with it
    watch.result = CpuShare(
        wall_s=wall,
        ours_cores=ours / wall if wall else 0.0,
        others_cores=max(0.0, busy - ours) / wall if wall else 0.0,
        load_avg_1m_before=load_before,
        load_avg_1m_after=os.getloadavg()[0],
    )


def machine_info() -> MachineInfo:
    import torch

    return MachineInfo(
        cpu_count=os.cpu_count() or 0,
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        platform=platform.platform(),
        python=sys.version.split()[0],
        load_avg_at_start=os.getloadavg(),
    )
