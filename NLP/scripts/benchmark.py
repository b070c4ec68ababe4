"""Benchmark: a distillation step's cost next to a student-alone step, with and without the
teacher-output cache, and teacher vs student inference. Prints figures.

    python -m nlp.scripts.benchmark                 # the quick preset's teacher
    python -m nlp.scripts.benchmark --teacher runs/full/nlp/teacher/model
    python -m nlp.scripts.benchmark --teacher runs/full/nlp/teacher/model \
        --student-base minilm --student-layers 3 --max-length 64 --group-by-length

Each configuration runs in a fresh process (its own peak memory) through the shared loop for
the same steps on the same batches of labelled sentences: the student alone (cross-entropy),
KD with the live teacher, and KD with a warm cache (built first, untimed; its build time and
size on disk are the teacher's logits pass). Step time is the median after a warm-up.
Inference: batch-1 latency and batch-64 throughput, side by side. A ``--student-base`` with
a tokenizer other than the teacher's reads its own tokens of the same sentences and learns
from the cache only (a live teacher would need its own tokens): no live configuration then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from common.benchmark import (
    CONFIGS,
    BenchmarkArgs,
    check_teacher_file,
    measure_config,
    run_benchmark,
)
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
    """Student size: tiny, small or truncated (unused with --student-base)."""
    student_layers: int | None = None
    """Layers of the student; unset: as distill.py (2 tiny, 4 small, half the teacher's
    truncated, all of the --student-base's)."""
    student_base: str | None = None
    """Start the student from this pretrained checkpoint with its own tokenizer (minilm, a
    folder or a hub id), as distill.py's --student-base."""
    batch_size: int = 32
    """Sentences per step."""
    texts: int = 2048
    """Labelled training sentences used (the cache covers these)."""
    max_length: int | None = None
    """Tokens per text; unset: the length the teacher was trained with (the full distill
    preset uses 64)."""
    group_by_length: bool = False
    """Train on length-grouped batches, as distill.py --group-by-length (the full presets)."""


@dataclass
class _Setup:
    teacher: Any
    classes: list[str]
    t_train: Any
    """The teacher's tokens of the sentences (what its cache is computed from)."""
    t_pad: int
    s_train: Any
    """The student's tokens of the same sentences, in the same rows."""
    s_pad: int

    def student(self, args: Args) -> Any:
        from nlp.student_model.bert import build_student, student_from_base
        from nlp.teacher_model.bert import load_classifier

        if args.student_base is None:
            return build_student(
                args.student, self.teacher, self.classes, "pca", args.student_layers
            )
        base = load_classifier(args.student_base, classes=self.classes)
        return student_from_base(base, self.classes, args.student_layers, args.student_base)


def _setup(args: Args) -> _Setup:
    from nlp.data.text import load_dataset, tokenize, tokenizer_fingerprint
    from nlp.model_io import load_model_dir
    from nlp.teacher_model.bert import load_tokenizer, model_classes

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
    length = args.max_length or meta.get("max_length") or 128
    t_train = tokenize(data.train, tokenizer, length)
    s_tokenizer = tokenizer if args.student_base is None else load_tokenizer(args.student_base)
    same = tokenizer_fingerprint(s_tokenizer) == tokenizer_fingerprint(tokenizer)
    s_train = t_train if same else tokenize(data.train, s_tokenizer, length)
    pad = lambda tok: tok.pad_token_id or 0  # noqa: E731
    return _Setup(teacher, classes, t_train, pad(tokenizer), s_train, pad(s_tokenizer))


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

    setup = _setup(args)
    set_seed(0)
    student = setup.student(args)
    group_seed = 0 if args.group_by_length else None
    loader = make_loader(setup.s_train, args.batch_size, True, setup.s_pad, group_seed=group_seed)

    def warm_cache() -> Any:
        # Keyed and computed as distill.py's cache: the teacher's own tokens, row by row.
        key = cache_key(
            teacher_sha256=weights_digest(args.teacher),
            data_sha256=fingerprint(*token_tensors(setup.t_train)),
            preprocessing={"padding": "dynamic", "pad_id": setup.t_pad},
            outputs=["logits"],
        )
        ordered = make_loader(setup.t_train, 128, False, setup.t_pad, by_length=True)
        compute = lambda: compute_outputs(  # noqa: E731
            setup.teacher, TextAdapter().teacher, ordered, len(setup.t_train), ["logits"]
        )
        return load_or_compute(args.paths(DOMAIN)[0], key, compute)

    kd = build_loss({"kd": 0.5, "ce": 0.5}, {"kd": {"temperature": 2.0}})
    return measure_config(
        config,
        student=student,
        teacher=setup.teacher,
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

    setup = _setup(args)
    student = setup.student(args)
    one, many = example_batches(setup.t_train, pad_id=setup.t_pad)
    s_one, s_many = example_batches(setup.s_train, pad_id=setup.s_pad)
    return {
        "teacher": speed_report(setup.teacher, one, many),
        "student": speed_report(student, s_one, s_many),
    }


def _same_tokenizer(args: Args) -> bool:
    from nlp.data.text import tokenizer_fingerprint
    from nlp.teacher_model.bert import load_tokenizer

    teacher, student = load_tokenizer(str(args.teacher)), load_tokenizer(str(args.student_base))
    return tokenizer_fingerprint(teacher) == tokenizer_fingerprint(student)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv)
    check_teacher_file(
        args.teacher / "config.json", "python -m nlp.scripts.train_teacher --preset quick"
    )
    configs = CONFIGS
    if args.student_base is not None and not _same_tokenizer(args):
        configs = tuple(c for c in CONFIGS if c != "kd, live teacher")
        print(f"{args.student_base} has its own tokenizer: KD from the cache only")
    results = run_benchmark(
        args, _measure, _inference, f"{args.batch_size} sentences", "texts/s", configs
    )
    out = args.paths(DOMAIN)[1]
    atomic_write_json(out, results)
    print(f"figures: {out}")
    return results


if __name__ == "__main__":
    run_main(main)
