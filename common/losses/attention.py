"""Attention transfer for CNNs (Zagoruyko & Komodakis 2017) and attention-distribution
matching for transformers (MiniLM, Wang et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ShapeMismatchError
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, require


def attention_map(features: Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> Tensor:
    """Spatial attention ``[B, H*W]``: channel mean of ``|f|^p``, L2-normalised per sample.

    With ``size``, the map is average-pooled to that (smaller) size before normalising.
    """
    if features.dim() != 4:
        raise ShapeMismatchError(
            f"attention_map expects feature maps [B, C, H, W], got {tuple(features.shape)}"
        )
    a = features.abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def attention_loss(
    student_features: Tensor, teacher_features: Tensor, p: float = 2.0, resize: bool = False
) -> Tensor:
    """Attention transfer: mean squared difference of normalised attention maps.

    Reduced as the authors' reference code does (mean over batch and positions; their total
    is ``beta / 2`` times the sum over pairs with beta = 1000). Channel counts may differ.
    Spatial sizes must match, unless ``resize`` average-pools the larger map to the smaller
    one (for a teacher whose layers run at other resolutions than the student's). The
    teacher is detached.
    """
    s_size, t_size = tuple(student_features.shape[2:]), tuple(teacher_features.shape[2:])
    if student_features.shape[0] != teacher_features.shape[0] or (s_size != t_size and not resize):
        raise ShapeMismatchError(
            f"attention_loss: student features {tuple(student_features.shape)} vs teacher "
            f"{tuple(teacher_features.shape)}: batch and spatial size (H, W) must match; "
            "tap layers of the same resolution, or pass resize=True"
        )
    size = min(s_size, t_size, key=lambda hw: hw[0] * hw[1])
    diff = attention_map(student_features, p, size) - attention_map(
        teacher_features.detach(), p, size
    )
    return diff.pow(2).mean()


def attention_kl_loss(
    student_attention: Tensor,
    teacher_attention: Tensor,
    attention_mask: Tensor | None = None,
    average_heads: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """KL(teacher || student) between attention distributions ``[B, heads, L, L]``.

    Inputs are probabilities (rows sum to 1), as Hugging Face returns with
    ``output_attentions=True``. The KL is taken over keys and averaged over batch, heads and
    real query positions (``attention_mask`` ``[B, L]``, 1 = token). With
    ``average_heads=True`` the maps are averaged over heads first, so student and teacher may
    have different head counts.
    """
    if average_heads:
        student_attention = student_attention.mean(dim=1, keepdim=True)
        teacher_attention = teacher_attention.mean(dim=1, keepdim=True)
    if student_attention.shape != teacher_attention.shape:
        raise ShapeMismatchError(
            f"attention_kl_loss: student attention {tuple(student_attention.shape)} vs teacher "
            f"{tuple(teacher_attention.shape)}; head counts differ? pass average_heads=True, "
            "and tokenize both with the same tokenizer and max length"
        )
    t = teacher_attention.detach()
    # Clamp before the log: masked keys have probability exactly 0.
    kl = (t * (t.clamp_min(eps).log() - student_attention.clamp_min(eps).log())).sum(-1)
    if attention_mask is None:
        return kl.mean()
    m = attention_mask.to(kl.dtype)[:, None, :].expand_as(kl)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


@LOSSES.register("at")
class AttentionTransferTerm(LossTerm):
    """:func:`attention_loss` summed over pairs of tapped feature maps.

    ``student_keys`` and ``teacher_keys`` are equally long lists of output keys; one pair per
    resolution is the usual choice.
    """

    def __init__(
        self,
        student_keys: tuple[str, ...] | list[str] = ("hint",),
        teacher_keys: tuple[str, ...] | list[str] = ("hint",),
        p: float = 2.0,
        resize: bool = False,
    ) -> None:
        super().__init__()
        if len(student_keys) != len(teacher_keys) or not student_keys:
            raise ShapeMismatchError(
                f"'at' needs as many student keys as teacher keys, got {list(student_keys)} "
                f"and {list(teacher_keys)}"
            )
        self.pairs = list(zip(student_keys, teacher_keys, strict=True))
        self.p, self.resize = p, resize

    def reads(self) -> Reads:
        return Reads(
            student=frozenset(s for s, _ in self.pairs),
            teacher=frozenset(t for _, t in self.pairs),
        )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        losses = [
            attention_loss(
                require(student, s_key, "student", "at"),
                require(teacher, t_key, "teacher", "at"),
                self.p,
                self.resize,
            )
            for s_key, t_key in self.pairs
        ]
        return torch.stack(losses).sum()


@LOSSES.register("attention_kl")
class AttentionKLTerm(LossTerm):
    """:func:`attention_kl_loss` on ``student[key]`` vs ``teacher[key]`` (e.g. last layer)."""

    def __init__(
        self,
        student_key: str = "attention",
        teacher_key: str = "attention",
        mask_key: str | None = "attention_mask",
        average_heads: bool = False,
    ) -> None:
        super().__init__()
        self.student_key, self.teacher_key = student_key, teacher_key
        self.mask_key, self.average_heads = mask_key, average_heads

    def reads(self) -> Reads:
        return Reads(
            student=frozenset({self.student_key}),
            teacher=frozenset({self.teacher_key}),
            batch=frozenset({self.mask_key} if self.mask_key else ()),
        )

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        mask = require(batch, self.mask_key, "batch", "attention_kl") if self.mask_key else None
        return attention_kl_loss(
            require(student, self.student_key, "student", "attention_kl"),
            require(teacher, self.teacher_key, "teacher", "attention_kl"),
            mask,
            self.average_heads,
        )
