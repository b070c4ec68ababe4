"""Contrastive representation distillation (CRD, Tian et al. 2020, ICLR): make the student's
embedding of an example pick out the teacher's embedding of the same example among the
teacher's embeddings of many other examples, and the other way round.

Both models' features ``[B, ...]`` (4-D maps global-average-pooled first, ``pool``, like
:mod:`common.losses.relational`; the paper uses penultimate features) go through a linear
head each to a common width (``feat_dim``, 128) and are L2-normalised. Two memory banks hold
one embedding per training example, for the student and for the teacher; the batch's
``index`` (each example's row in the training set) says which rows are the batch's own.

This is the softmax (InfoNCE) form of the contrastive objective (as in CMC, Tian et al.
2019), not the paper's NCE one (no noise-distribution constant ``Z``, no ``K/N`` prior): for
each student anchor ``s_i`` the positive is the teacher's *current* embedding ``t_i``
and the ``K`` negatives are teacher-bank rows of other examples (``K`` drawn per anchor);
the loss is ``-log softmax([s_i.t_i, s_i.T[n_i1], ..., s_i.T[n_iK]] / tau)[0]``, and the same
with the roles swapped (teacher anchor, student bank, the same negative rows); the two are
averaged. The reference code takes the positive from the bank instead; the current
embedding is what MoCo-style InfoNCE uses and carries signal from the first step.

Negatives are drawn uniformly with replacement from every row but the anchor's own (so the
positive is never also a negative; the reference code's "exact" mode, which also excludes
the anchor's class, needs labels and is not done here). After the loss, the batch's bank
rows move towards the current embeddings, ``normalize(m * row + (1 - m) * emb)`` with
momentum ``m`` (0.5 in the paper). Banks start uniform in ``[-a, a]``, ``a = 1 / sqrt(D / 3)``
(the reference code's initialisation) and then L2-normalised, from a generator seeded by
``seed``.

Determinism and resuming: the negatives of a training forward pass are drawn from a
generator seeded by ``(seed, draws)``, ``draws`` being the number of training passes so far.
Banks and ``draws`` are buffers, so they are saved in checkpoints with the loss module and
restored on resume: a resumed run draws the negatives an uninterrupted one would.

Image CLI: ``--loss 'kd=0.5,ce=0.5,crd=0.8'`` fills ``student_key``/``teacher_key`` (the
deepest taps, ``stage3``/``layer4``), ``student_dim``/``teacher_dim`` and ``num_data`` (the
training split's size) from the models and data; any of them, and ``num_negatives``,
``temperature``, ``momentum``, ``feat_dim``, ``seed``, can be set with ``--loss-option
crd.key=value``. Other domains give ``num_data`` and the widths themselves.

Memory: when the ``B * K`` draws cover at least the bank's rows, each side scores the whole
bank once, ``2 * B * num_data`` floats (54 MiB at B = 128 and 55k rows); otherwise the
gathered negatives take ``2 * B * K * feat_dim`` floats (512 MiB at B = 128, K = 4096, 128
dims). The paper uses K = 16384 on CIFAR-100 with temperature 0.07.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import ConfigError, ShapeMismatchError
from common.losses.registry import LOSSES, LossTerm, Outputs, Reads, check_positive, require
from common.losses.relational import embed


def init_bank(num_data: int, dim: int, generator: torch.Generator) -> Tensor:
    """``[num_data, dim]`` rows uniform in ``[-a, a]``, ``a = 1 / sqrt(dim / 3)``, then
    L2-normalised (random points on the unit sphere, roughly)."""
    a = 1.0 / math.sqrt(dim / 3.0)
    bank = torch.rand(num_data, dim, generator=generator) * (2 * a) - a
    return F.normalize(bank, p=2, dim=1)


def negatives_generator(seed: int, step: int) -> torch.Generator:
    """A fresh CPU generator whose state is a function of ``(seed, step)`` alone."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def sample_negatives(index: Tensor, num_data: int, k: int, generator: torch.Generator) -> Tensor:
    """``[B, k]`` bank rows drawn uniformly with replacement from ``0..num_data-1`` without
    each anchor's own row ``index[b]``: a draw from ``num_data - 1`` values, shifted up by one
    at and above the anchor's row."""
    if num_data < 2:
        raise ConfigError(f"crd: num_data must be >= 2 to draw negatives, got {num_data}")
    draws = torch.randint(0, num_data - 1, (len(index), k), generator=generator)
    own = index.detach().cpu().long().unsqueeze(1)
    return draws + (draws >= own).long()


def bank_update(rows: Tensor, embeddings: Tensor, momentum: float) -> Tensor:
    """The new bank rows: ``normalize(momentum * rows + (1 - momentum) * embeddings)``."""
    mixed = rows * momentum + embeddings.detach().to(rows.dtype) * (1.0 - momentum)
    return F.normalize(mixed, p=2, dim=1)


def _info_nce(
    anchor: Tensor, positive: Tensor, bank: Tensor, rows: Tensor, temperature: float
) -> Tensor:
    """``mean_b -log softmax([a_b.p_b, a_b.n_b1, ..., a_b.n_bK] / temperature)[0]`` for
    ``anchor``/``positive`` ``[B, D]`` and negatives ``n_bk = bank[rows[b, k]]``.

    When the ``B * K`` draws are at least the bank's rows (most rows are drawn anyway), every
    row is scored once, ``anchor @ bank.T``, and the drawn scores are picked from that: the
    same dot products, without copying ``[B, K, D]`` negatives out of the bank (512 MiB at
    B = 128, K = 4096, D = 128; see docs/measured.md for the two timed side by side).
    Otherwise the drawn rows are gathered."""
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    bank = bank.detach().to(anchor.dtype)
    if rows.numel() >= len(bank):
        neg = (anchor @ bank.T).gather(1, rows)
    else:
        neg = torch.bmm(bank[rows], anchor.unsqueeze(2)).squeeze(2)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def crd_loss(
    student: Tensor,
    teacher: Tensor,
    student_bank: Tensor,
    teacher_bank: Tensor,
    negatives: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """Symmetric InfoNCE of CRD on L2-normalised embeddings ``[B, D]``: the mean of
    student anchor vs (teacher positive, teacher-bank negatives) and teacher anchor vs
    (student positive, student-bank negatives), ``negatives`` ``[B, K]`` being bank rows.
    Banks are read, never written; gradients reach both embeddings, none the banks. The
    backward pass reads the banks again: update them out of place (as :class:`CRDTerm` does)."""
    if student.shape != teacher.shape:
        raise ShapeMismatchError(
            f"crd_loss: student embeddings {tuple(student.shape)} and teacher embeddings "
            f"{tuple(teacher.shape)} differ; project both to the same width first"
        )
    if temperature <= 0:
        raise ConfigError(f"crd: temperature must be a number > 0, e.g. 0.07; got {temperature}")
    rows = negatives.to(student_bank.device).long()
    student_side = _info_nce(student, teacher, teacher_bank, rows, temperature)
    teacher_side = _info_nce(teacher, student, student_bank, rows, temperature)
    return 0.5 * (student_side + teacher_side)


def _processes() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _positive_int(name: str, value: object, minimum: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"crd: {name} must be an integer >= {minimum}, e.g. {example}; got {value!r}"
        )
    return value


@LOSSES.register("crd")
class CRDTerm(LossTerm):
    """:func:`crd_loss` between ``student[student_key]`` and ``teacher[teacher_key]``, with
    learnable linear heads and student/teacher memory banks indexed by ``batch[index_key]``.

    ``num_data`` (the bank size: the number of training examples, every ``index`` below it),
    ``student_dim`` and ``teacher_dim`` (the features' widths after pooling/flattening) are
    required, so the heads and banks exist before the optimizer is built. ``num_negatives``
    (K) is capped at ``num_data - 1``. Banks update in training mode only. Runs in one
    process: a bank per process would drift apart under DDP, so that is refused.
    """

    def __init__(
        self,
        num_data: int | None = None,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        feat_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
        student_key: str = "logits",
        teacher_key: str = "logits",
        index_key: str = "index",
        pool: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, what in (
            ("num_data", num_data, "the number of training examples: the banks' rows"),
            ("student_dim", student_dim, "the width of the student's pooled features"),
            ("teacher_dim", teacher_dim, "the width of the teacher's pooled features"),
        ):
            if value is None:
                raise ConfigError(
                    f"crd needs {name} ({what}); give it, e.g. --loss-option crd.{name}=N"
                )
        self.num_data = _positive_int("num_data", num_data, 2, "50000")
        student_dim = _positive_int("student_dim", student_dim, 1, "64")
        teacher_dim = _positive_int("teacher_dim", teacher_dim, 1, "512")
        feat_dim = _positive_int("feat_dim", feat_dim, 1, "128")
        self.k = min(_positive_int("num_negatives", num_negatives, 1, "4096"), self.num_data - 1)
        self.seed = _positive_int("seed", seed, 0, "0")
        check_positive("crd", temperature=temperature)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ConfigError(f"crd: momentum must be in [0, 1), e.g. 0.5; got {momentum!r}")
        self.temperature, self.momentum, self.pool = float(temperature), float(momentum), pool
        self.student_key, self.teacher_key, self.index_key = student_key, teacher_key, index_key
        self.student_head = nn.Linear(student_dim, feat_dim)
        self.teacher_head = nn.Linear(teacher_dim, feat_dim)
        g = torch.Generator().manual_seed(self.seed)
        self.register_buffer("student_bank", init_bank(self.num_data, feat_dim, g))
        self.register_buffer("teacher_bank", init_bank(self.num_data, feat_dim, g))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def reads(self) -> Reads:
        return Reads(
            student=frozenset({self.student_key}),
            teacher=frozenset({self.teacher_key}),
            batch=frozenset({self.index_key}),
        )

    def _index(self, batch: Outputs, size: int) -> Tensor:
        if self.index_key not in batch:
            have = ", ".join(sorted(batch)) or "(nothing)"
            raise ConfigError(
                f"loss 'crd' needs batch output {self.index_key!r}: each example's row in the "
                f"training set (0..num_data-1), which picks its memory-bank rows; the batch "
                f"holds only: {have}. Make the dataset yield it (e.g. 'index': i from "
                f"__getitem__), or point crd.index_key at the batch key that holds it."
            )
        index = batch[self.index_key]
        if not torch.is_tensor(index) or index.is_floating_point() or index.shape != (size,):
            shape = tuple(index.shape) if torch.is_tensor(index) else type(index).__name__
            raise ConfigError(
                f"crd: batch[{self.index_key!r}] must be one integer per example, shape "
                f"({size},); got {shape}"
            )
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= self.num_data:
            raise ConfigError(
                f"crd: batch index {high if high >= self.num_data else low} is outside the "
                f"memory banks' rows 0..{self.num_data - 1}; set crd.num_data to the number "
                f"of training examples (len of the training set), not {self.num_data}"
            )
        return index.long()

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        s_feat = require(student, self.student_key, "student", "crd")
        t_feat = require(teacher, self.teacher_key, "teacher", "crd")
        if len(s_feat) != len(t_feat):
            raise ShapeMismatchError(
                f"crd: student and teacher batches differ ({len(s_feat)} vs {len(t_feat)})"
            )
        index = self._index(batch, len(s_feat))
        if _processes() > 1:
            raise ConfigError(
                "crd keeps its memory banks in one process; with several processes they would "
                "drift apart (bank sync is not implemented): run it without accelerate launch"
            )
        s = F.normalize(self.student_head(embed(s_feat, self.pool)).float(), p=2, dim=1)
        t = F.normalize(self.teacher_head(embed(t_feat, self.pool).detach()).float(), p=2, dim=1)
        negatives = sample_negatives(
            index, self.num_data, self.k, negatives_generator(self.seed, int(self.draws))
        )
        loss = crd_loss(s, t, self.student_bank, self.teacher_bank, negatives, self.temperature)
        if self.training:
            with torch.no_grad():
                rows = index.to(self.student_bank.device)
                for name, emb in (("student_bank", s), ("teacher_bank", t)):
                    # Out of place: the loss's backward pass still needs the banks it read.
                    bank = getattr(self, name)
                    new = bank.index_copy(0, rows, bank_update(bank[rows], emb, self.momentum))
                    setattr(self, name, new)
                self.draws += 1
        return loss
