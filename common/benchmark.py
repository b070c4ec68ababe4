"""Pieces every domain's benchmark script shares: per-step timing through the shared loop,
peak memory, and running each measurement in a fresh process (so its peak is its own)."""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
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


def time_steps(
    *,
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    loss: Any,
    adapter: Any,
    loader: Any,
    warmup: int,
    steps: int,
    lr: float,
    weight_decay: float,
) -> dict[str, Any]:
    """Train ``student`` for ``warmup + steps`` steps with common's recipe (AdamW, one-cycle;
    no evaluation, checkpoints or logs) and return the timed steps' median/mean and this
    process's peak memory."""
    from common.recipe import Recipe, train

    timer = StepTimer()
    recipe = Recipe(
        name="benchmark",
        run_dir=Path("."),
        epochs=0,
        lr=lr,
        weight_decay=weight_decay,
        max_steps=warmup + steps,
        checkpoints=False,
        logs=False,
    )
    train(student, loss, adapter, loader, None, recipe, teacher, extra_callbacks=[timer])
    return {**timer.summary(warmup), **peak_memory()}


@dataclass
class BenchmarkArgs:
    """What every domain's benchmark script takes besides its teacher, student and data size."""

    warmup_steps: int = 10
    """Untimed steps first (allocator, kernels, caches)."""
    steps: int = 60
    """Timed steps per configuration."""
    threads: int | None = None
    """torch threads in each measurement; unset: torch's default (the machine's cores)."""
    cache_dir: Path | None = None
    """Where the benchmark's teacher cache goes; unset: runs/benchmark/<domain>/cache."""
    out: Path | None = None
    """Where the figures are written as JSON; unset: runs/benchmark/<domain>/benchmark.json."""

    def paths(self, domain: str) -> tuple[Path, Path]:
        """The cache folder and the JSON file, defaults filled in for ``domain``."""
        root = Path("runs/benchmark") / domain
        return self.cache_dir or root / "cache", self.out or root / "benchmark.json"


CONFIGS = ("student alone", "kd, live teacher", "kd, warm cache")
"""The configurations every domain benchmark times, in this order."""


def run_configs(
    measure: Callable[[str, Any], dict[str, Any]], args: Any, configs: tuple[str, ...] = CONFIGS
) -> dict[str, Any]:
    """``measure(config, args)`` for each of ``configs`` (:data:`CONFIGS` and any a domain
    adds), each in a fresh process."""
    steps = {}
    for config in configs:
        print(f"measuring: {config} ({args.warmup_steps} + {args.steps} steps) ...", flush=True)
        steps[config] = in_fresh_process(measure, config, args)
    return steps


def summarize(
    steps: dict[str, dict[str, Any]], speed: dict[str, dict[str, Any]], batch: str, unit: str
) -> dict[str, float]:
    """Print the step costs (over the student alone) and the inference comparison; return the
    ratios. ``batch`` describes a training batch ("128 images"), ``unit`` the items/s unit."""
    base = steps["student alone"]["step_ms_median"]
    t, s = speed["teacher"], speed["student"]
    named = {"kd, live teacher": "kd_live_over_alone", "kd, warm cache": "kd_cached_over_alone"}
    ratios = {
        # A configuration a run leaves out (e.g. live KD across tokenizers) has no ratio.
        **{r: steps[c]["step_ms_median"] / base for c, r in named.items() if c in steps},
        "throughput_student_over_teacher": s["throughput"] / t["throughput"],
        "latency_teacher_over_student": t["latency_b1_ms"] / s["latency_b1_ms"],
    }
    timed = steps["student alone"]["timed_steps"]
    print(f"\nTraining step, batch of {batch} (median of {timed} steps):")
    for config, r in steps.items():
        print(
            f"  {config:18s} {r['step_ms_median']:8.1f} ms  ({r['step_ms_median'] / base:4.2f}x "
            f"student alone)  peak RSS {r['peak_rss_mib']:7.0f} MiB"
        )
    for config, r in steps.items():
        c = r.get("cache")
        if c and "hit" in c:  # the teacher's outputs pass: its time (a miss) and size
            what = "read from disk" if c["hit"] else "computed, the teacher's pass"
            print(
                f"  {config}: cache {what}: {c['examples']:,} examples in {c['seconds']:.1f} s, "
                f"{c['size_bytes'] / 2**20:.2f} MiB"
            )
    print(
        f"Inference: batch-1 latency teacher {t['latency_b1_ms']:.2f} ms vs student "
        f"{s['latency_b1_ms']:.2f} ms ({ratios['latency_teacher_over_student']:.1f}x); "
        f"batch-{t['batch']} throughput teacher {t['throughput']:.0f} vs student "
        f"{s['throughput']:.0f} {unit} ({ratios['throughput_student_over_teacher']:.1f}x)"
    )
    return ratios


def run_benchmark(
    args: Any,
    measure: Callable[[str, Any], dict[str, Any]],
    inference: Callable[[Any], dict[str, Any]],
    what: str,
    unit: str,
    configs: tuple[str, ...] = CONFIGS,
) -> dict[str, Any]:
    """Every step configuration (each in a fresh process), then teacher vs student inference
    in one more: the figures (``args``, ``steps``, ``inference``, ``ratios``), printed."""
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    steps = run_configs(measure, args, configs)
    speed = in_fresh_process(inference, args)
    results.update(steps=steps, inference=speed)
    results["ratios"] = summarize(steps, speed, what, unit)
    return results


def check_teacher_file(path: Path, train_command: str) -> None:
    """Refuse a missing teacher before any measurement, naming the command that trains one."""
    from common.errors import ConfigError

    if not path.is_file():
        raise ConfigError(
            f"no teacher at {path.parent}; train one first: {train_command} (or pass --teacher)"
        )


def measure_config(
    config: str,
    *,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    adapter: Any,
    loader: Any,
    kd_loss: Any,
    build_cache: Callable[[], tuple[Any, Any]],
    args: Any,
    lr: float,
    weight_decay: float,
) -> dict[str, Any]:
    """One of :data:`CONFIGS` timed with :func:`time_steps`: the student alone (``ce``), KD
    with the live teacher, or KD with the teacher's outputs from a warm cache
    (``build_cache() -> (cache, stats)``, built before timing starts)."""
    from common.cache import CachedTeacherAdapter
    from common.losses import build_loss

    cache_s = None
    if config == "student alone":
        loss, teacher = build_loss("ce"), None
    else:
        loss = kd_loss
        if config == "kd, warm cache":
            teacher, stats = build_cache()
            cache_s = stats.to_dict()
            adapter = CachedTeacherAdapter(adapter)
    timing = time_steps(
        student=student,
        teacher=teacher,
        loss=loss,
        adapter=adapter,
        loader=loader,
        warmup=args.warmup_steps,
        steps=args.steps,
        lr=lr,
        weight_decay=weight_decay,
    )
    return {"config": config, **timing, "cache": cache_s}
