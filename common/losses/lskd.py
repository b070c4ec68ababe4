"""Logit standardization (Sun et al. 2024, "Logit Standardization in Knowledge
Distillation"): z-score both logit vectors, then Hinton KD, so the student matches the
teacher's logit relations rather than their range and scale."""

from __future__ import annotations

import math

from torch import Tensor

from common.errors import ConfigError
from common.losses.kd import _check_logits, kd_loss
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, require


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"lskd: temperature must be a number > 0, e.g. 2.0; got {temperature}")


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each logit vector over its classes (last dimension): ``(z - mean) / (std + eps)``.

    ``std`` is the population standard deviation (divides by C; ``unbiased=False``), so each
    standardized vector has mean 0 and variance 1. The authors' code uses torch's default
    unbiased std (divides by C - 1), which scales the standardized logits by
    ``sqrt((C - 1) / C)``, as if the softmax temperature were ``sqrt(C / (C - 1))`` times
    larger (5% for C = 10, under 1% for C >= 100).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, correction=0)
    return (logits - mean) / (std + eps)


def lskd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """``T^2 * KL(softmax(t_z/T) || softmax(s_z/T))``, batch mean, with ``s_z``, ``t_z`` the
    :func:`standardize_logits` of student and teacher logits ``[..., C]``.

    Invariant to adding a constant to, or positively scaling, either logit vector. The
    teacher is detached.
    """
    _check_logits(student_logits, teacher_logits, "lskd_loss")
    _check_temperature(temperature)
    return kd_loss(
        standardize_logits(student_logits),
        standardize_logits(teacher_logits.detach()),
        temperature,
    )


@LOSSES.register("lskd")
class LSKDTerm(LossTerm):
    """:func:`lskd_loss` on ``student[key]`` vs ``teacher[key]``. Pair with ``ce``."""

    def __init__(self, temperature: float = 2.0, key: str = "logits") -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.key = temperature, key

    def reads(self) -> Reads:
        return Reads(student=frozenset({self.key}), teacher=frozenset({self.key}))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return lskd_loss(
            require(student, self.key, "student", "lskd"),
            require(teacher, self.key, "teacher", "lskd"),
            self.temperature,
        )
