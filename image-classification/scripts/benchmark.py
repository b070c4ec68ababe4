"""Benchmark: what distillation costs next to training the student alone, with and without
the teacher-output cache, and how much faster the student infers. Prints figures.

    python -m image_classification.scripts.benchmark                  # the quick teacher
    python -m image_classification.scripts.benchmark --teacher runs/full/image-classification/teacher/model

Each training configuration runs in a fresh process (so its peak memory is its own) through
the shared loop for the same steps on the same batches: the student alone (cross-entropy),
KD with the live teacher, and KD with a warm cache (built first, untimed); with ``--views V``
also KD from the teacher's logits on V seeded augmented views per image (the view cache, built
first; the batches are those views, mixed ones included). The step time is
the median over the timed steps after a warm-up. Teacher and student inference are timed
side by side in one process: batch-1 latency and batch-256 throughput.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from common.benchmark import (
    CONFIGS,
    BenchmarkArgs,
    check_teacher_file,
    measure_config,
    run_benchmark,
)
from common.cli import parse_args, run_main
from common.io import atomic_write_json

if TYPE_CHECKING:
    from image_classification.data.images import ImageData

DOMAIN = "image-classification"


@dataclass
class Args(BenchmarkArgs):
    """Time distillation steps (live teacher, cached teacher) against student-alone steps."""

    teacher: Path = Path("runs/quick/image-classification/teacher/model")
    """Saved teacher folder (train_teacher.py); the quick preset's by default."""
    student: Literal["tiny", "small", "medium"] = "small"
    """Student CNN size: tiny, small or medium."""
    batch_size: int = 128
    """Images per step."""
    images: int = 12800
    """Training images used (the cache covers these)."""
    main_job: Path = Path("runs/quick/main_job.json")
    """The main job's record, for its total wall time (skipped when absent)."""
    teacher_flip: bool = False
    """Also time the teacher averaged over each image and its mirror image (distill.py
    --teacher-flip) in the same inference process."""
    views: int = 4
    """Also time KD from the view cache with this many seeded views per image (crop, flip,
    erase, mixup, cutmix; distill.py --views); 0: skip it."""


VIEW_CONFIG = "kd, view cache"
VIEW_AUGMENT = ("crop", "flip", "erase", "mixup", "cutmix")


def _measure(config: str, args: Args) -> dict[str, Any]:
    """One configuration in this (fresh) process: median step time and peak memory."""
    from accelerate.utils import set_seed

    from common.cache import (
        cache_key,
        compute_outputs,
        fingerprint,
        load_or_compute,
    )
    from common.io import sha256_file
    from common.losses import build_loss
    from image_classification.data.images import load_dataset, make_loader
    from image_classification.model_io import ModelConfig, build_model, load_model_dir
    from image_classification.pipeline import ImageAdapter

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, t_cfg = load_model_dir(args.teacher)
    data = load_dataset(
        t_cfg.dataset, val_size=t_cfg.extra.get("val_size", 5000), max_train=args.images
    )
    data.mean, data.std = list(t_cfg.mean), list(t_cfg.std)
    set_seed(0)
    s_cfg = ModelConfig.for_data(data, "cnn", args.student, t_cfg.dataset)
    student = build_model(s_cfg)
    loader = make_loader(data.train, data, args.batch_size, shuffle=True, seed=0)
    if config == VIEW_CONFIG:
        return _measure_views(
            args, student, teacher, data, sha256_file(args.teacher / "model.safetensors")
        )
    return measure_config(
        config,
        student=student,
        teacher=teacher,
        adapter=ImageAdapter(),
        loader=loader,
        kd_loss=build_loss({"kd": 0.9, "ce": 0.1}, {"kd": {"temperature": 4.0}}),
        build_cache=lambda: load_or_compute(
            args.paths(DOMAIN)[0],
            cache_key(
                teacher_sha256=sha256_file(args.teacher / "model.safetensors"),
                data_sha256=fingerprint(data.train.images),
                preprocessing={"mean": data.mean, "std": data.std, "augment": []},
                outputs=["logits"],
            ),
            lambda: compute_outputs(
                teacher,
                ImageAdapter().teacher,
                make_loader(data.train, data, 512, shuffle=False),
                len(data.train),
                ["logits"],
            ),
        ),
        args=args,
        lr=3e-3,
        weight_decay=5e-4,
    )


def _measure_views(
    args: Args, student: nn.Module, teacher: nn.Module, data: ImageData, digest: str
) -> dict[str, Any]:
    """KD from the view cache (built first, untimed) on batches of seeded views."""
    from common.benchmark import time_steps
    from common.cache import ViewCacheAdapter, load_or_build_views
    from common.losses import build_loss
    from image_classification.data.images import BatchBuilder, ViewRecipe, make_loader
    from image_classification.pipeline import ImageAdapter, view_logits
    from image_classification.task import view_cache_key

    recipe = ViewRecipe(VIEW_AUGMENT)
    builder = BatchBuilder(
        data.train,
        data.mean,
        data.std,
        VIEW_AUGMENT,
        views=args.views,
        num_classes=data.num_classes,
    )
    cache, stats = load_or_build_views(
        args.paths(DOMAIN)[0],
        view_cache_key(digest, data, recipe, args.views, 0, False),
        examples=len(data.train),
        views=args.views,
        specs={"logits": ((data.num_classes,), torch.float32)},
        compute=lambda start, stop: view_logits(teacher, builder, start, stop),
    )
    loader = make_loader(
        data.train, data, args.batch_size, True, VIEW_AUGMENT, seed=0, views=args.views
    )
    timing = time_steps(
        student=student,
        teacher=cache,
        loss=build_loss({"kd": 0.9, "ce": 0.1}, {"kd": {"temperature": 4.0}}),
        adapter=ViewCacheAdapter(ImageAdapter()),
        loader=loader,
        warmup=args.warmup_steps,
        steps=args.steps,
        lr=3e-3,
        weight_decay=5e-4,
    )
    return {"config": VIEW_CONFIG, **timing, "cache": stats.to_dict()}


def _inference(args: Args) -> dict[str, Any]:
    from image_classification.model_io import build_model, load_model_dir
    from image_classification.pipeline import speed_report

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, t_cfg = load_model_dir(args.teacher)
    shape = (t_cfg.in_channels, *t_cfg.image_size)
    student = build_model(dataclasses.replace(t_cfg, family="cnn", arch=args.student))
    speed = {"teacher": speed_report(teacher, shape), "student": speed_report(student, shape)}
    if args.teacher_flip:
        from image_classification.teacher_model.resnet import FlipAveraged

        speed["teacher_flip_average"] = speed_report(FlipAveraged(teacher), shape)
    return speed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv)
    check_teacher_file(
        args.teacher / "model.safetensors",
        "python -m image_classification.scripts.train_teacher --preset quick",
    )
    configs = (*CONFIGS, VIEW_CONFIG) if args.views else CONFIGS
    results = run_benchmark(
        args, _measure, _inference, f"{args.batch_size} images", "img/s", configs
    )
    if args.views:
        steps = results["steps"]
        ratio = steps[VIEW_CONFIG]["step_ms_median"] / steps["student alone"]["step_ms_median"]
        results["ratios"]["kd_view_cache_over_alone"] = ratio
    speed = results["inference"]
    if "teacher_flip_average" in speed:
        t, s = speed["teacher_flip_average"], speed["student"]
        ratio = s["throughput"] / t["throughput"]
        results["ratios"]["throughput_student_over_flip_teacher"] = ratio
        print(
            f"Flip-averaged teacher: batch-1 latency {t['latency_b1_ms']:.2f} ms, batch-"
            f"{t['batch']} throughput {t['throughput']:.0f} img/s (student {ratio:.1f}x)"
        )
    if args.main_job.is_file():
        results["main_job_total_s"] = json.loads(args.main_job.read_text())["total_s"]
        print(f"Main job wall time ({args.main_job}): {results['main_job_total_s'] / 60:.1f} min")
    out = args.paths(DOMAIN)[1]
    atomic_write_json(out, results)
    print(f"figures: {out}")
    return results


if __name__ == "__main__":
    run_main(main)
