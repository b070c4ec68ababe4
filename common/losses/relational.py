"""Relational distillation: match how the examples of a batch relate to each other, not the
outputs themselves, so student and teacher features may have any (different) widths.

- ``rkd``: relational KD (Park et al. 2019): pairwise distances, normalised by their mean
  (distance term), and the angles that every triplet of examples forms (angle term), each
  compared by a smooth L1 (Huber) loss.
- ``pkt``: probabilistic knowledge transfer (Passalis & Tefas 2018): each example's cosine
  similarities to the others, shifted to [0, 1] and normalised to a distribution; KL from the
  teacher's distribution to the student's.
- ``sp``: similarity-preserving KD (Tung & Mori 2019): the row-normalised batch Gram matrices
  of the two models, compared by a squared Frobenius norm over b².

Features ``[B, ...]`` are flattened per example; 4-D maps are global-average-pooled first
(``pool``), as the papers use penultimate embeddings. The teacher is detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ConfigError, ShapeMismatchError
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, require


def embed(x: Tensor, pool: bool = True) -> Tensor:
    """``[B, ...]`` -> ``[B, D]``: global average pooling of ``[B, C, H, W]`` maps (``pool``),
    then flattening."""
    if pool and x.dim() == 4:
        x = x.mean(dim=(2, 3))
    return x.reshape(len(x), -1).float()


def _pair(student: Tensor, teacher: Tensor, pool: bool, what: str) -> tuple[Tensor, Tensor]:
    if len(student) != len(teacher):
        raise ShapeMismatchError(
            f"{what}: student and teacher batches differ ({len(student)} vs {len(teacher)})"
        )
    if len(student) < 2:
        raise ShapeMismatchError(f"{what} relates examples to each other: batches need >= 2")
    return embed(student, pool), embed(teacher, pool).detach()


def rkd_distance_loss(student: Tensor, teacher: Tensor, pool: bool = True) -> Tensor:
    """Huber loss between the two models' pairwise-distance matrices, each divided by the
    mean of its off-diagonal distances."""
    s, t = _pair(student, teacher, pool, "rkd")

    def normalised(e: Tensor) -> Tensor:
        d = torch.cdist(e, e)
        off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
        return d / d[off].mean().clamp_min(1e-12)

    return F.smooth_l1_loss(normalised(s), normalised(t))


def rkd_angle_loss(student: Tensor, teacher: Tensor, pool: bool = True) -> Tensor:
    """Huber loss between the cosines of the angles ``e_i - e_j, e_k - e_j`` over all triplets
    (the unit difference vectors' Gram matrix around every anchor ``j``)."""
    s, t = _pair(student, teacher, pool, "rkd")

    def cosines(e: Tensor) -> Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i, D]
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)

    return F.smooth_l1_loss(cosines(s), cosines(t))


def pkt_loss(student: Tensor, teacher: Tensor, pool: bool = True, eps: float = 1e-7) -> Tensor:
    """``sum_ij q_ij log(q_ij / p_ij)`` over the batch, with ``p`` (student) and ``q``
    (teacher) each row's shifted cosine similarities ``(cos + 1) / 2`` normalised to sum to 1."""
    s, t = _pair(student, teacher, pool, "pkt")

    def conditional(e: Tensor) -> Tensor:
        e = F.normalize(e, p=2, dim=1)
        sim = (e @ e.T + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    p, q = conditional(s), conditional(t)
    return (q * torch.log((q + eps) / (p + eps))).sum()


def sp_loss(student: Tensor, teacher: Tensor, pool: bool = False) -> Tensor:
    """``||G_s - G_t||_F^2 / b^2`` with ``G = normalize_rows(F F^T)`` of the flattened
    features (the paper flattens activation maps, so ``pool`` is off by default)."""
    s, t = _pair(student, teacher, pool, "sp")
    g_s = F.normalize(s @ s.T, p=2, dim=1)
    g_t = F.normalize(t @ t.T, p=2, dim=1)
    return (g_s - g_t).pow(2).sum() / len(s) ** 2


def _check_weight(name: str, value: float, what: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{what}: {name} must be a number >= 0, e.g. 1.0; got {value}")


class _RelationalTerm(LossTerm):
    """A term on ``student[student_key]`` vs ``teacher[teacher_key]``."""

    name = ""

    def __init__(self, student_key: str, teacher_key: str, pool: bool) -> None:
        super().__init__()
        self.student_key, self.teacher_key, self.pool = student_key, teacher_key, pool

    def reads(self) -> Reads:
        return Reads(student=frozenset({self.student_key}), teacher=frozenset({self.teacher_key}))

    def _inputs(self, student: Outputs, teacher: Outputs | None) -> tuple[Tensor, Tensor]:
        return (
            require(student, self.student_key, "student", self.name),
            require(teacher, self.teacher_key, "teacher", self.name),
        )


@LOSSES.register("rkd")
class RKDTerm(_RelationalTerm):
    """``distance * rkd_distance_loss + angle * rkd_angle_loss`` (the paper's weights 25 and
    50 suit its embedding losses; set them against the other terms of a spec)."""

    name = "rkd"

    def __init__(
        self,
        distance: float = 1.0,
        angle: float = 2.0,
        student_key: str = "logits",
        teacher_key: str = "logits",
        pool: bool = True,
    ) -> None:
        super().__init__(student_key, teacher_key, pool)
        _check_weight("distance", distance, "rkd")
        _check_weight("angle", angle, "rkd")
        self.distance, self.angle = distance, angle

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        s, t = self._inputs(student, teacher)
        loss = s.new_zeros(())
        if self.distance:
            loss = loss + self.distance * rkd_distance_loss(s, t, self.pool)
        if self.angle:
            loss = loss + self.angle * rkd_angle_loss(s, t, self.pool)
        return loss


@LOSSES.register("pkt")
class PKTTerm(_RelationalTerm):
    """:func:`pkt_loss` between the two models' features."""

    name = "pkt"

    def __init__(
        self, student_key: str = "logits", teacher_key: str = "logits", pool: bool = True
    ) -> None:
        super().__init__(student_key, teacher_key, pool)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return pkt_loss(*self._inputs(student, teacher), pool=self.pool)


@LOSSES.register("sp")
class SPTerm(_RelationalTerm):
    """:func:`sp_loss` between the two models' features."""

    name = "sp"

    def __init__(
        self, student_key: str = "logits", teacher_key: str = "logits", pool: bool = False
    ) -> None:
        super().__init__(student_key, teacher_key, pool)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return sp_loss(*self._inputs(student, teacher), pool=self.pool)
