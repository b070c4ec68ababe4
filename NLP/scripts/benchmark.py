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

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from common.benchmark import in_fresh_process, run_configs, summarize, time_steps
from common.cli import parse_args, run_main
from common.errors import ConfigError
from common.io import atomic_write_json


@dataclass
class Args:
    """Time distillation steps (live teacher, cached teacher) against student-alone steps."""

    teacher: Path = Path("runs/quick/nlp/teacher/model")
    """Fine-tuned teacher folder (train_teacher.py); the quick preset's by default."""
    student: str = "tiny"
    """Student size: tiny, small or truncated."""
    batch_size: int = 32
    """Sentences per step."""
    texts: int = 2048
    """Labelled training sentences used (the cache covers these)."""
    warmup_steps: int = 5
    """Untimed steps first."""
    steps: int = 40
    """Timed steps per configuration."""
    threads: int | None = None
    """torch threads in each measurement; unset: torch's default (the machine's cores)."""
    cache_dir: Path = Path("runs/benchmark/nlp/cache")
    """Where the benchmark's teacher cache goes."""
    out: Path = Path("runs/benchmark/nlp/benchmark.json")
    """Where the figures are written as JSON."""


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
        CachedTeacherAdapter,
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
    adapter: Any = TextAdapter()
    model_teacher: Any = None
    cache_s = None
    if config == "student alone":
        loss = build_loss("ce")
    else:
        loss = build_loss({"kd": 0.5, "ce": 0.5}, {"kd": {"temperature": 2.0}})
        model_teacher = teacher
        if config == "kd, warm cache":
            key = cache_key(
                teacher_sha256=weights_digest(args.teacher),
                data_sha256=fingerprint(*token_tensors(train)),
                preprocessing={"padding": "dynamic", "pad_id": pad_id},
                outputs=["logits"],
            )
            ordered = make_loader(train, 128, False, pad_id)
            model_teacher, stats = load_or_compute(
                args.cache_dir,
                key,
                lambda: compute_outputs(
                    teacher, TextAdapter().teacher, ordered, len(train), ["logits"]
                ),
            )
            cache_s = stats.to_dict()
            adapter = CachedTeacherAdapter(adapter)
    timing = time_steps(
        student=student,
        teacher=model_teacher,
        loss=loss,
        adapter=adapter,
        loader=loader,
        warmup=args.warmup_steps,
        steps=args.steps,
        lr=5e-4,
        weight_decay=0.01,
    )
    return {"config": config, **timing, "cache": cache_s}


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
    if not (args.teacher / "config.json").is_file():
        raise ConfigError(
            f"no teacher at {args.teacher}; train one first: python -m "
            "nlp.scripts.train_teacher --preset quick (or pass --teacher)"
        )
    results: dict[str, Any] = {"args": {k: str(v) for k, v in asdict(args).items()}}
    steps = run_configs(_measure, args)
    speed = in_fresh_process(_inference, args)
    results.update(steps=steps, inference=speed)
    results["ratios"] = summarize(steps, speed, f"{args.batch_size} sentences", "texts/s")
    atomic_write_json(args.out, results)
    print(f"figures: {args.out}")
    return results


if __name__ == "__main__":
    run_main(main)
