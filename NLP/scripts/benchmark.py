"""Benchmark: a distillation step's cost next to a student-alone step, with and without the
teacher-output cache, and teacher vs student inference. Prints figures.

    python -m nlp.scripts.benchmark                 # the quick preset's teacher
    python -m nlp.scripts.benchmark --teacher runs/full/nlp/teacher/model

Each configuration runs in a fresh process (its own peak memory) through the shared loop for
the same steps on the same batches of labelled sentences: the student alone (cross-entropy),
KD with the live teacher, and KD with a warm cache (built first, untimed). Step time is the
median after a warm-up. Inference: batch-1 latency and batch-64 throughput, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from common.benchmark import BenchmarkArgs, check_teacher_file, measure_config, run_benchmark
from common.cli import parse_args, run_main
from common.io import atomic_write_json

DOMAIN = "nlp"


@dataclass
class Args(BenchmarkArgs):
    """Time distillation steps (live teacher, cached teacher) against student-alone steps."""

    warmup_steps: int = 5
    """Untimed steps first."""
    steps: int = 40
    """Timed steps per configuration."""
    teacher: Path = Path("runs/quick/nlp/teacher/model")
    """Fine-tuned teacher folder (train_teacher.py); the quick preset's by default."""
    student: Literal["tiny", "small", "truncated"] = "tiny"
    """Student size: tiny, small or truncated."""
    batch_size: int = 32
    """Sentences per step."""
    texts: int = 2048
    """Labelled training sentences used (the cache covers these)."""


def _setup(args: Args) -> tuple[Any, Any, Any, Any]:
    from nlp.data.text import load_dataset, tokenize
    from nlp.model_io import load_model_dir
    from nlp.teacher_model.bert import model_classes

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, tokenizer, meta = load_model_dir(args.teacher)
    teacher.requires_grad_(False)
    classes = model_classes(teacher)
    data = load_dataset(
        meta.get("dataset", "polarity"),
        Path(meta["data_file"]) if meta.get("data_file") else None,
        val_frac=meta.get("val_frac", 0.1),
        test_frac=meta.get("test_frac", 0.15),
        split_seed=meta.get("split_seed", 0),
        max_train=args.texts,
        classes=classes,
        transfer="none",
    )
    train = tokenize(data.train, tokenizer, meta.get("max_length") or 128)
    return teacher, tokenizer, classes, train


def _measure(config: str, args: Args) -> dict[str, Any]:
    """One configuration in this (fresh) process: median step time and peak memory."""
    from accelerate.utils import set_seed

    from common.cache import (
        cache_key,
        compute_outputs,
        fingerprint,
        load_or_compute,
    )
    from common.losses import build_loss
    from nlp.data.text import make_loader, token_tensors
    from nlp.model_io import weights_digest
    from nlp.pipeline import TextAdapter
    from nlp.student_model.bert import build_student

    teacher, tokenizer, classes, train = _setup(args)
    pad_id = tokenizer.pad_token_id or 0
    set_seed(0)
    student = build_student(args.student, teacher, classes, "pca")
    loader = make_loader(train, args.batch_size, True, pad_id)

    def warm_cache() -> Any:
        key = cache_key(
            teacher_sha256=weights_digest(args.teacher),
            data_sha256=fingerprint(*token_tensors(train)),
            preprocessing={"padding": "dynamic", "pad_id": pad_id},
            outputs=["logits"],
        )
        ordered = make_loader(train, 128, False, pad_id)
        compute = lambda: compute_outputs(  # noqa: E731
            teacher, TextAdapter().teacher, ordered, len(train), ["logits"]
        )
        return load_or_compute(args.paths(DOMAIN)[0], key, compute)

    kd = build_loss({"kd": 0.5, "ce": 0.5}, {"kd": {"temperature": 2.0}})
    return measure_config(
        config,
        student=student,
        teacher=teacher,
        adapter=TextAdapter(),
        loader=loader,
        kd_loss=kd,
        build_cache=warm_cache,
        args=args,
        lr=5e-4,
        weight_decay=0.01,
    )


def _inference(args: Args) -> dict[str, Any]:
    from nlp.pipeline import example_batches, speed_report
    from nlp.student_model.bert import build_student

    teacher, tokenizer, classes, train = _setup(args)
    student = build_student(args.student, teacher, classes, "pca")
    one, many = example_batches(train, pad_id=tokenizer.pad_token_id or 0)
    return {
        "teacher": speed_report(teacher, one, many),
        "student": speed_report(student, one, many),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv)
    check_teacher_file(
        args.teacher / "config.json", "python -m nlp.scripts.train_teacher --preset quick"
    )
    results = run_benchmark(args, _measure, _inference, f"{args.batch_size} sentences", "texts/s")
    out = args.paths(DOMAIN)[1]
    atomic_write_json(out, results)
    print(f"figures: {out}")
    return results


if __name__ == "__main__":
    run_main(main)
