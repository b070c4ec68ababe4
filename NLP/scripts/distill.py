"""Distil a fine-tuned BERT teacher into a small BERT student, comparing methods over seeds.

    python -m nlp.scripts.distill --preset quick
    python -m nlp.scripts.distill --preset full --methods none kd kd+hidden kd+attention --seeds 3
    python -m nlp.scripts.distill --methods none --loss "dist=1,ce=1" --loss-option dist.temperature=2

Methods are the table ``METHODS`` below (name -> loss spec and options); ``--loss SPEC`` runs
any combination of registered terms as one more method. ``none`` is the student alone: hard
labels only, on the labelled training texts, for the same number of optimizer steps (the
honest baseline). Every method trains the same student from the same initialisation with the
same optimizer and schedule; only the loss and the data differ.

Distilled runs also learn from the *transfer set*: unlabeled text (by default the ~48k
sentences of polarity's full reviews) labelled by the teacher, its argmax as the hard label
and its logits for ``kd``. The student alone cannot use it (nobody labels it). The teacher's
logits on the labelled and transfer texts come from common's teacher-output cache (one pass,
reused by every method, seed and later run with the same teacher and tokens), so ``kd``
never runs the teacher; ``hidden`` and ``attention`` read the teacher's tapped hidden states
and attention maps from a state cache (float16, every text padded to the longest, written in
resumable chunks and memory-mapped). ``--no-cache``: the teacher runs live for every method.
``--mask-tokens P`` is noisy-student input noise: the student reads its texts with each token
replaced by [MASK] with probability P (afresh every step), the teacher's outputs stay those of
the clean texts, so the cache still serves them.

``--student-base minilm`` starts the student from a pretrained checkpoint with its own
tokenizer (e.g. MiniLM-L6 under an MPNet teacher). Logit distillation works across
tokenizers: the cache holds one row of teacher logits per text, computed from the
teacher's tokens, and the student reads its own tokens of the same rows. Hidden-state and
attention terms compare token positions: across tokenizers they run only when both cut every
training text into the same tokens (MPNet's and MiniLM's do: [CLS]/<s> and [SEP]/</s> paired),
and are refused otherwise.

Every run records test and validation accuracy, ECE, agreement with the teacher and
macro-F1 (classes weighted equally: on tweets and SMS spam, accuracy can hide a missed
minority class); the report shows macro-F1 beside the primary score.

Each run writes ``<out-dir>/<method>/seed-<k>/`` (model/, checkpoints, metrics.jsonl,
results.json); the comparison, with both models' size and speed measured side by side,
goes to ``<out-dir>/summary.json`` and is printed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from common.cli import parse_args, run_main
from common.experiment import (
    DistillArgs,
    check_runtime,
    method_table,
    resolve_methods,
    run_experiment,
)
from nlp.task import TextDistillTask

_KD = {"kd": {"temperature": 2.0}}
_HIDDEN = {"student_key": "hidden", "teacher_key": "hidden", "mask_key": "attention_mask"}
_ATTENTION = {"student_key": "attention", "teacher_key": "attention", "mask_key": "attention_mask"}
METHODS = method_table(
    {
        "none": "ce=1",
        "kd": ("kd=0.5,ce=0.5", _KD),
        "dist": ("dist=1,ce=1", {"dist": {"temperature": 4.0, "beta": 2.0, "gamma": 2.0}}),
        "lskd": ("lskd=0.9,ce=0.1", {"lskd": {"temperature": 2.0}}),
        "hidden": ("hint=1,ce=1", {"hint": {**_HIDDEN, "kind": "linear"}}),
        "attention": ("attention_kl=1,ce=1", {"attention_kl": _ATTENTION}),
        "kd+hidden": ("kd=0.5,ce=0.5,hint=1", {**_KD, "hint": {**_HIDDEN, "kind": "linear"}}),
        "kd+attention": ("kd=0.5,ce=0.5,attention_kl=1", {**_KD, "attention_kl": _ATTENTION}),
    }
)
"""Method name -> loss spec and options. ``hidden`` is TinyBERT-style hidden-state MSE
through a learned projection (layer map from --hidden-layers), ``attention`` MiniLM-style KL
between attention maps (--attention-layers)."""


@dataclass
class Args(DistillArgs):
    """Distil a fine-tuned teacher into a small BERT with one or more methods over seeds."""

    teacher: Path = Path("runs/nlp/teacher/model")
    """Fine-tuned teacher folder (from train_teacher.py, or any save_pretrained classifier)."""
    dataset: Literal["polarity", "tweets", "sms-spam", "file"] | None = None
    """Dataset to distil on; unset: the one the teacher was trained on (with its split)."""
    data_file: Path | None = None
    """With --dataset file: a CSV/JSONL file with 'text' and 'label' (labels must be the
    teacher's classes)."""
    methods: tuple[str, ...] = ("none", "kd")
    """Methods to compare, from METHODS: none, kd, dist, lskd, hidden, attention, kd+hidden,
    kd+attention."""
    student: Literal["tiny", "small", "truncated"] = "tiny"
    """Student: tiny (2 layers, hidden 128), small (4 x 256) or truncated (the teacher's
    width, every k-th of its layers)."""
    student_layers: int | None = None
    """Layers of the student; unset: 2 (tiny), 4 (small), half the teacher's (truncated),
    all of the --student-base's."""
    student_base: str | None = None
    """Start the student from this pretrained checkpoint instead (minilm: the packaged
    all-MiniLM-L6-v2, a folder or a hub id) with its own tokenizer; --student-layers keeps
    every k-th of its layers (BERT checkpoints); --student and --student-init are then not
    used, and the default --lr is 1e-4. With a tokenizer other than the teacher's, logit
    methods (kd, dist, lskd, none) work: the teacher's logits are cached per text from its
    own tokens, and the student reads its tokens of the same texts; hidden and attention
    terms only when both tokenizers cut every training text alike (else refused); --no-cache
    is refused."""
    freeze_embeddings: bool = False
    """Keep the student's word-embedding table as it starts (pretrained, or the teacher's
    projected), for every method and the student alone: about two thirds of MiniLM-L3's
    parameters then take no updates, and words the training texts lack stay in step with
    the rest (a guard against fitting the training vocabulary)."""
    student_init: Literal["pca", "random"] = "pca"
    """tiny/small embeddings: pca (teacher's, projected to the student width) or random."""
    transfer: str = "auto"
    """Unlabeled text the teacher labels for distilled runs: auto (polarity's review
    sentences for polarity, none otherwise), none, reviews, remainder (the training texts
    --max-train leaves out, their labels unused), or a file (CSV/JSONL with a 'text' column,
    or .txt with one text per line)."""
    max_transfer: int | None = None
    """Use a fixed random subset of this many transfer texts."""
    transfer_copies: int = 0
    """Grow the transfer set with this many word-dropout copies of each text (seeded by the
    split seed, so every method and seed sees the same ones; the teacher labels them too)."""
    word_dropout: float = 0.1
    """With --transfer-copies: the probability of leaving out each word of a copy."""
    mask_tokens: float = 0.0
    """Noisy-student input noise: while the student trains, each of its tokens (but [CLS],
    [SEP] and padding) is replaced by its tokenizer's [MASK] with this probability, afresh
    every step; the teacher's outputs stay those of the clean text. Every method gets it,
    the student alone too."""
    max_length: int | None = None
    """Tokens per text; unset: the length the teacher was trained with."""
    epochs: int = 3
    """Passes over the distilled runs' training data (labelled + transfer); the student
    alone gets the same number of optimizer steps."""
    steps: int | None = None
    """Optimizer steps of every method, the student alone too, instead of --epochs passes:
    a grown transfer set (--transfer-copies) then compares at the same compute."""
    batch_size: int = 32
    """Texts per optimizer step."""
    group_by_length: bool = False
    """Batch texts of about one length (a seeded shuffle, sorted within groups of 50
    batches, the batches shuffled): they pad less, so a step costs about half on polarity."""
    lr: float | None = None
    """Peak AdamW learning rate; unset: 1e-3 for tiny/small (trained from scratch), 1e-4
    for truncated or --student-base (starts from pretrained weights)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    hidden_layers: tuple[str, ...] = ("auto",)
    """hidden layer pairs student:teacher (0 = embeddings); auto: student layer i -> teacher
    layer i * N / n (rounded half up), for each student layer."""
    attention_layers: str = "auto"
    """attention layer pair student:teacher (1-based); auto: last to last, as in MiniLM."""
    max_train: int | None = None
    """Train on a fixed random subset of this many labelled texts."""
    max_test: int | None = None
    """Evaluate on a fixed random subset of this many test texts."""
    select_best: bool = True
    """Score the weights of the best validation epoch (every method alike)."""
    out_dir: Path = Path("runs/nlp/distill")
    """Where runs and the summary go."""


# Quick: 500 labelled + 3000 teacher-labelled sentences, 2 epochs, 3 seeds (docs/measured.md).
QUICK = Args(
    teacher=Path("runs/quick/nlp/teacher/model"),
    max_train=500,
    max_transfer=3000,
    epochs=2,
    seeds=3,
    out_dir=Path("runs/quick/nlp/distill"),
)
# Full: the MPNet teacher into MiniLM-L6's every other layer (own tokenizer, logits from the
# cache); 3000 labelled + every review sentence (~48k) teacher-labelled, at 64 tokens in
# length-grouped batches, 3 epochs, 3 seeds.
FULL = Args(
    teacher=Path("runs/full/nlp/teacher/model"),
    methods=("none", "kd"),
    student_base="minilm",
    student_layers=3,
    max_length=64,
    group_by_length=True,
    epochs=3,
    seeds=3,
    out_dir=Path("runs/full/nlp/distill"),
)
# Full, tweets: the same student; 8000 labelled tweets and the rest of the training split,
# unlabelled, for the teacher to label.
FULL_TWEETS = replace(
    FULL,
    teacher=Path("runs/full/nlp/tweets/teacher/model"),
    max_train=8000,
    transfer="remainder",
    out_dir=Path("runs/full/nlp/tweets/distill"),
)
PRESETS = {"quick": QUICK, "full": FULL, "full-tweets": FULL_TWEETS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, PRESETS)
    check_runtime(args)
    methods = resolve_methods(args.methods, METHODS, args.loss, args.loss_option)
    return run_experiment(lambda: TextDistillTask(args), methods, args)


if __name__ == "__main__":
    run_main(main)
