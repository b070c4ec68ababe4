"""What the image domain supplies to the shared experiment runner (:mod:`common.experiment`):
load the teacher and the data, complete the loss options that depend on the models' feature
maps, build the teacher-output cache, and train, test and save one student per method and
seed. Everything else (methods, seeds, run folders, results, statistics) is common's."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.cache import (
    AUGMENTATION_REASON,
    TeacherOutputCache,
    ViewCacheAdapter,
    ViewOutputCache,
    cache_key,
    compute_outputs,
    default_cache_dir,
    fingerprint,
    load_or_build_views,
    load_or_compute,
)
from common.cli import args_dict
from common.errors import ConfigError, ShapeMismatchError
from common.experiment import NOT_SETTINGS, Method, RunOutcome, TeacherPlan
from common.io import sha256_file
from common.losses import Reads
from common.metrics import classification_metrics
from common.recipe import Recipe
from common.results import accuracy_metrics, load_results
from common.stats import proportion_sampling
from common.training import is_main_process, training_budget
from image_classification.data.images import (
    BatchBuilder,
    ImageData,
    Split,
    ViewRecipe,
    check_augment,
    load_dataset,
    make_loader,
    resolve_augment,
)
from image_classification.model_io import ModelConfig, build_model, load_model_dir, save_model_dir
from image_classification.pipeline import (
    ImageAdapter,
    MirroredCacheAdapter,
    describe_model,
    predict_logits,
    run_training,
    speed_report,
    view_logits,
)
from image_classification.teacher_model.external import (
    LoadedTeacher,
    TeacherSpec,
    is_teacher_spec,
    load_external_teacher,
    load_teacher_spec,
    read_spec_weights,
    resolve_builder,
)
from image_classification.teacher_model.resnet import flip_averaged

BATCH_KEYS = frozenset({"images", "labels", "index"})
"""What every image batch holds (``flipped`` too with flips, ``view`` with views)."""
RELATIONAL = frozenset({"rkd", "pkt", "sp"})
"""Terms that relate the examples of a batch to each other: here they read each model's
deepest tap (pooled: the penultimate features; SP flattens the map), as their papers do,
rather than the terms' logits default."""
LIVE_AUGMENT_REASON = f"{AUGMENTATION_REASON}; --views V caches V seeded views per image instead"
VIEW_TAPS_REASON = (
    "the view cache holds logits only (feature maps of every view of every image would take V "
    "times the maps of the whole training set); the live teacher sees the same views"
)
EXTERNAL_TAPS_REASON = (
    "reads the teacher's feature maps, and the teacher of {spec} has none ({arch} has no "
    'layer1..layer4 and the spec names no "taps"). Use a logit method (kd, dkd, dist, lskd), '
    'or name the modules to tap in the spec, e.g. "taps": {{"layer2": "features.4"}}'
)
VIEW_SETTINGS = ("views", "view_seed")
"""Recorded in a run's settings only with --views > 0, so runs without views keep the
settings record (and the finished runs) they had before the option existed."""


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


def _images_key(
    teacher_sha256: str,
    data: ImageData,
    teacher_flip: bool,
    outputs: frozenset[str],
    **preprocessing: Any,
) -> dict[str, Any]:
    """A cache key for the teacher's outputs on the training images: the teacher (the weights
    file's sha256 for a teacher folder; for a teacher spec the digest of its identity), the
    images, their normalisation, ``preprocessing`` and whether the teacher is mirror-averaged
    (recorded only when set, so single-view caches written before the option keep their key)."""
    return cache_key(
        teacher_sha256=teacher_sha256,
        data_sha256=fingerprint(data.train.images),
        preprocessing={
            "mean": data.mean,
            "std": data.std,
            "shape": data.shape,
            **preprocessing,
            **({"teacher_flip": True} if teacher_flip else {}),
        },
        outputs=sorted(outputs),
    )


def view_cache_key(
    teacher_sha256: str,
    data: ImageData,
    recipe: ViewRecipe,
    views: int,
    view_seed: int,
    teacher_flip: bool,
    outputs: frozenset[str] = frozenset({"logits"}),
) -> dict[str, Any]:
    """What the teacher's outputs on the seeded views depend on: the teacher (and whether it is
    mirror-averaged), the training images, their normalisation, the augmentation recipe (names
    and parameters), the number of views and the view seed. Any change is another file."""
    return _images_key(
        teacher_sha256, data, teacher_flip, outputs,
        views=views, view_seed=view_seed, recipe=recipe.describe(),
    )  # fmt: skip


def train_cache_key(
    teacher_sha256: str, data: ImageData, teacher_flip: bool, outputs: frozenset[str]
) -> dict[str, Any]:
    """What the teacher's outputs on the (unaugmented) training images depend on."""
    return _images_key(teacher_sha256, data, teacher_flip, outputs, augment=[])


def load_teacher(args: Any) -> tuple[nn.Module, ModelConfig, str]:
    """The frozen teacher (mirror-averaged with ``--teacher-flip``), its config and dataset."""
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
    return teacher, t_cfg, dataset


def load_distill_data(args: Any, t_cfg: ModelConfig, dataset: str) -> ImageData:
    """The teacher's dataset and validation split, normalised the way the teacher learned."""
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
    return data


def open_teacher_spec(args: Any) -> tuple[TeacherSpec, tuple, str]:
    """A teacher spec (``--teacher spec.json``), checked before any data is read: the spec,
    its weights (read, not unpickled) and the dataset to distil on."""
    spec = load_teacher_spec(args.teacher)
    resolve_builder(spec)  # unknown torchvision names, factories that do not import
    weights = read_spec_weights(spec)
    dataset = args.dataset or spec.dataset
    if dataset is None:
        raise ConfigError(
            f"teacher spec {args.teacher} does not say which dataset it was trained for: pass "
            '--dataset NAME, or add "dataset": "fashion-mnist" (or another) to the spec'
        )
    return spec, weights, dataset


def load_external(
    args: Any, spec: TeacherSpec, weights: tuple, dataset: str
) -> tuple[ImageData, LoadedTeacher]:
    """The dataset at its own normalisation (the student's) and the spec's teacher, wrapped to
    convert those images to what it declares, probed with one batch."""
    data = load_dataset(
        dataset,
        args.data_dir,
        val_size=args.val_size or 5000,
        max_train=args.max_train,
        max_test=args.max_test,
    )
    loaded = load_external_teacher(spec, data.shape, data.mean, data.std, data.classes, weights)
    return data, loaded


class ImageDistillTask:
    """A ResNet teacher distilled into small CNNs (see :class:`common.experiment.DistillTask`)."""

    domain = "image-classification"

    def __init__(self, args: Any) -> None:
        self.args = args
        self.external: LoadedTeacher | None = None
        if is_teacher_spec(args.teacher):
            spec, weights, self.dataset = open_teacher_spec(args)
        else:
            self.teacher_model, t_cfg, self.dataset = load_teacher(args)
        self.augment = augment = resolve_augment(args.augment, self.dataset)
        self.views = args.views
        check_augment(augment or ("none",), self.views)  # 'auto' resolved: empty for folders
        self.recipe = ViewRecipe(augment) if self.views else None
        if is_teacher_spec(args.teacher):
            self.data, self.external = load_external(args, spec, weights, self.dataset)
            self.teacher_model = self.external.model
            if args.teacher_flip:
                self.teacher_model = flip_averaged(self.teacher_model, self.dataset)
            self.digest, teacher_name = self.external.digest, spec.name
        else:
            self.data = load_distill_data(args, t_cfg, self.dataset)
            self.digest = sha256_file(args.teacher / "model.safetensors")
            teacher_name = f"{t_cfg.arch}-{t_cfg.stem}"
        data = self.data
        self.labelled = labelled_subset(len(data.train), args.labelled)
        self.val_loader = make_loader(data.val, data, 512, shuffle=False)
        self.test_loader = make_loader(data.test, data, 512, shuffle=False)
        self.t_val_logits, _ = predict_logits(self.teacher_model, self.val_loader)
        t_test_logits, self.test_labels = predict_logits(self.teacher_model, self.test_loader)
        self.t_test_logits = t_test_logits
        t_acc = classification_metrics(t_test_logits, self.test_labels, "test")["test/accuracy"]
        self.s_cfg = ModelConfig.for_data(data, "cnn", args.student, self.dataset)
        probe = build_model(self.s_cfg)
        self.s_taps, self.t_taps = (
            tap_shapes(probe, data.shape),
            tap_shapes(self.teacher_model, data.shape),
        )
        # Teacher and student speed measured side by side, once (a fresh student runs as fast
        # as a trained one): every results.json carries both, for the cross-domain report.
        self.speed = {
            "teacher": speed_report(self.teacher_model, data.shape),
            "student": speed_report(probe, data.shape),
        }
        self.teacher = {
            **describe_model(
                self.teacher_model,
                teacher_name + ("+flip-average" if args.teacher_flip else ""),
                data.shape,
                checkpoint=str(args.teacher),
                sha256=self.digest,
                **({"spec": self.external.identity} if self.external else {}),
            ),
            "test_accuracy": t_acc,
            "score": t_acc,
            "speed": self.speed["teacher"],
            "sampling": proportion_sampling(len(data.test)),
        }
        unrecorded = NOT_SETTINGS if self.views else (*NOT_SETTINGS, *VIEW_SETTINGS)
        self.settings = {
            "teacher_sha256": self.digest,
            **args_dict(args, unrecorded, only_when_set=("steps",)),
        }
        if self.external is not None:  # the dataset may come from the spec, not --dataset
            self.settings["dataset"] = self.dataset
        if self.views:
            # The teacher's logits on every seeded view are cached once (load_or_build_views).
            self.cacheable, self.why_not_cached = frozenset({"logits"}), VIEW_TAPS_REASON
        else:
            # A mirror-invariant teacher gives a mirrored image the outputs of the original
            # (feature maps mirrored), so flips alone keep the cache valid; crops do not.
            cacheable = not augment or (args.teacher_flip and set(augment) == {"flip"})
            self.cacheable = frozenset({"logits", *self.t_taps}) if cacheable else frozenset()
            self.why_not_cached = LIVE_AUGMENT_REASON
        # Every method gets the optimizer steps of `epochs` passes over the whole split.
        self.steps = args.steps or args.epochs * math.ceil(len(data.train) / args.batch_size)
        self.cache: TeacherOutputCache | ViewOutputCache | None = None
        self.alone_data = self.distill_data = data

    def produced(self) -> Reads:
        return Reads(
            student=frozenset({"logits", *self.s_taps}),
            teacher=frozenset({"logits", *self.t_taps}),
            batch=BATCH_KEYS | ({"view"} if self.views else set()),
        )

    def complete(self, method: Method) -> Method:
        """Layer pairs and regressor shapes of ``hint`` and ``at``, and ``crd``'s keys, widths
        and bank size, from the taps (options given with --loss-option win). Refuses dkd on
        mixed views (it needs one class label per image; a mixed view has two)."""
        s_taps, t_taps = self.s_taps, self.t_taps
        if self.external is not None and not t_taps and {"hint", "at"} & set(method.weights):
            spec = self.external.spec
            raise ConfigError(
                f"method {method.name!r} "
                + EXTERNAL_TAPS_REASON.format(spec=spec.path, arch=spec.arch)
            )
        if "dkd" in method.weights and self.recipe is not None and self.recipe.mixes:
            raise ConfigError(
                f"method {method.name!r}: dkd needs one class label per image, and mixup/cutmix "
                "views have two; drop mixup and cutmix from --augment, or use kd"
            )
        if "hint" in method.weights:
            given = method.options.get("hint", {})
            s_key, t_key = parse_pair(self.args.hint_pair, s_taps, t_taps, "fitnet")
            s_key, t_key = given.get("student_key", s_key), given.get("teacher_key", t_key)
            s_shape, t_shape = s_taps[s_key], t_taps[t_key]
            if s_shape[1] * s_shape[2] < t_shape[1] * t_shape[2]:
                raise ShapeMismatchError(
                    f"fitnet: student {s_key} {s_shape} is smaller than teacher {t_key} "
                    f"{t_shape}; the regressor pools the student down, so pick a teacher layer "
                    "no larger"
                )
            defaults = {
                "student_key": s_key,
                "teacher_key": t_key,
                "kind": "conv",
                "student_dim": s_shape[0],
                "teacher_dim": t_shape[0],
                "teacher_size": list(t_shape[1:]),
            }
            method = method.with_options("hint", **{**defaults, **given})
        if "at" in method.weights:
            pairs = [parse_pair(p, s_taps, t_taps, "at") for p in self.args.at_pairs]
            if not pairs:
                raise ConfigError("at: give at least one --at-pairs student:teacher")
            defaults = {
                "student_keys": [s for s, _ in pairs],
                "teacher_keys": [t for _, t in pairs],
                "resize": True,
            }
            method = method.with_options("at", **{**defaults, **method.options.get("at", {})})
        for term in RELATIONAL & set(method.weights):
            given = method.options.get(term, {})
            method = method.with_options(term, **{**self._deepest_keys(), **given})
        if "crd" in method.weights:
            method = method.with_options("crd", **self._crd_options(method.options.get("crd", {})))
        return method

    def _deepest_keys(self) -> dict[str, str]:
        """The deepest tap of each model (its last feature map: pooled, the penultimate
        features), where the relational and contrastive papers relate examples; logits for
        a teacher without taps. Callers merge the keys given as options over these."""
        return {
            "student_key": next(reversed(self.s_taps), "logits"),
            "teacher_key": next(reversed(self.t_taps), "logits"),
        }

    def _crd_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """``crd``'s keys, widths and bank size: the deepest taps (penultimate features, as in
        the paper; logits when a teacher has no taps), their pooled widths (flattened with
        ``pool=false``) and one bank row per training image (``index`` runs over them)."""

        def widths(taps: dict[str, tuple[int, ...]]) -> dict[str, int]:
            shapes = {**taps, "logits": (self.data.num_classes,)}
            pool = given.get("pool", True)
            return {k: v[0] if pool else math.prod(v) for k, v in shapes.items()}

        s_dims, t_dims = widths(self.s_taps), widths(self.t_taps)
        keys = {**self._deepest_keys(), **given}
        s_key, t_key = keys["student_key"], keys["teacher_key"]
        for key, dims, who in ((s_key, s_dims, "student"), (t_key, t_dims, "teacher")):
            if key not in dims:
                raise ConfigError(
                    f"crd: the {who} has no output {key!r}; set crd.{who}_key to one of "
                    f"{sorted(dims)}"
                )
        defaults = {
            "student_key": s_key,
            "teacher_key": t_key,
            "student_dim": s_dims[s_key],
            "teacher_dim": t_dims[t_key],
            "num_data": len(self.data.train),
        }
        return {**defaults, **given}

    def prepare(self, plans: dict[str, TeacherPlan], cache_keys: frozenset[str]) -> dict:
        """The teacher cache (logits too when the teacher labels the unlabelled images), and
        the teacher-labelled training split with ``--labelled``."""
        taught = any(p.needed for p in plans.values())
        if self.labelled is not None and cache_keys:
            cache_keys = cache_keys | {"logits"}
        build = self._build_view_cache if self.views else self._build_cache
        info = build(cache_keys) if cache_keys else {}
        if self.labelled is not None:
            self.alone_data = replace(self.data, train=self.data.train.subset(self.labelled))
            if taught:
                # With views the cache holds augmented views: label the plain images live.
                plain = self.cache if isinstance(self.cache, TeacherOutputCache) else None
                labels = teacher_labelled(self.data, self.labelled, self.teacher_model, plain)
                self.distill_data = replace(self.data, train=labels)
        return info

    def _build_view_cache(self, keys: frozenset[str]) -> dict:
        """The teacher's logits on every seeded view of every training image, keyed by the
        teacher, the data, the normalisation, the recipe, V and the view seed."""
        args, data = self.args, self.data
        assert keys == {"logits"}, keys
        # The builder the training loader makes too (run_training): the same views.
        builder = BatchBuilder(
            data.train,
            data.mean,
            data.std,
            self.augment,
            views=self.views,
            view_seed=args.view_seed,
            num_classes=data.num_classes,
        )
        key = view_cache_key(
            self.digest, data, builder.recipe, self.views, args.view_seed, args.teacher_flip, keys
        )
        self.cache, stats = load_or_build_views(
            args.cache_dir or default_cache_dir(),
            key,
            examples=len(data.train),
            views=self.views,
            specs={"logits": ((data.num_classes,), torch.float32)},
            compute=lambda start, stop: view_logits(self.teacher_model, builder, start, stop),
            progress=is_main_process(),
        )
        if is_main_process():
            print(stats.describe())
        return stats.to_dict()

    def _build_cache(self, keys: frozenset[str]) -> dict:
        args, data = self.args, self.data
        key = train_cache_key(self.digest, data, args.teacher_flip, keys)
        loader = make_loader(data.train, data, 512, shuffle=False)
        # Feature maps in float16: half the memory, and hint losses do not need more precision.
        dtypes = {k: torch.float16 for k in keys if k != "logits"}
        self.cache, stats = load_or_compute(
            args.cache_dir or default_cache_dir(),
            key,
            lambda: compute_outputs(
                self.teacher_model,
                ImageAdapter().teacher,
                loader,
                len(data.train),
                sorted(keys),
                dtypes,
            ),
        )
        if is_main_process():
            print(stats.describe())
        return stats.to_dict()

    def run(
        self, method: Method, seed: int, run_dir: Path, plan: TeacherPlan, settings: dict
    ) -> RunOutcome:
        args, data = self.args, self.data
        run_data = self.distill_data if plan.needed else self.alone_data
        epochs = math.ceil(self.steps / math.ceil(len(run_data.train) / args.batch_size))
        whole = math.ceil(self.steps / math.ceil(len(data.train) / args.batch_size))
        student = build_model(self.s_cfg)
        recipe = Recipe(
            name=f"{method.name} seed {seed}",
            run_dir=run_dir,
            # --steps: exactly that many optimizer steps (epochs would cap them below it
            # with --grad-accum or several processes).
            epochs=0 if args.steps else epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            optimizer=args.optimizer,
            max_steps=self.steps,
            # About as many validations as a run over the whole split makes.
            eval_every_epochs=max(1, epochs // whole),
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            mixed_precision=args.mixed_precision,
            grad_accum=args.grad_accum,
        )
        cached = plan.mode == "cache"
        if cached:
            self.cache.hits = 0  # type: ignore[union-attr]
        teacher = {"cache": self.cache, "live": self.teacher_model, "none": None}[plan.mode]
        if not cached:
            adapter = ImageAdapter()
        elif self.views:
            adapter = ViewCacheAdapter(ImageAdapter())
        else:
            adapter = MirroredCacheAdapter(ImageAdapter())
        if "crd" in method.weights and "seed" not in method.options.get("crd", {}):
            # Each seed its own memory banks and negatives (unless crd.seed is given).
            method = method.with_options("crd", seed=seed)
        student, state = run_training(
            student,
            method.build(),
            run_data,
            recipe,
            batch_size=args.batch_size,
            augment=self.augment,
            seed=seed,
            num_workers=args.num_workers,
            teacher=teacher,
            config=settings,
            teacher_val_logits=self.t_val_logits,
            adapter=adapter,
            views=self.views,
            view_seed=args.view_seed,
        )
        s_logits, _ = predict_logits(student, self.test_loader)
        final = {
            **classification_metrics(s_logits, self.test_labels, "test", self.t_test_logits),
            **state.last_eval,
        }
        model_dir = save_model_dir(student, self.s_cfg, run_dir / "model")
        return RunOutcome(
            student=describe_model(
                student,
                f"cnn-{args.student}",
                data.shape,
                checkpoint=str(model_dir),
                speed=self.speed["student"],
            ),
            metrics=accuracy_metrics(final, len(data.test), state.best),
            budget=training_budget(epochs, state, args.batch_size, args.grad_accum),
            extra={
                "augment": list(self.augment),
                **({"views": self.views, "view_seed": args.view_seed} if self.views else {}),
                "train_size": len(run_data.train),
                "labelled_train_size": len(data.train)
                if self.labelled is None
                else len(self.labelled),
                "test_size": len(data.test),
            },
            batches_served=self.cache.hits if cached else None,  # type: ignore[union-attr]
            loss=method.describe(),  # with the seed crd was given
        )

    def summary_extra(self) -> dict[str, Any]:
        n = len(self.data.train)
        if self.labelled is not None and is_main_process():
            print(
                f"labelled: {len(self.labelled)} of {n} training images; the student alone "
                f"trains on those, distilled runs on all, {self.steps} steps each"
            )
        return {
            "labelled": {
                "labelled": n if self.labelled is None else len(self.labelled),
                "train_size": n,
                "steps": self.steps,
            }
        }
