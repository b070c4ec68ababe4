"""Small BERT students, built from ``BertConfig`` around the teacher's tokenizer.

* ``tiny`` (2 layers, hidden 128, 2 heads: Google's BERT-Tiny shape): 4.39M parameters,
  1/5.2 of all-MiniLM-L6-v2. Its 30522 x 128 word-embedding matrix is 89% of that, which is
  why the width stays at 128: three layers would already miss the 5x target.
* ``small`` (4 layers, hidden 256, 4 heads): 11.2M parameters, for larger teachers.
* ``truncated``: the teacher's own width and every k-th of its layers, initialised from
  them (DistilBERT-style); needs a ``bert`` teacher.

``init="pca"`` starts a tiny or small student's embeddings (word, position and token type)
from the teacher's, projected onto their top principal directions (hidden 384 -> 128): the
student inherits which tokens are alike instead of learning it from a few thousand examples.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification

from common.errors import ConfigError

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2},
    "small": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4},
}
STUDENTS = (*SIZES, "truncated")
INITS = ("random", "pca")


def student_config(size: str, teacher_config: Any, classes: list[str]) -> BertConfig:
    """A BERT config of ``size`` that reads the teacher's token ids and predicts ``classes``."""
    if size not in SIZES:
        raise ConfigError(f"unknown student size {size!r}; use one of {', '.join(STUDENTS)}")
    shape = SIZES[size]
    return BertConfig(
        vocab_size=teacher_config.vocab_size,
        pad_token_id=getattr(teacher_config, "pad_token_id", 0) or 0,
        type_vocab_size=getattr(teacher_config, "type_vocab_size", 2) or 2,
        max_position_embeddings=teacher_config.max_position_embeddings,
        intermediate_size=4 * shape["hidden_size"],
        # No dropout on attention probabilities: the attention-distillation loss compares the
        # maps the model returns, and HF returns them after dropout (zeros the KL punishes).
        # Every method gets the same student, so it is off for all of them.
        attention_probs_dropout_prob=0.0,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
        **shape,
    )


@torch.no_grad()
def pca_embeddings(student: BertForSequenceClassification, teacher: Any) -> float:
    """Set the student's word/position/type embeddings to the teacher's, projected onto the
    top principal directions of the teacher's word embeddings. Returns the fraction of the
    word embeddings' variance the projection keeps."""
    t_emb = teacher.base_model.embeddings
    s_emb = student.bert.embeddings
    words = t_emb.word_embeddings.weight.float()
    dim = s_emb.word_embeddings.weight.shape[1]
    if words.shape[0] != s_emb.word_embeddings.weight.shape[0]:
        raise ConfigError(
            "student and teacher vocabularies differ; build the student from the teacher"
        )
    if dim > words.shape[1]:
        raise ConfigError(f"PCA cannot widen embeddings ({words.shape[1]} -> {dim})")
    mean = words.mean(0, keepdim=True)
    centred = words - mean
    eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / len(words))  # ascending
    basis = eigvecs[:, -dim:].flip(-1)  # [D_teacher, dim], largest variance first
    # One linear map for all three tables: the teacher sums them before its LayerNorm, and a
    # linear map keeps that sum's structure (only the word table is centred, once).
    s_emb.word_embeddings.weight.copy_(centred @ basis)
    for name in ("position_embeddings", "token_type_embeddings"):
        t_table = getattr(t_emb, name, None)
        s_table = getattr(s_emb, name)
        if t_table is None:  # MPNet has no token types
            continue
        # The BERT student counts positions from 0; RoBERTa/MPNet teachers from
        # padding_idx + 1 (their rows below that are never used for a real token).
        first = position_offset(t_emb) if name == "position_embeddings" else 0
        rows = min(len(t_table.weight) - first, len(s_table.weight))
        s_table.weight[:rows].copy_(t_table.weight[first : first + rows].float() @ basis)
    return float(eigvals[-dim:].sum() / eigvals.sum())


def position_offset(embeddings: Any) -> int:
    """The position-table row of a sequence's first token: 0 for BERT, ``padding_idx + 1``
    for teachers that number positions after the padding index (RoBERTa, MPNet)."""
    padding_idx = getattr(embeddings, "padding_idx", None)
    return 0 if padding_idx is None else int(padding_idx) + 1


def build_student(
    size: str, teacher: Any, classes: list[str], init: str = "random", layers: int | None = None
) -> BertForSequenceClassification:
    """A ``tiny``/``small`` student (random or PCA embeddings), or a ``truncated`` teacher of
    ``layers`` layers (default: half the teacher's). ``layers`` also overrides the depth of
    tiny/small."""
    if init not in INITS:
        raise ConfigError(f"unknown student init {init!r}; use one of {', '.join(INITS)}")
    if size == "truncated":
        n = layers or max(1, teacher.config.num_hidden_layers // 2)
        return truncated_teacher(teacher, n, classes)
    cfg = student_config(size, teacher.config, classes)
    if layers is not None:
        cfg.num_hidden_layers = layers
    model = BertForSequenceClassification(cfg)
    if init == "pca":
        pca_embeddings(model, teacher)
    return model


def layer_subset(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers (0-based) ending with the last: every k-th for k = N/n."""
    if not 0 < student_layers <= teacher_layers:
        raise ConfigError(
            f"a truncated teacher needs 1..{teacher_layers} layers, got {student_layers}"
        )
    return [spread(i + 1, student_layers, teacher_layers) - 1 for i in range(student_layers)]


def spread(i: int, student_layers: int, teacher_layers: int) -> int:
    """Teacher layer (1-based) for student layer ``i``: ``i * N / n`` rounded half up (not
    Python's half-to-even, which spaces 4 of 6 layers as 2, 3, 4, 6 instead of 2, 3, 5, 6)."""
    return int(i * teacher_layers / student_layers + 0.5)


@torch.no_grad()
def truncated_teacher(
    teacher: Any, layers: int, classes: list[str]
) -> BertForSequenceClassification:
    """A student with the teacher's width and ``layers`` of its layers, copied from every
    k-th teacher layer, plus its embeddings, pooler and classifier head."""
    if teacher.config.model_type != "bert":
        raise ConfigError(
            f"a truncated-teacher student copies BERT layers; the teacher is a "
            f"{teacher.config.model_type!r} model: use --student tiny or small"
        )
    keep = layer_subset(teacher.config.num_hidden_layers, layers)
    cfg = BertConfig.from_dict(teacher.config.to_dict())
    cfg.num_hidden_layers = layers
    cfg.attention_probs_dropout_prob = 0.0  # as for every student (see student_config)
    cfg.num_labels = len(classes)
    cfg.id2label, cfg.label2id = dict(enumerate(classes)), {c: i for i, c in enumerate(classes)}
    student = BertForSequenceClassification(cfg)
    state = teacher.state_dict()
    mapped = {}
    for key in student.state_dict():
        src = key
        if key.startswith("bert.encoder.layer."):
            j, rest = key.removeprefix("bert.encoder.layer.").split(".", 1)
            src = f"bert.encoder.layer.{keep[int(j)]}.{rest}"
        if src in state and state[src].shape == student.state_dict()[key].shape:
            mapped[key] = state[src]
    missing = student.load_state_dict(mapped, strict=False).missing_keys
    if any(not k.startswith("classifier.") for k in missing):
        raise ConfigError(f"teacher weights do not cover the truncated student: {missing[:4]}")
    return student


@torch.no_grad()
def student_from_base(
    base: Any, classes: list[str], layers: int | None = None, name: str = "the base"
) -> Any:
    """A student that starts from a pretrained checkpoint ``base`` (a sequence classifier
    with a head for ``classes``, e.g. the packaged MiniLM-L6) and keeps its tokenizer: a BERT
    base is copied whole, or ``layers`` of its layers (every k-th, as
    :func:`truncated_teacher`), with no dropout on attention probabilities like every student;
    another BERT-family base is copied whole, with the dropout it was configured with. The
    classifier head is drawn afresh from the seed set before the call (a base has no trained
    head for these classes)."""
    if base.config.model_type == "bert":
        student = truncated_teacher(base, layers or base.config.num_hidden_layers, classes)
    elif layers is not None:
        raise ConfigError(
            f"--student-layers keeps BERT layers; the student base {name} is a "
            f"{base.config.model_type!r} model: drop --student-layers to use it whole"
        )
    else:
        student = copy.deepcopy(base)
    std = getattr(student.config, "initializer_range", 0.02)
    for module in student.classifier.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
    return student.train().requires_grad_(True)
