"""Distil a saved ResNet teacher (or any teacher a ``--teacher spec.json`` describes) into a
small CNN, comparing methods over seeds.

    python -m image_classification.scripts.distill --preset quick
    python -m image_classification.scripts.distill --preset full --methods none kd dist lskd --seeds 3
    python -m image_classification.scripts.distill --methods none --loss "lskd=0.9,ce=0.1" \
        --loss-option lskd.temperature=2

Methods are the table ``METHODS`` below (name -> loss spec and options); ``--loss SPEC`` runs
any combination of registered terms as one more method. ``none`` is the student alone: the
same budget with hard labels only, the honest baseline. Every method trains the same student
for the same number of optimizer steps with the same optimizer, data order and augmentation;
only the loss differs.

``--labelled N`` keeps the labels of only N training images: distilled runs learn the rest
from the teacher (its soft outputs, and its argmax as hard label), the student alone trains
on the N labelled images for the same number of steps (more, shorter epochs). The teacher
may have been trained with all the labels: this measures how much of what a teacher learned
from labels the student lacks reaches the student, not KD against a fully labelled student.

``--views V`` (with ``--augment crop flip erase mixup cutmix``, any of them) trains on V seeded
augmented views per image, one per epoch: the teacher's logits on every view are computed once
and cached, so teacher and student see the same augmented image (consistent teaching, Beyer et
al. 2022) at about the student's own cost. Every method, the student alone included, trains on
those views (mixed views with mixed labels) for the same optimizer steps.

Each run writes ``<out-dir>/<method>/seed-<k>/`` (model/, checkpoints, metrics.jsonl,
results.json); the comparison goes to ``<out-dir>/summary.json`` and is printed.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from image_classification.data.images import check_augment
from image_classification.task import ImageDistillTask

METHODS = method_table(
    {
        "none": "ce=1",
        "kd": ("kd=0.5,ce=0.5", {"kd": {"temperature": 2.0}}),
        "dkd": ("dkd=1,ce=1", {"dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}}),
        "dist": ("dist=1,ce=1", {"dist": {"temperature": 4.0, "beta": 2.0, "gamma": 2.0}}),
        "lskd": ("lskd=0.9,ce=0.1", {"lskd": {"temperature": 2.0}}),
        "fitnet": "hint=1,ce=1",
        "at": "at=50,ce=1",
        "kd+at": ("kd=0.5,ce=0.5,at=50", {"kd": {"temperature": 2.0}}),
        "kd+fitnet": ("kd=0.5,ce=0.5,hint=1", {"kd": {"temperature": 2.0}}),
        # Relational and contrastive terms beside kd, at their papers' weights (RKD's 25:50
        # distance:angle ratio, SP's 3000, CRD's 0.8), on each model's deepest features.
        "kd+rkd": ("kd=0.5,ce=0.5,rkd=1", {"kd": {"temperature": 2.0}}),
        "kd+pkt": ("kd=0.5,ce=0.5,pkt=1", {"kd": {"temperature": 2.0}}),
        "kd+sp": ("kd=0.5,ce=0.5,sp=3000", {"kd": {"temperature": 2.0}}),
        "kd+crd": ("kd=0.5,ce=0.5,crd=0.8", {"kd": {"temperature": 2.0}}),
        # Function matching (Beyer et al. 2022): the teacher's outputs alone at T=1, no labels;
        # meant for --views, where teacher and student see the same (mixed) view.
        "fm": ("kd=1", {"kd": {"temperature": 1.0}}),
    }
)
"""Method name -> loss spec and options (names match the registry where they are the same
thing). fitnet's and at's layer pairs come from --hint-pair / --at-pairs."""


@dataclass
class Args(DistillArgs):
    """Distil a teacher into a small CNN with one or more methods over several seeds."""

    teacher: Path = Path("runs/image-classification/teacher/model")
    """Saved teacher folder (model.safetensors + config.json) from train_teacher.py, or a
    teacher spec .json for any torchvision classifier or your own nn.Module (arch, weights,
    input_size, mean, std; see image_classification.teacher_model.external)."""
    teacher_flip: bool = False
    """Average the teacher over each image and its mirror image (test-time augmentation; twice
    the teacher's cost). Only for teachers trained with flips on data whose classes survive a
    mirror image (Fashion-MNIST, CIFAR; not MNIST digits)."""
    dataset: Literal["fashion-mnist", "mnist", "cifar10", "cifar100", "folder"] | None = None
    """Dataset to distil on; unset: the one the teacher was trained on."""
    data_dir: Path | None = None
    """Dataset files, as for train_teacher.py; unset: the copy `make data` fetched."""
    methods: tuple[str, ...] = ("none", "kd")
    """Methods to compare, from METHODS: none, kd, dkd, dist, lskd, fitnet, at, kd+at,
    kd+fitnet, kd+rkd, kd+pkt, kd+sp, kd+crd, fm."""
    student: Literal["tiny", "small", "medium"] = "small"
    """Student CNN size: tiny, small or medium."""
    epochs: int = 10
    """Passes over the training split; every method gets the steps of that many passes (with
    --labelled, the student alone loops over its smaller set for the same steps)."""
    steps: int | None = None
    """Optimizer steps of every method, the student alone too, instead of --epochs passes:
    training sets of other sizes then compare at the same compute."""
    batch_size: int = 128
    """Images per optimizer step."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw or sgd, under a one-cycle schedule."""
    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 5e-4
    """Weight decay."""
    augment: tuple[str, ...] = ("auto",)
    """Augmentations from crop, flip (with --views also erase, mixup, cutmix); 'auto' picks
    the dataset's default; 'none' (or no values) turns it off. Off, the transfer set is fixed
    and teacher outputs are cached (flips alone keep the cache too with --teacher-flip, whose
    teacher is mirror-invariant); with --views the teacher's logits on every view are."""
    views: int = 0
    """Seeded augmented views per training image (consistent teaching): each epoch an image
    shows one of its V views, all V over any V epochs; the teacher's logits on every view are
    cached once and every method trains on exactly those images (mixup/cutmix views with
    mixed labels, the student alone too). 0: augmentation drawn afresh for every batch."""
    view_seed: int = 0
    """Seed of the views' augmentation (crop offsets, flips, erased boxes, mixing partners and
    weights), shared by every method and seed so that one view cache serves them all."""
    hint_pair: str = "stage2:layer2"
    """fitnet layer pair student:teacher (middle of each network, as in FitNets); the student
    map is pooled to the teacher's resolution before the 1x1-conv regressor."""
    at_pairs: tuple[str, ...] = ("stage1:layer1", "stage2:layer2", "stage3:layer3")
    """at layer pairs student:teacher by relative depth; maps are pooled to the smaller size.
    (The teacher's layer4 is 1x1 on 28x28 images with the default stem: no spatial map.)"""
    val_size: int | None = None
    """Images held out of train for validation; unset: the teacher's own split (a different
    split would put images the teacher trained on into validation)."""
    max_train: int | None = None
    """Train on a fixed random subset of this many images."""
    max_test: int | None = None
    """Evaluate on a fixed random subset of this many test images."""
    labelled: int | None = None
    """Keep hard labels for only this many training images (a fixed random subset, the same
    for every method and seed); the rest is a transfer set that only the teacher labels
    (Hinton's transfer set). Distilled runs train on all images, the unlabelled ones with the
    teacher's argmax as hard label; the student alone trains on the labelled ones for the
    same number of optimizer steps. Unset: every image keeps its label."""
    out_dir: Path = Path("runs/image-classification/distill")
    """Where runs (<method>/seed-<k>/) and summary.json go."""


# Quick: 1000 of 18k labels, 3 epochs, cached teacher, 3 seeds (docs/measured.md).
QUICK = Args(
    teacher=Path("runs/quick/image-classification/teacher/model"),
    epochs=3,
    seeds=3,
    max_train=18000,
    max_test=2000,
    labelled=1000,
    augment=("none",),
    loss_option=("kd.temperature=1",),
    out_dir=Path("runs/quick/image-classification/distill"),
)
# Full: all 55k labels, 15 epochs, mirror-averaged cached teacher, 3 seeds.
FULL = Args(
    teacher=Path("runs/full/image-classification/teacher/model"),
    teacher_flip=True,
    epochs=15,
    methods=("none", "kd", "kd+at"),
    seeds=3,
    augment=("none",),
    out_dir=Path("runs/full/image-classification/distill"),
)
PRESETS = {"quick": QUICK, "full": FULL}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, PRESETS)
    check_runtime(args)
    check_augment(args.augment, args.views)
    methods = resolve_methods(args.methods, METHODS, args.loss, args.loss_option)
    return run_experiment(lambda: ImageDistillTask(args), methods, args)


if __name__ == "__main__":
    run_main(main)
