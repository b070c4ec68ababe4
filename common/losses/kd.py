"""Logit distillation: Hinton et al. 2015 soft targets, and decoupled KD (Zhao et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ShapeMismatchError
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, check_positive, require


def _check_logits(student_logits: Tensor, teacher_logits: Tensor, what: str) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ShapeMismatchError(
            f"{what}: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ. The teacher must predict the same classes "
            "as the student: check the dataset's class count against the teacher checkpoint."
        )


def _as_rows(logits: Tensor) -> Tensor:
    # Token- or time-level logits [B, L, C] count each position as one row of the batch mean.
    return logits.reshape(-1, logits.shape[-1])


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's soft-target loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    The T^2 factor keeps the gradient scale independent of T, so the weight against the
    hard-label loss need not be retuned when T changes. The teacher is detached.
    """
    _check_logits(student_logits, teacher_logits, "kd_loss")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = F.log_softmax(_as_rows(student_logits) / temperature, dim=-1)
    t = F.log_softmax(_as_rows(teacher_logits).detach() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def kd_ce_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """``alpha * kd_loss + (1 - alpha) * cross_entropy(student, labels)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = kd_loss(student_logits, teacher_logits, temperature)
    hard = F.cross_entropy(_as_rows(student_logits), labels.reshape(-1))
    return alpha * soft + (1.0 - alpha) * hard


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): ``alpha * TCKD + beta * NCKD``, each scaled by T^2.

    TCKD matches the binary (target vs rest) probabilities; NCKD matches the distribution
    over the non-target classes alone, which classic KD down-weights by the teacher's
    confidence in the target.
    """
    _check_logits(student_logits, teacher_logits, "dkd_loss")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = _as_rows(student_logits) / temperature
    t = _as_rows(teacher_logits).detach() / temperature
    if labels.is_floating_point():
        raise ShapeMismatchError(
            "dkd_loss needs one integer class label per row (it splits the target class from "
            "the rest); soft labels, e.g. of mixed images, have none: use kd, or no mixup/cutmix"
        )
    labels = labels.reshape(-1)
    n, c = s.shape
    target = F.one_hot(labels, c).bool()

    # Drop the target column rather than masking it with a large negative number, which
    # would make 0 * log(0) terms appear.
    s_rest = s[~target].view(n, c - 1)
    t_rest = t[~target].view(n, c - 1)

    # Binary target/non-target distributions in log space: log(1 - p_target) is
    # logsumexp(non-target logits) - logsumexp(all logits), exact even when p_target -> 1.
    def log_binary(z: Tensor, z_rest: Tensor) -> Tensor:
        lse = torch.logsumexp(z, dim=-1)
        return torch.stack([z[target] - lse, torch.logsumexp(z_rest, dim=-1) - lse], dim=1)

    tckd = F.kl_div(
        log_binary(s, s_rest), log_binary(t, t_rest), log_target=True, reduction="batchmean"
    )
    nckd = F.kl_div(
        F.log_softmax(s_rest, dim=-1),
        F.log_softmax(t_rest, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return (alpha * tckd + beta * nckd) * temperature**2


@LOSSES.register("ce")
class CrossEntropyTerm(LossTerm):
    """Hard-label cross-entropy of the student: the student-alone baseline's loss. Float labels
    with a class axis are soft targets (class probabilities per row), e.g. mixed images'
    labels: each image's mixing weight times its one-hot label."""

    def __init__(
        self, student_key: str = "logits", labels_key: str = "labels", label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.student_key, self.labels_key = student_key, labels_key
        self.label_smoothing = label_smoothing

    def reads(self) -> Reads:
        return Reads(student=frozenset({self.student_key}), batch=frozenset({self.labels_key}))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        logits = require(student, self.student_key, "student", "ce")
        labels = require(batch, self.labels_key, "batch", "ce")
        rows = _as_rows(logits)
        if labels.is_floating_point():  # soft targets: a probability per class
            if labels.shape[-1] != rows.shape[-1]:
                raise ShapeMismatchError(
                    f"ce: soft labels {tuple(labels.shape)} need one probability per class "
                    f"({rows.shape[-1]}); give integer class labels or [batch, classes] targets"
                )
            targets = labels.reshape(-1, rows.shape[-1])
            return F.cross_entropy(rows, targets, label_smoothing=self.label_smoothing)
        return F.cross_entropy(rows, labels.reshape(-1), label_smoothing=self.label_smoothing)


@LOSSES.register("kd")
class KDTerm(LossTerm):
    """:func:`kd_loss` on ``student[key]`` vs ``teacher[key]``. Pair with ``ce`` for alpha."""

    def __init__(self, temperature: float = 4.0, key: str = "logits") -> None:
        super().__init__()
        check_positive("kd", temperature=temperature)
        self.temperature, self.key = temperature, key

    def reads(self) -> Reads:
        return Reads(student=frozenset({self.key}), teacher=frozenset({self.key}))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return kd_loss(
            require(student, self.key, "student", "kd"),
            require(teacher, self.key, "teacher", "kd"),
            self.temperature,
        )


@LOSSES.register("dkd")
class DKDTerm(LossTerm):
    """:func:`dkd_loss`; reads labels from the batch."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        key: str = "logits",
        labels_key: str = "labels",
    ) -> None:
        super().__init__()
        check_positive("dkd", temperature=temperature)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.key, self.labels_key = key, labels_key

    def reads(self) -> Reads:
        return Reads(
            student=frozenset({self.key}),
            teacher=frozenset({self.key}),
            batch=frozenset({self.labels_key}),
        )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return dkd_loss(
            require(student, self.key, "student", "dkd"),
            require(teacher, self.key, "teacher", "dkd"),
            require(batch, self.labels_key, "batch", "dkd"),
            self.alpha,
            self.beta,
            self.temperature,
        )
