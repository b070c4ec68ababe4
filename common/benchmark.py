"""Pieces every domain's benchmark script shares: per-step timing through the shared loop,
peak memory, and running each measurement in a fresh process (so its peak is its own)."""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import torch

from common.callbacks import Callback

T = TypeVar("T")


class StepTimer(Callback):
    """Wall time of every optimizer step of a :class:`~common.training.DistillationLoop`."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_train_begin(self, loop: Any) -> None:
        self._last = time.perf_counter()

    def on_step_end(self, loop: Any, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def summary(self, warmup: int) -> dict[str, float]:
        """Median and mean step time (ms) after ``warmup`` untimed steps."""
        timed = self.times[warmup:]
        if not timed:
            raise ValueError(f"no timed steps: {len(self.times)} steps, {warmup} warm-up")
        return {
            "step_ms_median": 1e3 * statistics.median(timed),
            "step_ms_mean": 1e3 * statistics.fmean(timed),
            "timed_steps": len(timed),
        }


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process (MiB), and peak CUDA memory when there is a GPU."""
    # ru_maxrss is in KiB on Linux.
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
    }


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a newly spawned process (``fn`` must be importable, args picklable)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()
