"""Train a ResNet teacher for image classification and save it for distillation.

    python -m image_classification.scripts.train_teacher --preset quick
    python -m image_classification.scripts.train_teacher --preset full --dataset fashion-mnist

Writes ``<out-dir>/model/`` (safetensors + config.json), checkpoints (a killed run resumes
on the next start with the same settings), ``metrics.jsonl``, TensorBoard logs and
``results.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from accelerate.utils import set_seed
from torch import nn

from common.cache import fingerprint
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
from common.training import training_budget
from image_classification.data.images import ImageData, load_dataset, make_loader, resolve_augment
from image_classification.model_io import ModelConfig, build_model, save_model_dir
from image_classification.pipeline import (
    describe_model,
    predict_logits,
    run_training,
    speed_report,
)
from image_classification.teacher_model.resnet import MIRROR_UNSAFE, FlipAveraged


@dataclass
class Args(RuntimeArgs):
    """Train a ResNet teacher on an image dataset."""

    dataset: Literal["fashion-mnist", "mnist", "cifar10", "cifar100", "folder"] = "fashion-mnist"
    """fashion-mnist, mnist, cifar10, cifar100 or folder."""
    data_dir: Path | None = None
    """Files of the dataset (idx files, CIFAR folder, or an image folder with train/ and test/);
    unset: the copy `make data` fetched (fashion-mnist, mnist)."""
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    """torchvision ResNet: resnet18, resnet34 or resnet50."""
    stem: Literal["small", "imagenet", "cifar"] = "small"
    """ResNet stem: small (3x3/2, layer1 at 14x14 on 28x28), imagenet (7x7/2 + max-pool,
    ~3.3x faster, less accurate) or cifar (3x3/1, ~4x slower than small)."""
    epochs: int = 15
    """Passes over the training split."""
    batch_size: int = 128
    """Images per optimizer step."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """sgd (Nesterov momentum 0.9) or adamw; one-cycle learning-rate schedule either way."""
    lr: float = 0.1
    """Peak learning rate of the one-cycle schedule."""
    weight_decay: float = 5e-4
    """Weight decay."""
    augment: tuple[str, ...] = ("auto",)
    """Augmentations from crop, flip; 'auto' picks the dataset's default; 'none' (or no
    values) turns it off."""
    val_size: int = 5000
    """Images held out of train for validation (a fixed split, the same for every run)."""
    max_train: int | None = None
    """Train on a fixed random subset of this many images (quick runs)."""
    max_test: int | None = None
    """Evaluate on a fixed random subset of this many test images."""
    seed: int = 0
    """Seed of initialisation, data order and augmentation."""
    out_dir: Path = Path("runs/image-classification/teacher")
    """Run directory: model/, checkpoints/, metrics.jsonl, tensorboard/, results.json."""
    resume: bool = True
    """Resume from the run directory's last checkpoint (settings must match)."""
    retrain: bool = False
    """Train even when out_dir holds a finished teacher with the same settings and data
    (otherwise that teacher is reused as it is)."""


# Quick: imagenet stem, 3 epochs on 18k images (measurements: docs/measured.md).
QUICK = Args(
    stem="imagenet",
    epochs=3,
    max_train=18000,
    max_test=2000,
    val_size=2000,
    optimizer="adamw",
    lr=2e-3,
    out_dir=Path("runs/quick/image-classification/teacher"),
)
# Full: small stem, 18 epochs on all 55k images.
FULL = Args(stem="small", epochs=18, out_dir=Path("runs/full/image-classification/teacher"))
PRESETS = {"quick": QUICK, "full": FULL}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(Args, argv, PRESETS)
    check_runtime(args)
    start = time.perf_counter()
    data = load_dataset(
        args.dataset,
        args.data_dir,
        val_size=args.val_size,
        max_train=args.max_train,
        max_test=args.max_test,
    )
    settings, reuse_key = teacher_settings(
        args, fingerprint(data.train.images, data.val.images, data.test.images)
    )
    model_dir = args.out_dir / "model"
    if reuse_teacher(args.out_dir, reuse_key, [model_dir / "model.safetensors"], args.retrain):
        return model_dir
    cfg = ModelConfig.for_data(
        data,
        "resnet",
        args.arch,
        args.dataset,
        stem=args.stem,
        # The split distill.py must reuse, so the teacher's training images stay out of
        # every later validation set.
        extra={"val_size": len(data.val), "split_seed": 0},
    )
    set_seed(args.seed)
    model = build_model(cfg)
    augment = resolve_augment(args.augment, args.dataset)
    model, state = run_training(
        model,
        build_loss("ce"),
        data,
        Recipe.from_args(args, "teacher", args.out_dir),
        batch_size=args.batch_size,
        augment=augment,
        seed=args.seed,
        num_workers=args.num_workers,
        config=settings,
    )
    final = {**test_teacher(model, data, args.dataset, augment), **state.last_eval}
    save_model_dir(model, cfg, model_dir)
    speed = speed_report(model, data.shape)
    desc = describe_model(
        model, f"{args.arch}-{args.stem}", data.shape, checkpoint=str(model_dir), speed=speed
    )
    write_teacher_result(
        args.out_dir,
        domain="image-classification",
        dataset=args.dataset,
        seed=args.seed,
        model=desc,
        metrics=accuracy_metrics(final, len(data.test), state.best),
        budget=training_budget(args.epochs, state, args.batch_size, args.grad_accum),
        started=start,
        reuse_key=reuse_key,
        extra={"augment": list(augment), "train_size": len(data.train), "args": settings},
        summary=lambda: teacher_summary(desc, final, len(data.test), model_dir),
    )
    return model_dir


def test_teacher(
    model: nn.Module, data: ImageData, dataset: str, augment: tuple[str, ...]
) -> dict[str, float]:
    """Test metrics, and those of the teacher averaged over each image and its mirror image
    (what distill.py --teacher-flip distils from) when it trained with flips."""
    test_loader = make_loader(data.test, data, 512, shuffle=False)
    final = classification_metrics(*predict_logits(model, test_loader), "test")
    if "flip" in augment and dataset not in MIRROR_UNSAFE:
        flip_logits, test_labels = predict_logits(FlipAveraged(model), test_loader)
        final.update(classification_metrics(flip_logits, test_labels, "test_flip_average"))
    return final


def teacher_summary(desc: dict, final: dict[str, float], n_test: int, model_dir: Path) -> str:
    line = (
        f"teacher {desc['name']}: test accuracy {100 * final['test/accuracy']:.2f}% "
        f"({n_test} images), {desc['params']:,} params -> {model_dir}"
    )
    if "test_flip_average/accuracy" in final:
        line += (
            "\n  averaged over each image and its mirror image (distill.py --teacher-flip): "
            f"{100 * final['test_flip_average/accuracy']:.2f}%"
        )
    return line


if __name__ == "__main__":
    run_main(main)
