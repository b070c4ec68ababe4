"""Distil a fine-tuned BERT teacher into a small BERT student, comparing methods over seeds.

    python -m nlp.scripts.distill --preset quick
    python -m nlp.scripts.distill --preset full --methods none kd kd+hidden kd+attention --seeds 3

Methods (combine with '+', e.g. ``kd+hidden``): ``none`` (the student alone: hard labels
only, on the labelled training texts, for the same number of optimizer steps: the honest
baseline), ``kd`` (Hinton: temperature and alpha), ``hidden`` (hidden-state MSE through a
learned linear projection, student layer i -> teacher layer i*N/n by default, TinyBERT-style)
and ``attention`` (KL between last-layer attention distributions, MiniLM-style; heads are
averaged when the counts differ). Every method trains the same student from the same
initialisation with the same optimizer and schedule; only the loss and the data differ.

Distilled runs also learn from the *transfer set*: unlabeled text (by default the ~48k
sentences of polarity's full reviews) labelled by the teacher, its argmax as the hard label
and its logits for ``kd``. The student alone cannot use it (nobody labels it). The teacher's
logits on the labelled and transfer texts come from common's teacher-output cache (one pass,
reused by every method, seed and later run with the same teacher and tokens), so ``kd``
never runs the teacher; ``hidden`` and ``attention`` run it live (``--no-cache``: all live).

Each run writes ``<out-dir>/<method>/seed-<k>/`` (model/, checkpoints, metrics.jsonl,
results.json); the comparison, with both models' size and speed measured side by side,
goes to ``<out-dir>/summary.json`` and is printed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from datasets import Dataset
from torch import Tensor

from common.cache import (
    CachedTeacherAdapter,
    TeacherOutputCache,
    cache_key,
    compute_outputs,
    default_cache_dir,
    fingerprint,
    load_or_compute,
)
from common.cli import args_dict, parse_args, run_main
from common.errors import ConfigError
from common.io import atomic_write_json
from common.losses import CombinedLoss, build_loss
from common.metrics import classification_metrics, count_parameters
from common.results import (
    RunResult,
    make_metrics,
    print_classification_summary,
    summarize_classification,
    write_results,
)
from common.training import is_main_process, training_budget
from nlp.data.text import (
    IGNORE_LABEL,
    DataError,
    count_truncated,
    load_dataset,
    make_loader,
    token_tensors,
    tokenize,
    with_labels,
)
from nlp.model_io import load_model_dir, save_model_dir, weights_digest
from nlp.pipeline import (
    Taps,
    TextAdapter,
    TrainSpec,
    describe_model,
    example_batches,
    predict_logits,
    run_training,
    speed_report,
)
from nlp.student_model.bert import build_student, spread
from nlp.teacher_model.bert import model_classes

METHODS = ("none", "kd", "hidden", "attention")
NOT_SETTINGS = ("methods", "seeds", "seed_start", "out_dir", "resume", "teacher", "cache_dir")
LIVE_REASON = (
    "teacher runs live: this method reads hidden states or attention maps (per token, in "
    "batches of varying length), which would take gigabytes to cache; logits are cached"
)


@dataclass
class Args:
    """Distil a fine-tuned teacher into a small BERT with one or more methods over seeds."""

    teacher: Path = Path("runs/nlp/teacher/model")
    """Fine-tuned teacher folder (from train_teacher.py, or any save_pretrained classifier)."""
    dataset: str | None = None
    """Dataset to distil on; unset: the one the teacher was trained on (with its split)."""
    data_file: Path | None = None
    """With --dataset file: a CSV/JSONL file with 'text' and 'label' (labels must be the
    teacher's classes)."""
    methods: tuple[str, ...] = ("none", "kd")
    """Methods to compare: none, kd, hidden, attention, or combinations such as kd+hidden."""
    student: str = "tiny"
    """Student: tiny (2 layers, hidden 128), small (4 x 256) or truncated (the teacher's
    width, every k-th of its layers)."""
    student_layers: int | None = None
    """Layers of the student; unset: 2 (tiny), 4 (small), half the teacher's (truncated)."""
    student_init: str = "pca"
    """tiny/small embeddings: pca (teacher's, projected to the student width) or random."""
    transfer: str = "auto"
    """Unlabeled text the teacher labels for distilled runs: auto (polarity's review
    sentences for polarity, none otherwise), none, reviews, or a file (CSV/JSONL with a
    'text' column, or .txt with one text per line)."""
    max_transfer: int | None = None
    """Use a fixed random subset of this many transfer texts."""
    max_length: int | None = None
    """Tokens per text; unset: the length the teacher was trained with."""
    epochs: int = 3
    """Passes over the distilled runs' training data (labelled + transfer); the student
    alone gets the same number of optimizer steps."""
    batch_size: int = 32
    """Texts per optimizer step."""
    lr: float | None = None
    """Peak AdamW learning rate; unset: 1e-3 for tiny/small (trained from scratch), 1e-4
    for truncated (starts from the teacher's weights)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    temperature: float = 2.0
    """KD softmax temperature."""
    alpha: float = 0.5
    """KD weight; the hard-label loss gets 1 - alpha."""
    hidden_weight: float = 1.0
    """Weight of the hidden-state MSE (added to the other terms)."""
    hidden_layers: tuple[str, ...] = ("auto",)
    """hidden layer pairs student:teacher (0 = embeddings); auto: student layer i -> teacher
    layer i * N / n (rounded half up), for each student layer."""
    attention_weight: float = 1.0
    """Weight of the attention KL (added to the other terms)."""
    attention_layers: str = "auto"
    """attention layer pair student:teacher (1-based); auto: last to last, as in MiniLM."""
    seeds: int = 1
    """Seeds per method (seed_start, seed_start + 1, ...); results report mean and std."""
    seed_start: int = 0
    """First seed."""
    max_train: int | None = None
    """Train on a fixed random subset of this many labelled texts."""
    max_test: int | None = None
    """Evaluate on a fixed random subset of this many test texts."""
    select_best: bool = True
    """Score the weights of the best validation epoch (every method alike)."""
    out_dir: Path = Path("runs/nlp/distill")
    """Where runs and the summary go."""
    resume: bool = True
    """Resume unfinished runs from their checkpoints (settings must match)."""
    cache: bool = True
    """Compute the teacher's logits on the training and transfer texts once and reuse them
    (for every method and seed, and later runs): kd then never runs the teacher."""
    cache_dir: Path | None = None
    """Where cached teacher outputs go; unset: .cache/teacher-outputs beside the data."""


# Quick: none + kd with 2000 transfer sentences for 2 epochs (314 steps). Measured on one
# niced, busy core: 3.1 CPU-minutes, most of it the one cached teacher pass over 5000 texts
# (teacher 79.0%, student alone 74.5%, kd 75.0% on 600 test sentences: one seed, noise-level).
QUICK = Args(
    teacher=Path("runs/quick/nlp/teacher/model"),
    max_transfer=2000,
    epochs=2,
    out_dir=Path("runs/quick/nlp/distill"),
)
# Full: 3 seeds of none and kd on 3000 labelled + 20,000 teacher-labelled sentences (2157 steps
# a run; kd reads cached teacher logits, so it costs about what the student alone does).
# hidden and attention run the teacher live (about 3x a kd step): add them with --methods.
# Measured (3 seeds, 600 test sentences, 1 core of 2 while another job ran; ~25 min with the
# teacher's 8): teacher 80.67%, none 73.39 +- 0.19%, kd 75.67 +- 0.33% (93.8% of the teacher).
FULL = Args(
    teacher=Path("runs/full/nlp/teacher/model"),
    methods=("none", "kd"),
    max_transfer=20000,
    epochs=3,
    seeds=3,
    out_dir=Path("runs/full/nlp/distill"),
)
PRESETS = {"quick": QUICK, "full": FULL}


def parse_method(method: str) -> list[str]:
    parts = method.split("+")
    unknown = [p for p in parts if p not in METHODS]
    if unknown or ("none" in parts and len(parts) > 1) or len(set(parts)) != len(parts):
        raise ConfigError(
            f"bad method {method!r}; use one of {', '.join(METHODS)} or a combination such as "
            "kd+hidden"
        )
    return parts


def _pair(text: str, s_max: int, t_max: int, lowest: int, what: str) -> tuple[int, int]:
    s, sep, t = text.partition(":")
    try:
        pair = (int(s), int(t))
    except ValueError:
        pair = None
    if not sep or pair is None or not (lowest <= pair[0] <= s_max and lowest <= pair[1] <= t_max):
        raise ConfigError(
            f"{what}: bad layer pair {text!r}; write student:teacher with student layers "
            f"{lowest}..{s_max} and teacher layers {lowest}..{t_max}"
        )
    return pair


def method_taps(parts: list[str], args: Args, s_layers: int, t_layers: int) -> Taps:
    """Layer mapping of the hidden and attention terms, from the options and model depths."""
    taps = Taps()
    if "hidden" in parts:
        if tuple(args.hidden_layers) == ("auto",):
            taps.hidden = [(i, spread(i, s_layers, t_layers)) for i in range(1, s_layers + 1)]
        else:
            taps.hidden = [_pair(p, s_layers, t_layers, 0, "hidden") for p in args.hidden_layers]
        if not taps.hidden:
            raise ConfigError("hidden: give at least one --hidden-layers student:teacher pair")
    if "attention" in parts:
        taps.attention = (
            (s_layers, t_layers)
            if args.attention_layers == "auto"
            else _pair(args.attention_layers, s_layers, t_layers, 1, "attention")
        )
    return taps


def build_method_loss(
    parts: list[str], args: Args, student_cfg: Any, teacher_cfg: Any
) -> tuple[CombinedLoss, dict]:
    """The weighted loss of a method and the options that define it (for results.json)."""
    weights: dict[str, float] = {"ce": 1.0}
    options: dict[str, dict[str, Any]] = {}
    if "kd" in parts:
        weights = {"kd": args.alpha, "ce": 1.0 - args.alpha}
        options["kd"] = {"temperature": args.temperature}
    if "hidden" in parts:
        weights["hint"] = args.hidden_weight
        s_dim, t_dim = student_cfg.hidden_size, teacher_cfg.hidden_size
        options["hint"] = {
            "student_key": "hidden",
            "teacher_key": "hidden",
            "mask_key": "attention_mask",
            "kind": "linear",
            # Equal widths (a truncated teacher) are compared directly, as DistilBERT does.
            **({"student_dim": s_dim, "teacher_dim": t_dim} if s_dim != t_dim else {}),
        }
    if "attention" in parts:
        weights["attention_kl"] = args.attention_weight
        options["attention_kl"] = {
            "student_key": "attention",
            "teacher_key": "attention",
            "mask_key": "attention_mask",
            "average_heads": student_cfg.num_attention_heads != teacher_cfg.num_attention_heads,
        }
    return build_loss(weights, options), {"weights": weights, "options": options}


def teacher_reads(loss_desc: dict[str, Any]) -> set[str]:
    """Teacher outputs a method's loss reads (what a cache would have to hold)."""
    weights, options = loss_desc["weights"], loss_desc["options"]
    keys = {"logits"} if "kd" in weights else set()
    keys |= {options[t]["teacher_key"] for t in ("hint", "attention_kl") if t in weights}
    return keys


def build_teacher_logits(
    args: Args,
    teacher: Any,
    inputs: Dataset,
    n_train: int,
    teacher_digest: str,
    max_length: int,
    pad_id: int,
) -> tuple[Tensor | None, TeacherOutputCache | None, dict[str, Any]]:
    """The teacher's logits on the distillation inputs (labelled texts, then transfer texts):
    from the teacher-output cache (one teacher pass, ever, for these weights and tokens), or
    a live pass over the transfer texts alone when the cache is off (for their labels)."""
    if args.cache:
        key = cache_key(
            teacher_sha256=teacher_digest,
            data_sha256=fingerprint(*token_tensors(inputs)),
            preprocessing={"max_length": max_length, "padding": "dynamic", "pad_id": pad_id},
            outputs=["logits"],
        )
        loader = make_loader(inputs, 128, False, pad_id)
        cache, stats = load_or_compute(
            args.cache_dir or default_cache_dir(),
            key,
            lambda: compute_outputs(
                teacher, TextAdapter().teacher, loader, len(inputs), ["logits"]
            ),
        )
        if is_main_process():
            print(stats.describe())
        return cache.get("logits"), cache, {"enabled": True, **stats.to_dict()}
    info = {"enabled": False, "reason": "turned off (--no-cache)"}
    if len(inputs) == n_train:
        return None, None, info
    extra = inputs.select(range(n_train, len(inputs)))
    loader = make_loader(extra, 128, False, pad_id)
    logits, _ = predict_logits(teacher, loader, f"teacher labels {len(extra)} transfer texts")
    return torch.cat([torch.zeros(n_train, logits.shape[1]), logits]), None, info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, PRESETS)
    methods = {m: parse_method(m) for m in args.methods}
    teacher, tokenizer, meta = load_model_dir(args.teacher)
    teacher.requires_grad_(False)
    classes = model_classes(teacher)
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise ConfigError(
            f"{args.teacher} does not say which dataset it was trained on (no distillery.json); "
            "pass --dataset (and --data-file for your own file)"
        )
    same_data = dataset == meta.get("dataset")
    data_file = args.data_file or (
        Path(meta["data_file"]) if same_data and meta.get("data_file") else None
    )
    data = load_dataset(
        dataset,
        data_file,
        # The teacher's own split: a different one would put its training texts in test.
        val_frac=meta.get("val_frac", 0.1) if same_data else 0.1,
        test_frac=meta.get("test_frac", 0.15) if same_data else 0.15,
        split_seed=meta.get("split_seed", 0) if same_data else 0,
        max_train=args.max_train,
        max_test=args.max_test,
        classes=classes,
        transfer=args.transfer,
        max_transfer=args.max_transfer,
    )
    max_length = args.max_length or meta.get("max_length") or 128
    pad_id = tokenizer.pad_token_id or 0
    train, val, test = (
        tokenize(s, tokenizer, max_length) for s in (data.train, data.val, data.test)
    )
    teacher_digest = weights_digest(args.teacher)
    t_layers = teacher.config.num_hidden_layers

    # Build every method's student and loss once up front: it validates every option before
    # any training, and the fresh student is timed beside the teacher (a trained one runs
    # exactly as fast), so every results.json carries both speeds.
    set_seed(args.seed_start)
    probe = build_student(args.student, teacher, classes, args.student_init, args.student_layers)
    method_taps_ = {
        m: method_taps(p, args, probe.config.num_hidden_layers, t_layers)
        for m, p in methods.items()
    }
    losses = {
        m: build_method_loss(p, args, probe.config, teacher.config)[1] for m, p in methods.items()
    }
    one, many = example_batches(val, pad_id=pad_id)
    speed = {"teacher": speed_report(teacher, one, many), "student": speed_report(probe, one, many)}
    t_desc = describe_model(
        teacher,
        str(meta.get("base", args.teacher)),
        one,
        checkpoint=str(args.teacher),
        sha256=teacher_digest,
    )
    del probe

    # The teacher's view of validation and test, and of the distillation inputs (labelled
    # texts, then transfer texts): computed once for all methods and seeds.
    t_val_logits, _ = predict_logits(teacher, make_loader(val, 128, False, pad_id))
    t_test_logits, test_labels = predict_logits(teacher, make_loader(test, 128, False, pad_id))
    assert test_labels is not None
    teacher_test = classification_metrics(t_test_logits, test_labels, "test")
    transfer = None if data.transfer is None else tokenize(data.transfer, tokenizer, max_length)
    unlabelled = None if transfer is None else torch.full((len(transfer),), IGNORE_LABEL)
    inputs = with_labels(train, transfer, unlabelled)
    # Every method, the student alone too, gets the steps of one pass over these inputs per
    # epoch, so runs of separate invocations stay comparable.
    steps = args.epochs * math.ceil(len(inputs) / args.batch_size)
    distill_train = inputs
    if all(parts == ["none"] for parts in methods.values()):  # nothing reads the teacher
        cache, cache_info = None, {"enabled": False, "reason": "no method reads the teacher"}
    else:
        t_logits, cache, cache_info = build_teacher_logits(
            args, teacher, inputs, len(train), teacher_digest, max_length, pad_id
        )
        if transfer is not None:  # the teacher labels the transfer texts
            assert t_logits is not None
            distill_train = with_labels(train, transfer, t_logits[len(train) :].argmax(-1))

    runs: dict[str, list[dict]] = {}
    student = None
    for method, parts in methods.items():
        taps, reads = method_taps_[method], teacher_reads(losses[method])
        # Logits come from the cache; hidden states and attention maps (per token, in
        # batches of varying length) would take gigabytes, so those methods run the teacher.
        cached = cache is not None and reads == {"logits"}
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            start = time.perf_counter()
            run_dir = args.out_dir / method / f"seed-{seed}"
            set_seed(seed)  # same initialisation and data order for every method
            student = build_student(
                args.student, teacher, classes, args.student_init, args.student_layers
            )
            if taps.attention is not None:  # SDPA returns no attention maps: eager does
                student.set_attn_implementation("eager")
            teacher.set_attn_implementation("eager" if taps.attention else "sdpa")
            loss, loss_desc = build_method_loss(parts, args, student.config, teacher.config)
            lr = args.lr or (1e-4 if args.student == "truncated" else 1e-3)
            settings = {
                "method": method,
                "seed": seed,
                "teacher_sha256": teacher_digest,
                "loss": loss_desc,
                "lr_used": lr,
                "steps": steps,
                **args_dict(args, NOT_SETTINGS),
            }
            spec = TrainSpec(
                name=f"{method} seed {seed}",
                run_dir=run_dir,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=lr,
                weight_decay=args.weight_decay,
                seed=seed,
                max_steps=steps,
                select_best=args.select_best,
                resume=args.resume,
            )
            alone = method == "none"
            if cached:
                cache.hits = 0
            student, state, _ = run_training(
                student,
                loss,
                train if alone else distill_train,
                val,
                spec,
                adapter=CachedTeacherAdapter(TextAdapter(taps)) if cached else TextAdapter(taps),
                teacher=None if alone else (cache if cached else teacher),
                config=settings,
                teacher_val_logits=t_val_logits,
                pad_id=pad_id,
            )
            s_logits, _ = predict_logits(student, make_loader(test, 128, False, pad_id))
            final = {
                **classification_metrics(s_logits, test_labels, "test", t_test_logits),
                **state.last_eval,
            }
            s_meta = {
                "role": "student",
                "method": method,
                "dataset": dataset,
                "data_file": str(data_file) if data_file else None,
                "classes": classes,
                "val_frac": meta.get("val_frac"),
                "test_frac": meta.get("test_frac"),
                "split_seed": meta.get("split_seed"),
                "teacher": str(args.teacher),
                "test_accuracy": final["test/accuracy"],
            }
            model_dir = save_model_dir(student, tokenizer, run_dir / "model", s_meta, max_length)
            if alone:
                cache_note = {"enabled": False, "reason": "student alone: no teacher"}
            elif cached:
                cache_note = {**cache_info, "batches_served": cache.hits}
            elif cache is not None:
                cache_note = {"enabled": False, "reason": LIVE_REASON}
            else:
                cache_note = cache_info
            result = RunResult(
                domain="nlp",
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
                    f"bert-{args.student}",
                    one,
                    checkpoint=str(model_dir),
                    init=args.student_init if args.student != "truncated" else "teacher-layers",
                    speed=speed["student"],
                ),
                metrics=make_metrics(final, "test/accuracy", best=state.best),
                loss=loss_desc,
                budget=training_budget(args.epochs, state, args.batch_size),
                wall_time_s=time.perf_counter() - start,
                extra={
                    "train_size": len(train) if alone else len(distill_train),
                    "labelled_train_size": len(train),
                    "transfer_size": 0 if alone or transfer is None else len(transfer),
                    "test_size": len(test),
                    "max_length": max_length,
                    "truncated_train_texts": count_truncated(train, max_length),
                    "taps": {"hidden": taps.hidden, "attention": taps.attention},
                    "teacher_cache": cache_note,
                    "args": settings,
                },
            )
            write_results(run_dir, result)
            runs.setdefault(method, []).append(result.to_dict())

    if student is None:
        raise DataError("no method ran; give --methods and --seeds >= 1")
    summary = summarize_classification(
        runs,
        {
            "name": t_desc["name"],
            "params": t_desc["params"],
            "test_accuracy": teacher_test["test/accuracy"],
            "test_size": len(test),
        },
    )
    speed["throughput_ratio"] = speed["student"]["throughput"] / speed["teacher"]["throughput"]
    speed["latency_ratio"] = speed["teacher"]["latency_b1_ms"] / speed["student"]["latency_b1_ms"]
    summary["speed"] = speed
    summary["student"] = {"name": f"bert-{args.student}", "params": count_parameters(student)}
    summary["param_ratio"] = t_desc["params"] / summary["student"]["params"]
    summary["transfer_size"] = 0 if transfer is None else len(transfer)
    summary["teacher_cache"] = cache_info
    if is_main_process():
        atomic_write_json(args.out_dir / "summary.json", summary)
        print_classification_summary(summary, "texts")
        print(f"summary: {args.out_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
