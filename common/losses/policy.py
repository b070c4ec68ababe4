"""Policy distillation (Rusu et al. 2015): match the teacher's action distribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ShapeMismatchError
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, check_positive, require


def policy_distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """``KL(softmax(teacher / tau) || softmax(student))`` over discrete actions, batch mean.

    As in Rusu et al., only the teacher is tempered: a small tau (they use 0.01 on DQN
    Q-values) sharpens the targets; with PPO logits tau = 1 copies the policy as it is.
    No T^2 factor, unlike :func:`~common.losses.kd.kd_loss`: the student is not tempered.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ShapeMismatchError(
            f"policy_distillation_loss: student logits {tuple(student_logits.shape)} vs teacher "
            f"{tuple(teacher_logits.shape)}; student and teacher need the same action space"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = F.log_softmax(student_logits.reshape(-1, student_logits.shape[-1]), dim=-1)
    t = F.log_softmax(
        teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]) / temperature, dim=-1
    )
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def gaussian_policy_kl(
    student_mean: Tensor,
    student_log_std: Tensor,
    teacher_mean: Tensor,
    teacher_log_std: Tensor,
) -> Tensor:
    """Closed-form ``KL(N_teacher || N_student)`` for diagonal Gaussians.

    Summed over action dimensions, averaged over the batch. Per dimension:
    ``log(s_s / s_t) + (s_t^2 + (m_t - m_s)^2) / (2 s_s^2) - 1/2``.
    Log-stds broadcast against the means (SB3 keeps one state-independent log-std vector).
    """
    if student_mean.shape != teacher_mean.shape:
        raise ShapeMismatchError(
            f"gaussian_policy_kl: student actions {tuple(student_mean.shape)} vs teacher "
            f"{tuple(teacher_mean.shape)}; student and teacher need the same action space"
        )
    t_mean, t_log_std = teacher_mean.detach(), teacher_log_std.detach()
    s_mean, s_log_std = torch.broadcast_tensors(student_mean, student_log_std)
    t_mean, t_log_std = torch.broadcast_tensors(t_mean, t_log_std)
    var_ratio = torch.exp(2 * (t_log_std - s_log_std))
    mean_term = (t_mean - s_mean).pow(2) * torch.exp(-2 * s_log_std)
    kl = (s_log_std - t_log_std) + 0.5 * (var_ratio + mean_term) - 0.5
    return kl.sum(-1).mean()


@LOSSES.register("policy_kl")
class PolicyDistillationTerm(LossTerm):
    """:func:`policy_distillation_loss` on ``student[key]`` vs ``teacher[key]``."""

    def __init__(self, temperature: float = 1.0, key: str = "logits") -> None:
        super().__init__()
        check_positive("policy_kl", temperature=temperature)
        self.temperature, self.key = temperature, key

    def reads(self) -> Reads:
        return Reads(student=frozenset({self.key}), teacher=frozenset({self.key}))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return policy_distillation_loss(
            require(student, self.key, "student", "policy_kl"),
            require(teacher, self.key, "teacher", "policy_kl"),
            self.temperature,
        )


@LOSSES.register("gaussian_kl")
class GaussianPolicyKLTerm(LossTerm):
    """:func:`gaussian_policy_kl` on outputs ``mean`` and ``log_std`` of both policies."""

    def __init__(self, mean_key: str = "mean", log_std_key: str = "log_std") -> None:
        super().__init__()
        self.mean_key, self.log_std_key = mean_key, log_std_key

    def reads(self) -> Reads:
        keys = frozenset({self.mean_key, self.log_std_key})
        return Reads(student=keys, teacher=keys)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        return gaussian_policy_kl(
            require(student, self.mean_key, "student", "gaussian_kl"),
            require(student, self.log_std_key, "student", "gaussian_kl"),
            require(teacher, self.mean_key, "teacher", "gaussian_kl"),
            require(teacher, self.log_std_key, "teacher", "gaussian_kl"),
        )
