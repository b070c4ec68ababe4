"""FitNets hints (Romero et al. 2015): match intermediate features through a learned regressor."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import ShapeMismatchError
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, require


def make_regressor(
    student_dim: int,
    teacher_dim: int,
    kind: str = "conv",
    teacher_size: tuple[int, int] | None = None,
) -> nn.Module:
    """A projection from student width to teacher width, trained with the student.

    ``kind="conv"``: 1x1 convolution for feature maps ``[B, C, H, W]`` (channels first);
    with ``teacher_size``, the student map is first average-pooled to the teacher's (smaller)
    spatial size, so layers at different resolutions can be paired.
    ``kind="linear"``: linear map over the last dimension, for ``[B, L, D]`` or ``[B, D]``.
    """
    if kind == "conv":
        conv = nn.Conv2d(student_dim, teacher_dim, kernel_size=1, bias=False)
        if teacher_size is None:
            return conv
        return nn.Sequential(nn.AdaptiveAvgPool2d(tuple(teacher_size)), conv)
    if kind == "linear":
        return nn.Linear(student_dim, teacher_dim, bias=False)
    raise ValueError(f"unknown regressor kind {kind!r}; use 'conv' or 'linear'")


def hint_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    regressor: nn.Module | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error between ``regressor(student_features)`` and the teacher's features.

    ``mask`` (e.g. an attention mask ``[B, L]`` for token features ``[B, L, D]``) restricts
    the mean to real positions so padding does not count. The teacher is detached.
    """
    projected = regressor(student_features) if regressor is not None else student_features
    teacher_features = teacher_features.detach()
    if projected.shape != teacher_features.shape:
        fix = (
            "the regressor's output does not fit; check its in/out sizes"
            if regressor is not None
            else "pass a regressor, e.g. make_regressor(student_dim, teacher_dim), or tap "
            "layers whose shapes match"
        )
        raise ShapeMismatchError(
            f"hint_loss: student features {tuple(projected.shape)} vs teacher features "
            f"{tuple(teacher_features.shape)}; {fix}"
        )
    if mask is None:
        return F.mse_loss(projected, teacher_features)
    # Broadcast [B, L] over the trailing feature dimension(s).
    m = mask.to(projected.dtype).reshape(*mask.shape, *([1] * (projected.dim() - mask.dim())))
    sq = (projected - teacher_features).pow(2) * m
    denom = m.expand_as(sq).sum().clamp_min(1.0)
    return sq.sum() / denom


@LOSSES.register("hint")
class HintTerm(LossTerm):
    """:func:`hint_loss` between ``student[student_key]`` and ``teacher[teacher_key]``.

    Give ``student_dim`` and ``teacher_dim`` to learn a regressor (``kind`` as in
    :func:`make_regressor`); they are needed at construction so the regressor's parameters
    exist before the optimizer is built.
    """

    def __init__(
        self,
        student_key: str = "hint",
        teacher_key: str = "hint",
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        kind: str = "conv",
        mask_key: str | None = None,
        teacher_size: tuple[int, int] | list[int] | None = None,
    ) -> None:
        super().__init__()
        self.student_key, self.teacher_key, self.mask_key = student_key, teacher_key, mask_key
        self.regressor = (
            make_regressor(
                student_dim, teacher_dim, kind, tuple(teacher_size) if teacher_size else None
            )
            if student_dim is not None and teacher_dim is not None
            else None
        )

    def reads(self) -> Reads:
        return Reads(
            student=frozenset({self.student_key}),
            teacher=frozenset({self.teacher_key}),
            batch=frozenset({self.mask_key} if self.mask_key else ()),
        )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        mask = require(batch, self.mask_key, "batch", "hint") if self.mask_key else None
        return hint_loss(
            require(student, self.student_key, "student", "hint"),
            require(teacher, self.teacher_key, "teacher", "hint"),
            self.regressor,
            mask,
        )
