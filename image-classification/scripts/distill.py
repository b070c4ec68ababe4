"""Distil a saved ResNet teacher into a small CNN, comparing methods over seeds.

    python -m image_classification.scripts.distill --preset quick
    python -m image_classification.scripts.distill --preset full --methods none kd at dkd --seeds 3

Methods (combine with '+', e.g. ``kd+at``): ``none`` (student alone: the same budget with
hard labels only, the honest baseline), ``kd`` (Hinton: temperature and alpha), ``fitnet``
(hint loss between a student and a teacher layer of the same resolution, through a learned
1x1-conv regressor), ``at`` (attention transfer on every resolution both models share) and
``dkd`` (decoupled KD). Every method trains the same student for the same number of
optimizer steps with the same optimizer, data order and augmentation; only the loss differs.

``--labelled N`` keeps the labels of only N training images: distilled runs learn the rest
from the teacher (its soft outputs, and its argmax as hard label), the student alone trains
on the N labelled images for the same number of steps (more, shorter epochs). The teacher
may have been trained with all the labels: this measures how much of what a teacher learned
from labels the student lacks reaches the student, not KD against a fully labelled student.

Each run writes ``<out-dir>/<method>/seed-<k>/`` (model/, checkpoints, metrics.jsonl,
results.json); the comparison goes to ``<out-dir>/summary.json`` and is printed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn

from common.cache import (
    AUGMENTATION_REASON,
    TeacherOutputCache,
    cache_key,
    compute_outputs,
    default_cache_dir,
    fingerprint,
    load_or_compute,
)
from common.cli import args_dict, parse_args, run_main
from common.errors import ConfigError, ShapeMismatchError
from common.io import atomic_write_json, sha256_file
from common.losses import CombinedLoss, build_loss
from common.metrics import classification_metrics, count_parameters
from common.results import (
    RunResult,
    load_results,
    make_metrics,
    print_classification_summary,
    summarize_classification,
    write_results,
)
from common.training import is_main_process, training_budget
from image_classification.data.images import ImageData, Split, load_dataset, make_loader
from image_classification.model_io import ModelConfig, build_model, load_model_dir, save_model_dir
from image_classification.pipeline import (
    ImageAdapter,
    MirroredCacheAdapter,
    TrainSpec,
    describe_model,
    predict_logits,
    run_training,
    speed_report,
)
from image_classification.scripts.train_teacher import resolve_augment
from image_classification.teacher_model.resnet import flip_averaged

METHODS = ("none", "kd", "fitnet", "at", "dkd")
# Args that do not change what a run computes: a resumed run may differ in these.
NOT_SETTINGS = ("methods", "seeds", "seed_start", "out_dir", "resume", "teacher", "cache_dir")


@dataclass
class Args:
    """Distil a teacher into a small CNN with one or more methods over several seeds."""

    teacher: Path = Path("runs/image-classification/teacher/model")
    """Saved teacher folder (model.safetensors + config.json) from train_teacher.py."""
    teacher_flip: bool = False
    """Average the teacher over each image and its mirror image (test-time augmentation; twice
    the teacher's cost). Only for teachers trained with flips on data whose classes survive a
    mirror image (Fashion-MNIST, CIFAR; not MNIST digits)."""
    dataset: str | None = None
    """Dataset to distil on; unset: the one the teacher was trained on."""
    data_dir: Path | None = None
    """Dataset files, as for train_teacher.py; unset: the copy `make data` fetched."""
    methods: tuple[str, ...] = ("none", "kd")
    """Methods to compare: none, kd, fitnet, at, dkd, or combinations such as kd+at."""
    student: str = "small"
    """Student CNN size: tiny, small or medium."""
    epochs: int = 10
    """Passes over the training split; every method gets the steps of that many passes (with
    --labelled, the student alone loops over its smaller set for the same steps)."""
    batch_size: int = 128
    """Images per optimizer step."""
    optimizer: str = "adamw"
    """adamw or sgd, under a one-cycle schedule."""
    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 5e-4
    """Weight decay."""
    augment: tuple[str, ...] = ("auto",)
    """Augmentations from crop, flip; 'auto' picks the dataset's default; 'none' (or no
    values) turns it off. Off, the transfer set is fixed and teacher outputs are cached (flips
    alone keep the cache too with --teacher-flip, whose teacher is mirror-invariant)."""
    temperature: float = 4.0
    """KD and DKD softmax temperature."""
    alpha: float = 0.9
    """KD weight; the hard-label loss gets 1 - alpha."""
    hint_weight: float = 1.0
    """Weight of the FitNets hint loss (added to the hard-label loss)."""
    at_weight: float = 500.0
    """Weight of attention transfer per pair (beta / 2 with the authors' beta = 1000)."""
    dkd_alpha: float = 1.0
    """DKD weight of the target-class term."""
    dkd_beta: float = 8.0
    """DKD weight of the non-target term."""
    hint_pair: str = "stage2:layer2"
    """fitnet layer pair student:teacher (middle of each network, as in FitNets); the student
    map is pooled to the teacher's resolution before the 1x1-conv regressor."""
    at_pairs: tuple[str, ...] = ("stage1:layer1", "stage2:layer2", "stage3:layer3")
    """at layer pairs student:teacher by relative depth; maps are pooled to the smaller size.
    (The teacher's layer4 is 1x1 on 28x28 images with the default stem: no spatial map.)"""
    seeds: int = 1
    """Seeds per method (seed_start, seed_start + 1, ...); results report mean and std."""
    seed_start: int = 0
    """First seed."""
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
    """Where runs and the summary go."""
    resume: bool = True
    """Resume unfinished runs from their checkpoints (settings must match)."""
    cache: bool = True
    """Compute the teacher's outputs on the training split once and reuse them for every
    method and seed (only without augmentation, whose inputs change every epoch, or with flips
    alone and --teacher-flip)."""
    cache_dir: Path | None = None
    """Where cached teacher outputs go; unset: .cache/teacher-outputs beside the data."""


# Quick: none + kd on 18k images for 3 epochs without augmentation, so the teacher's outputs
# are cached once and KD costs about what the student alone does (about a minute on 2 cores).
# Only 1000 of the 18k images keep their labels: a 2-minute teacher (86%, trained on all 18k
# labels) is no better than the student alone with every label (measured, 1 seed, 5 epochs:
# 90.2%, KD 89.2%), so the quick preset shows a teacher passing on what it learned from 17k
# labels the student does not have (soft outputs + argmax on those images).
# Measured, 3 seeds, 2000 test images: none 83.18 +- 0.24%, kd 85.95 +- 0.09% (teacher 86.05%).
QUICK = Args(
    teacher=Path("runs/quick/image-classification/teacher/model"),
    epochs=3,
    max_train=18000,
    max_test=2000,
    labelled=1000,
    augment=("none",),
    temperature=1.0,
    alpha=0.5,
    out_dir=Path("runs/quick/image-classification/distill"),
)
# Full: the whole 55k training split with every label, 3 seeds of the student alone, kd and
# kd+at (attention transfer on the three resolutions both models share), 15 epochs. The teacher
# is averaged over each image and its mirror image (94.12% vs 93.98% single view). No
# augmentation, so the teacher's logits and maps are cached once (fp16 maps: ~2.5 GB of RAM) and
# every run costs about what the student alone does (6.5 min per run on 2 cores).
# Measured (3 seeds, 10k test images): none 91.71 +- 0.07%, kd 92.06 +- 0.08% (+0.35, 4.4 sigma),
# kd+at 92.03 +- 0.21%. With 5 epochs the student was not converged and KD was within noise
# (none 90.73 +- 0.28%, kd 90.95 +- 0.12%, single-view teacher). Settings from a 1-seed sweep
# on validation accuracy (18k images, 5 epochs, the 93.6% 10-epoch teacher): none 88.74%; kd
# T=1/2/4 at alpha 0.5: 89.04 / 89.02 / 88.74%, T=4/8 at alpha 0.9: 87.60 / 86.94%; dkd 85.32%;
# kd+fitnet 89.02%; kd+at 89.06% with at_weight 50, 85.80% with 500 (the attention term then
# dominates the loss).
FULL = Args(
    teacher=Path("runs/full/image-classification/teacher/model"),
    teacher_flip=True,
    epochs=15,
    methods=("none", "kd", "kd+at"),
    seeds=3,
    augment=("none",),
    temperature=2.0,
    alpha=0.5,
    at_weight=50.0,
    out_dir=Path("runs/full/image-classification/distill"),
)
PRESETS = {"quick": QUICK, "full": FULL}


def parse_method(method: str) -> list[str]:
    parts = method.split("+")
    unknown = [p for p in parts if p not in METHODS]
    if unknown or not parts or ("none" in parts and len(parts) > 1):
        raise ConfigError(
            f"bad method {method!r}; use one of {', '.join(METHODS)} or a combination such as kd+at"
        )
    return parts


def check_compatible(cfg: ModelConfig, data: ImageData, teacher_dir: Path) -> None:
    """The teacher must see the data the way it was trained to; say what to change if not."""
    if cfg.num_classes != data.num_classes:
        raise ShapeMismatchError(
            f"the teacher in {teacher_dir} predicts {cfg.num_classes} classes, dataset "
            f"{data.name!r} has {data.num_classes}. Distil on the teacher's dataset "
            f"({cfg.dataset!r}), or train a teacher for this one."
        )
    if list(cfg.classes) != list(data.classes):
        raise ShapeMismatchError(
            f"the teacher in {teacher_dir} was trained on classes {cfg.classes[:4]}... of "
            f"{cfg.dataset!r}, dataset {data.name!r} has {data.classes[:4]}...: the same count "
            "but other classes. Distil on the teacher's dataset."
        )
    if (cfg.in_channels, *cfg.image_size) != data.shape:
        raise ShapeMismatchError(
            f"the teacher in {teacher_dir} takes {cfg.in_channels}x{cfg.image_size[0]}x"
            f"{cfg.image_size[1]} images, dataset {data.name!r} has "
            f"{'x'.join(map(str, data.shape))}. Use the teacher's dataset ({cfg.dataset!r})."
        )


def tap_shapes(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """``{tap: (channels, height, width)}`` of a model on one input of ``shape``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        out = model(torch.zeros(1, *shape, device=device))
    model.train(was_training)
    return {k: tuple(v.shape[1:]) for k, v in out.items() if k != "logits"}


def parse_pair(pair: str, s_taps: dict, t_taps: dict, what: str) -> tuple[str, str]:
    s_key, sep, t_key = pair.partition(":")
    if not sep or s_key not in s_taps or t_key not in t_taps:
        raise ConfigError(
            f"{what}: bad layer pair {pair!r}; write student:teacher with student taps "
            f"{sorted(s_taps)} and teacher taps {sorted(t_taps)}"
        )
    for key, shape, who in ((s_key, s_taps[s_key], "student"), (t_key, t_taps[t_key], "teacher")):
        if shape[1] * shape[2] < 2:
            raise ShapeMismatchError(
                f"{what}: {who} tap {key} is {shape[1]}x{shape[2]}: no spatial map to match; "
                "pick a larger layer"
            )
    return s_key, t_key


def build_method_loss(
    parts: list[str], args: Args, s_taps: dict, t_taps: dict
) -> tuple[CombinedLoss, dict]:
    """The weighted loss for a method, and the options that define it (for results.json)."""
    weights: dict[str, float] = {"ce": 1.0}
    options: dict[str, dict[str, Any]] = {}
    if "kd" in parts:
        weights = {"kd": args.alpha, "ce": 1.0 - args.alpha}
        options["kd"] = {"temperature": args.temperature}
    if "dkd" in parts:
        weights["dkd"] = 1.0
        options["dkd"] = {
            "alpha": args.dkd_alpha,
            "beta": args.dkd_beta,
            "temperature": args.temperature,
        }
    if "fitnet" in parts:
        s_key, t_key = parse_pair(args.hint_pair, s_taps, t_taps, "fitnet")
        s_shape, t_shape = s_taps[s_key], t_taps[t_key]
        if s_shape[1] * s_shape[2] < t_shape[1] * t_shape[2]:
            raise ShapeMismatchError(
                f"fitnet: student {s_key} {s_shape} is smaller than teacher {t_key} {t_shape}; "
                "the regressor pools the student down, so pick a teacher layer no larger"
            )
        weights["hint"] = args.hint_weight
        options["hint"] = {
            "student_key": s_key,
            "teacher_key": t_key,
            "kind": "conv",
            "student_dim": s_shape[0],
            "teacher_dim": t_shape[0],
            "teacher_size": list(t_shape[1:]),
        }
    if "at" in parts:
        pairs = [parse_pair(p, s_taps, t_taps, "at") for p in args.at_pairs]
        if not pairs:
            raise ConfigError("at: give at least one --at-pairs student:teacher")
        weights["at"] = args.at_weight
        options["at"] = {
            "student_keys": [s for s, _ in pairs],
            "teacher_keys": [t for _, t in pairs],
            "resize": True,
        }
    return build_loss(weights, options), {"weights": weights, "options": options}


def teacher_keys(loss_desc: dict[str, Any]) -> set[str]:
    """Teacher outputs a method's loss reads (what a cache must hold)."""
    weights, options = loss_desc["weights"], loss_desc["options"]
    keys = {"logits"} if {"kd", "dkd"} & set(weights) else set()
    if "hint" in weights:
        keys.add(options["hint"]["teacher_key"])
    if "at" in weights:
        keys.update(options["at"]["teacher_keys"])
    return keys


def build_cache(
    args: Args,
    teacher: nn.Module,
    data: ImageData,
    augment: tuple[str, ...],
    keys: set[str],
    teacher_digest: str,
) -> tuple[TeacherOutputCache | None, dict[str, Any]]:
    """The teacher's outputs on the (fixed) training split, read from or written to the cache;
    ``None`` and the reason when caching is off."""
    if not keys:
        return None, {"enabled": False, "reason": "no method reads the teacher"}
    if not args.cache:
        return None, {"enabled": False, "reason": "turned off (--no-cache)"}
    # A mirror-invariant teacher gives a mirrored image the outputs of the original (feature
    # maps mirrored), so flips alone keep the cache valid; crops do not.
    if augment and not (args.teacher_flip and set(augment) == {"flip"}):
        print(AUGMENTATION_REASON)
        return None, {"enabled": False, "reason": AUGMENTATION_REASON}
    key = cache_key(
        teacher_sha256=teacher_digest,
        data_sha256=fingerprint(data.train.images),
        preprocessing={
            "mean": data.mean,
            "std": data.std,
            "augment": [],
            "shape": data.shape,
            # Only when set, so single-view caches written before the option keep their key.
            **({"teacher_flip": True} if args.teacher_flip else {}),
        },
        outputs=sorted(keys),
    )
    loader = make_loader(data.train, data, 512, shuffle=False)
    # Feature maps in float16: half the memory, and hint losses do not need more precision.
    dtypes = {k: torch.float16 for k in keys if k != "logits"}
    cache, stats = load_or_compute(
        args.cache_dir or default_cache_dir(),
        key,
        lambda: compute_outputs(
            teacher, ImageAdapter().teacher, loader, len(data.train), sorted(keys), dtypes
        ),
    )
    if is_main_process():
        print(stats.describe())
    return cache, {"enabled": True, **stats.to_dict()}


def labelled_subset(n: int, labelled: int | None) -> Tensor | None:
    """Sorted indices of the training images that keep their labels (``None``: all do). Drawn
    with a fixed generator: every method and seed sees the same labelled images."""
    if labelled is None:
        return None
    if not 0 < labelled < n:
        raise ConfigError(
            f"--labelled {labelled}: give between 1 and {n - 1} (the training split has {n} "
            "images), or leave it unset to keep every label"
        )
    return torch.randperm(n, generator=torch.Generator().manual_seed(1))[:labelled].sort().values


def teacher_labelled(
    data: ImageData, labelled: Tensor, teacher: nn.Module, cache: TeacherOutputCache | None
) -> Split:
    """The training split with the teacher's argmax as the label of every image outside
    ``labelled`` (read from the cache when there is one, else one pass of the teacher)."""
    if cache is not None:
        logits = cache.get("logits")
    else:
        logits, _ = predict_logits(teacher, make_loader(data.train, data, 512, shuffle=False))
    labels = logits.argmax(-1).to(data.train.labels.dtype)
    labels[labelled] = data.train.labels[labelled]
    return Split(data.train.images, labels)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, PRESETS)
    methods = {m: parse_method(m) for m in args.methods}
    teacher, t_cfg = load_model_dir(args.teacher)
    teacher.requires_grad_(False)
    dataset = args.dataset or t_cfg.dataset
    if args.teacher_flip:
        teacher = flip_averaged(teacher, dataset)
        trained = args.teacher.parent / "results.json"
        if trained.is_file() and "flip" not in load_results(trained)["extra"].get(
            "augment", ["flip"]
        ):
            print(
                f"warning: --teacher-flip, but the teacher in {args.teacher} was trained without "
                "flips: it may never have seen mirrored images"
            )
    teacher_val = t_cfg.extra.get("val_size")
    if args.val_size is not None and teacher_val is not None and args.val_size != teacher_val:
        raise ConfigError(
            f"--val-size {args.val_size} differs from the teacher's validation split "
            f"({teacher_val}): validation would then hold images the teacher trained on. "
            "Leave --val-size unset."
        )
    data = load_dataset(
        dataset,
        args.data_dir,
        val_size=args.val_size or teacher_val or 5000,
        max_train=args.max_train,
        max_test=args.max_test,
    )
    check_compatible(t_cfg, data, args.teacher)
    # The teacher's normalisation, not this subset's: the teacher must see what it learned on.
    data.mean, data.std = list(t_cfg.mean), list(t_cfg.std)
    augment = resolve_augment(args.augment, dataset)
    teacher_digest = sha256_file(args.teacher / "model.safetensors")
    labelled = labelled_subset(len(data.train), args.labelled)

    val_loader = make_loader(data.val, data, 512, shuffle=False)
    test_loader = make_loader(data.test, data, 512, shuffle=False)
    t_val_logits, _ = predict_logits(teacher, val_loader)
    t_test_logits, test_labels = predict_logits(teacher, test_loader)
    teacher_test = classification_metrics(t_test_logits, test_labels, "test")

    s_cfg = ModelConfig(
        family="cnn",
        arch=args.student,
        num_classes=data.num_classes,
        in_channels=data.shape[0],
        image_size=data.shape[1:],
        classes=data.classes,
        mean=data.mean,
        std=data.std,
        dataset=dataset,
    )
    t_taps = tap_shapes(teacher, data.shape)
    t_desc = describe_model(
        teacher,
        f"{t_cfg.arch}-{t_cfg.stem}" + ("+flip-average" if args.teacher_flip else ""),
        data.shape,
        checkpoint=str(args.teacher),
        sha256=teacher_digest,
    )
    # Build each method's loss once up front: it validates every option before any training,
    # and tells which teacher outputs the cache must hold.
    probe = build_model(s_cfg)
    method_keys = {
        m: teacher_keys(build_method_loss(p, args, tap_shapes(probe, data.shape), t_taps)[1])
        for m, p in methods.items()
    }
    # Teacher and student speed measured side by side, once (a fresh student runs as fast as a
    # trained one): every results.json carries both, for the cross-domain report.
    speed = {
        "teacher": speed_report(teacher, data.shape),
        "student": speed_report(probe, data.shape),
    }
    needed = set().union(*method_keys.values())
    if labelled is not None and needed:
        needed.add("logits")  # the teacher labels the transfer images
    cache, cache_info = build_cache(args, teacher, data, augment, needed, teacher_digest)
    # Every method gets the optimizer steps of `epochs` passes over the whole training split.
    steps = args.epochs * math.ceil(len(data.train) / args.batch_size)
    alone_data, distill_data = data, data
    if labelled is not None:
        alone_data = replace(data, train=data.train.subset(labelled))
        if needed:
            distill_data = replace(data, train=teacher_labelled(data, labelled, teacher, cache))
    runs: dict[str, list[dict]] = {}
    student: nn.Module | None = None
    for method, parts in methods.items():
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            start = time.perf_counter()
            run_dir = args.out_dir / method / f"seed-{seed}"
            run_data = distill_data if method_keys[method] else alone_data
            epochs = math.ceil(steps / math.ceil(len(run_data.train) / args.batch_size))
            set_seed(seed)  # same init, data order and augmentation for every method
            student = build_model(s_cfg)
            loss, loss_desc = build_method_loss(
                parts, args, tap_shapes(student, data.shape), t_taps
            )
            settings = {
                "method": method,
                "seed": seed,
                "teacher_sha256": teacher_digest,
                "loss": loss_desc,
                **args_dict(args, NOT_SETTINGS),
            }
            spec = TrainSpec(
                name=f"{method} seed {seed}",
                run_dir=run_dir,
                epochs=epochs,
                batch_size=args.batch_size,
                optimizer=args.optimizer,
                lr=args.lr,
                weight_decay=args.weight_decay,
                augment=augment,
                seed=seed,
                resume=args.resume,
                max_steps=steps,
                # About as many validations as a run over the whole split makes.
                eval_every_epochs=max(1, epochs // args.epochs),
            )
            cached = cache is not None and bool(method_keys[method])
            if cached:
                cache.hits = 0
            student, state, _ = run_training(
                student,
                loss,
                run_data,
                spec,
                teacher=(cache if cached else teacher) if method_keys[method] else None,
                config=settings,
                teacher_val_logits=t_val_logits,
                adapter=MirroredCacheAdapter(ImageAdapter()) if cached else None,
            )
            s_logits, _ = predict_logits(student, test_loader)
            final = {
                **classification_metrics(s_logits, test_labels, "test", t_test_logits),
                **state.last_eval,
            }
            model_dir = save_model_dir(student, s_cfg, run_dir / "model")
            if not method_keys[method]:
                cache_note = {"enabled": False, "reason": "student alone: no teacher"}
            else:
                cache_note = {**cache_info, "batches_served": cache.hits} if cached else cache_info
            result = RunResult(
                domain="image-classification",
                dataset=dataset,
                role="student",
                method=method,
                seed=seed,
                teacher={
                    **t_desc,
                    "test_accuracy": teacher_test["test/accuracy"],
                    "score": teacher_test["test/accuracy"],
                    "speed": speed["teacher"],
                },
                student=describe_model(
                    student,
                    f"cnn-{args.student}",
                    data.shape,
                    checkpoint=str(model_dir),
                    speed=speed["student"],
                ),
                metrics=make_metrics(final, "test/accuracy", best=state.best),
                loss=loss_desc,
                budget=training_budget(epochs, state, args.batch_size),
                wall_time_s=time.perf_counter() - start,
                extra={
                    "augment": list(augment),
                    "train_size": len(run_data.train),
                    "labelled_train_size": len(data.train) if labelled is None else len(labelled),
                    "test_size": len(data.test),
                    "args": settings,
                    "teacher_cache": cache_note,
                },
            )
            write_results(run_dir, result)
            runs.setdefault(method, []).append(result.to_dict())

    assert student is not None
    summary = summarize_classification(
        runs,
        {
            "name": t_desc["name"],
            "params": t_desc["params"],
            "test_accuracy": teacher_test["test/accuracy"],
            "test_size": len(data.test),
        },
    )
    summary["speed"] = speed
    s_desc = {"name": f"cnn-{args.student}", "params": count_parameters(student)}
    summary["student"] = s_desc
    summary["teacher_cache"] = cache_info
    summary["labelled"] = {
        "labelled": len(data.train) if labelled is None else len(labelled),
        "train_size": len(data.train),
        "steps": steps,
    }
    if is_main_process():
        atomic_write_json(args.out_dir / "summary.json", summary)
        if labelled is not None:
            print(
                f"labelled: {len(labelled)} of {len(data.train)} training images; the student "
                f"alone trains on those, distilled runs on all, {steps} steps each"
            )
        print_classification_summary(summary, "images")
        print(f"summary: {args.out_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
