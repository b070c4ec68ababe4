"""DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher"): match the
teacher's class probabilities by correlation, not exactly, within and across examples."""

from __future__ import annotations

import math

from torch import Tensor

from common.errors import ConfigError
from common.losses.kd import _as_rows, _check_logits
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, require


def _check_options(temperature: float, beta: float, gamma: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"dist: temperature must be a number > 0, e.g. 1.0; got {temperature}")
    for name, value in (("beta", beta), ("gamma", gamma)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"dist: {name} must be a number >= 0, e.g. 1.0; got {value}")


def pearson_rows(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``x`` with the matching row of ``y``, shape ``[N]``.

    The cosine of the mean-centred rows, with ``eps`` added to the product of their norms so a
    constant row gives 0 instead of NaN.
    """
    x = x - x.mean(dim=-1, keepdim=True)
    y = y - y.mean(dim=-1, keepdim=True)
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1) + eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> Tensor:
    """``T^2 * (beta * inter + gamma * intra)`` on ``p = softmax(logits / T)``.

    Logits ``[..., C]`` are flattened to rows ``[N, C]`` (one per example or position).
    ``inter = 1 - mean_n pearson(p_s[n, :], p_t[n, :])`` (each example's ranking of the
    classes); ``intra = 1 - mean_c pearson(p_s[:, c], p_t[:, c])`` (each class's ranking of
    the examples in the batch, so it needs more than one row). The teacher is detached.
    """
    _check_logits(student_logits, teacher_logits, "dist_loss")
    _check_options(temperature, beta, gamma)
    p_s = (_as_rows(student_logits) / temperature).softmax(dim=-1)
    p_t = (_as_rows(teacher_logits).detach() / temperature).softmax(dim=-1)
    inter = 1 - pearson_rows(p_s, p_t).mean()
    intra = 1 - pearson_rows(p_s.T, p_t.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


@LOSSES.register("dist")
class DISTTerm(LossTerm):
    """:func:`dist_loss` on ``student[key]`` vs ``teacher[key]``."""

    def __init__(
        self, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0, key: str = "logits"
    ) -> None:
        super().__init__()
        _check_options(temperature, beta, gamma)
        self.temperature, self.beta, self.gamma, self.key = temperature, beta, gamma, key

    def reads(self) -> Reads:
        return Reads(student=frozenset({self.key}), teacher=frozenset({self.key}))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return dist_loss(
            require(student, self.key, "student", "dist"),
            require(teacher, self.key, "teacher", "dist"),
            self.temperature,
            self.beta,
            self.gamma,
        )
