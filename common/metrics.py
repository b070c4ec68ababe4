"""Metrics shared by every domain: quality, agreement, calibration, size, speed, cost."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from common.stats import gap_closure, mean_std  # noqa: F401 (the one statistics path)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions for {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def macro_f1(predictions: Tensor, labels: Tensor) -> float:
    """Macro-averaged F1 in [0, 1]: the F1 of each class, averaged with equal weight over the
    classes present in ``labels`` or ``predictions`` (scikit-learn's
    ``f1_score(average="macro")``). A class's F1 is ``2 TP / (2 TP + FP + FN)``; a class that
    is predicted but never right, or present but never predicted, scores 0. ``predictions``
    are class ids ``[N]`` or logits ``[N, C]`` (argmax taken). Unlike accuracy it does not
    let a majority class (SMS ham) hide a minority class the model misses."""
    pred = predictions.argmax(dim=-1) if predictions.dim() == 2 else predictions
    pred, labels = pred.reshape(-1).long().cpu(), labels.reshape(-1).long().cpu()
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise ValueError("macro-F1 of an empty set is undefined")
    classes = torch.unique(torch.cat([labels, pred]))
    scores = []
    for c in classes:
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn))  # > 0: c occurs in pred or labels
    return sum(scores) / len(scores)


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of inputs where student and teacher predict the same top-1 class."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}"
        )
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of
    ``|bin| / n * |accuracy(bin) - mean confidence(bin)|``."""
    probs = logits.float().softmax(dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).float()
    # Bins are (lo, hi]; confidence is always > 0, so the first bin starts at 0 exclusive.
    bins = torch.clamp((confidence * n_bins).ceil().long() - 1, 0, n_bins - 1)
    ece = torch.zeros(())
    n = labels.numel()
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        if count:
            gap = (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            ece += count / n * gap
    return ece.item()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers as stored (dtype-aware, shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class SpeedResult:
    """Median seconds per call over repeats, and items per second at that median."""

    batch_size: int
    median_s: float
    items_per_s: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def measure_speed(
    fn: Callable[[], Any], batch_size: int, warmup: int = 3, repeats: int = 10
) -> SpeedResult:
    """Time ``fn()`` (one forward of ``batch_size`` items): ``warmup`` untimed calls, then the
    median of ``repeats`` timed calls. The median resists the odd slow call (GC, another
    process) that a mean would absorb."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return SpeedResult(batch_size, median, batch_size / median if median > 0 else math.inf, repeats)


def measure_model_speed(
    model: nn.Module, example: Tensor | dict[str, Tensor], warmup: int = 3, repeats: int = 10
) -> SpeedResult:
    """:func:`measure_speed` of ``model(example)`` (or ``model(**example)``) in eval mode."""
    was_training = model.training
    model.eval()
    batch = example if isinstance(example, Tensor) else next(iter(example.values()))
    try:
        call = (
            (lambda: model(example)) if isinstance(example, Tensor) else (lambda: model(**example))
        )
        return measure_speed(call, batch.shape[0], warmup, repeats)
    finally:
        model.train(was_training)


def speed_profile(
    model: nn.Module,
    one: Tensor | dict[str, Tensor],
    many: Tensor | dict[str, Tensor],
    unit: str = "items/s",
    repeats: int = 20,
) -> dict[str, Any]:
    """Batch-1 latency and large-batch throughput of ``model`` (medians), in the shape every
    domain stores as ``teacher.speed`` / ``student.speed`` in results.json:
    ``{"latency_b1_ms", "throughput", "batch", "unit"}``. Time teacher and student in the same
    run on the same device (their ratio is what a report compares)."""
    single = measure_model_speed(model, one, warmup=5, repeats=repeats)
    batched = measure_model_speed(model, many, warmup=2, repeats=max(3, repeats // 4))
    return {
        "latency_b1_ms": single.median_s * 1e3,
        "throughput": batched.items_per_s,
        "batch": batched.batch_size,
        "unit": unit,
    }


def count_flops(model: nn.Module, example: Tensor | dict[str, Tensor]) -> int | None:
    """Forward FLOPs for one call, counted by ``torch.utils.flop_counter``.

    Returns None when the counter cannot count the model (it knows matmul/conv-type ops;
    a model made only of ops it does not know would report 0, which we also turn into None).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if isinstance(example, Tensor):
                model(example)
            else:
                model(**example)
        flops = int(counter.get_total_flops())
    except Exception:  # an uncountable model is "unknown", not a crash
        return None
    finally:
        model.train(was_training)
    return flops or None


def classification_metrics(
    logits: Tensor,
    labels: Tensor,
    prefix: str,
    teacher_logits: Tensor | None = None,
    with_macro_f1: bool = False,
) -> dict[str, float]:
    """``{prefix}/accuracy`` and ``/ece``, plus ``/agreement`` with the teacher's logits and,
    with ``with_macro_f1``, ``/macro_f1`` (:func:`macro_f1`; NLP records it: its tweets and SMS
    classes are unbalanced)."""
    metrics = {
        f"{prefix}/accuracy": accuracy(logits, labels),
        f"{prefix}/ece": expected_calibration_error(logits, labels),
    }
    if with_macro_f1:
        metrics[f"{prefix}/macro_f1"] = macro_f1(logits, labels)
    if teacher_logits is not None:
        metrics[f"{prefix}/agreement"] = agreement(logits, teacher_logits)
    return metrics
