"""The method x seed experiment runner every ``distill.py`` uses, and the teacher record every
``train_teacher.py`` writes.

A domain supplies only what is its own, as a :class:`DistillTask`: what its adapter produces,
which teacher outputs it can cache, how to train, test, save and describe a student for one
method and seed. This module does the rest the same way in every domain:

* methods are data: a domain's table ``name -> loss spec and options`` (:func:`method_table`),
  plus ``--loss SPEC`` (one more method, named by its spec) and ``--loss-option
  term.key=value`` for any registered term, all checked before any work starts
  (:func:`resolve_methods`);
* every loss term says what it reads (:meth:`~common.losses.LossTerm.reads`); a term that
  reads an output the domain does not produce is one error listing what exists
  (:func:`check_reads`), and whether the teacher is not needed, served from the cache or run
  live is decided here, once, with one reason recorded in ``extra.teacher_cache``
  (:func:`plan_teacher`);
* seeds, run folders ``<out-dir>/<method>/seed-<k>``, skipping runs that finished with the
  same settings, the settings record, ``results.json``, ``summary.json`` and the printed
  table, with every statistic from :mod:`common.stats` (the report's path too).
"""

from __future__ import annotations

import inspect
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate.utils import set_seed

from common.cli import args_dict
from common.errors import ConfigError
from common.io import atomic_write_json, claim_folder
from common.losses import LOSSES, CombinedLoss, Reads, build_loss, parse_loss_spec
from common.results import (
    RESULTS_FILE,
    ResultsError,
    RunResult,
    finished_run,
    load_results,
    make_metrics,
    write_results,
)
from common.stats import as_json, summarize
from common.training import is_main_process

__all__ = [
    "DistillArgs",
    "DistillTask",
    "Method",
    "RunOutcome",
    "RuntimeArgs",
    "TeacherPlan",
    "check_reads",
    "make_metrics",
    "method_table",
    "plan_teacher",
    "resolve_methods",
    "reuse_teacher",
    "run_experiment",
    "write_teacher_result",
]


# --------------------------------------------------------------------------- arguments


@dataclass
class RuntimeArgs:
    """How training runs on the hardware: the same options in every script."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Accelerate mixed precision: no, fp16 (CUDA only) or bf16 (recent GPUs and CPUs)."""
    grad_accum: int = 1
    """Gradient accumulation: optimizer steps every this many batches (batch size per step
    is then batch_size x grad_accum x processes)."""
    num_workers: int = 0
    """Data-loader worker processes (0: load in the training process)."""


@dataclass
class DistillArgs(RuntimeArgs):
    """What every distill.py takes besides its domain's own options."""

    methods: tuple[str, ...] = ("none", "kd")
    """Methods to compare, by name from the domain's method table (see --help's epilog)."""
    loss: str | None = None
    """One more method: a loss spec such as 'lskd=0.9,ce=0.1' (any registered terms and
    weights), run beside --methods and named by its spec."""
    loss_option: tuple[str, ...] = ()
    """Term options as term.key=value (e.g. kd.temperature=2, dist.beta=2), applied to every
    method whose loss has that term; values are JSON (numbers, true/false, lists) or text."""
    seeds: int = 1
    """Seeds per method (seed_start, seed_start + 1, ...); results report mean and std."""
    seed_start: int = 0
    """First seed."""
    out_dir: Path = Path("runs/distill")
    """Where runs (<method>/seed-<k>/) and summary.json go."""
    resume: bool = True
    """Resume unfinished runs from their checkpoints, and skip runs that finished with the
    same settings (settings must match)."""
    cache: bool = True
    """Serve the teacher's outputs from the teacher-output cache where the domain can (one
    teacher pass, reused by every method, seed and later run); off: run the teacher live."""
    cache_dir: Path | None = None
    """Where cached teacher outputs go; unset: .cache/teacher-outputs beside the data."""
    checkpoint_every: int = 200
    """Optimizer steps between checkpoints (also one at every epoch end); a killed run resumes
    from the last one."""


NOT_SETTINGS = (
    "methods",
    "loss",
    "loss_option",
    "seeds",
    "seed_start",
    "out_dir",
    "resume",
    "teacher",
    "cache_dir",
    "num_workers",
    "checkpoint_every",
)
"""DistillArgs fields that do not change what one run computes: a run's settings record
leaves them out (the method's loss is recorded in full instead)."""


def check_runtime(args: RuntimeArgs) -> None:
    """Refuse impossible runtime options before any work starts."""
    if args.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(
            f"--mixed-precision {args.mixed_precision!r}: use no, fp16 (CUDA) or bf16"
        )
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(
            "--mixed-precision fp16 needs a CUDA GPU (Accelerate would silently train in fp32 "
            "here); use bf16 on a CPU, or no"
        )
    if args.grad_accum < 1:
        raise ConfigError(f"--grad-accum must be >= 1, got {args.grad_accum}")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")


def check_seeds(args: DistillArgs) -> None:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (runs per method), got {args.seeds}")
    if args.seed_start < 0:
        raise ConfigError(f"--seed-start must be >= 0, got {args.seed_start}")


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A named loss: weights per registered term and each term's options. ``extra`` holds a
    domain's own per-method settings (RL: how states are collected)."""

    name: str
    weights: Mapping[str, float]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def alone(self) -> bool:
        """True for the student-alone baseline (``none``)."""
        return self.name == "none"

    def describe(self) -> dict[str, Any]:
        """The ``loss`` record of results.json."""
        return {
            "weights": dict(self.weights),
            "options": {t: dict(o) for t, o in self.options.items() if o},
        }

    def build(self) -> CombinedLoss:
        return build_loss(dict(self.weights), {t: dict(o) for t, o in self.options.items()})

    def with_options(self, term: str, **options: Any) -> Method:
        """A copy with ``options`` merged into ``term``'s (the domain completes options that
        depend on its models, e.g. a regressor's widths)."""
        merged = {t: dict(o) for t, o in self.options.items()}
        merged.setdefault(term, {}).update(options)
        return Method(self.name, dict(self.weights), merged, dict(self.extra))


def method_table(
    table: Mapping[str, str | tuple[str, Mapping[str, Mapping[str, Any]]]],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Method]:
    """A domain's methods from ``{name: spec}`` or ``{name: (spec, options)}``; every term
    must be registered and every option must be one its term takes."""
    methods = {}
    for name, entry in table.items():
        spec, options = (entry, {}) if isinstance(entry, str) else entry
        method = Method(name, parse_loss_spec(spec), options, dict((extra or {}).get(name, {})))
        _check_options(method)
        methods[name] = method
    return methods


def _term_options(term: str) -> list[str]:
    params = inspect.signature(LOSSES.get(term)).parameters
    return [p for p in params if p != "self"]


def _check_options(method: Method) -> None:
    for term in method.weights:
        LOSSES.get(term)  # an unknown term: ConfigError listing the registered ones
    for term, options in method.options.items():
        if term not in method.weights:
            raise ConfigError(
                f"method {method.name!r}: options for {term!r}, which its loss "
                f"{_spec(method.weights)!r} does not use"
            )
        known = _term_options(term)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"method {method.name!r}: loss term {term!r} has no option {unknown[0]!r}; "
                f"its options: {', '.join(known) or '(none)'}"
            )


def _spec(weights: Mapping[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in weights.items())


def parse_option_value(text: str) -> Any:
    """``2`` -> 2, ``true`` -> True, ``[1, 2]`` -> [1, 2]; anything else stays text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_methods(
    names: Sequence[str],
    table: Mapping[str, Method],
    loss: str | None = None,
    loss_options: Sequence[str] = (),
    loss_extra: Mapping[str, Any] | None = None,
) -> list[Method]:
    """The methods a run compares: ``names`` from the domain's table, then ``loss`` (one more
    method named by its spec), with every ``term.key=value`` option applied. Everything is
    checked here, before any work: unknown names, terms and options are errors that list
    what exists."""
    methods = []
    for name in names:
        if name not in table:
            raise ConfigError(
                f"unknown method {name!r}; this domain's methods: {', '.join(table)} "
                "(or give any loss with --loss SPEC, e.g. --loss 'kd=0.9,ce=0.1')"
            )
        methods.append(table[name])
    if loss is not None:
        weights = parse_loss_spec(loss)
        methods.append(Method(_spec(weights), weights, {}, dict(loss_extra or {})))
    if not methods:
        raise ConfigError("no method to run: give --methods NAME ... and/or --loss SPEC")
    seen = [m.name for m in methods]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"method listed twice in {seen}; give each once")
    for text in loss_options:
        target, sep, raw = text.partition("=")
        term, dot, key = target.strip().partition(".")
        if not sep or not dot or not term or not key:
            raise ConfigError(
                f"--loss-option {text!r}: write term.key=value, e.g. kd.temperature=2"
            )
        if key not in _term_options(term):  # also refuses an unregistered term
            raise ConfigError(
                f"--loss-option {text!r}: loss term {term!r} has no option {key!r}; its "
                f"options: {', '.join(_term_options(term))}"
            )
        users = [m for m in methods if term in m.weights]
        if not users:  # e.g. a preset's kd option while --methods none runs alone
            print(f"note: --loss-option {text} ignored: no method of this run uses {term!r}")
            continue
        value = parse_option_value(raw.strip())
        methods = [m.with_options(term, **{key: value}) if m in users else m for m in methods]
    for m in methods:
        _check_options(m)
    return methods


def check_reads(method: str, loss: CombinedLoss, produced: Reads, domain: str) -> None:
    """Every key each term of ``loss`` reads must be one the domain's adapter produces (or its
    batches hold); else one error naming the term, the key and what exists."""
    for term_name, term in loss.terms.items():
        reads = term.reads()  # type: ignore[operator]
        for side in ("student", "teacher", "batch"):
            missing = sorted(getattr(reads, side) - getattr(produced, side))
            if missing:
                have = ", ".join(sorted(getattr(produced, side))) or "(nothing)"
                where = "batches" if side == "batch" else f"{side} adapter"
                raise ConfigError(
                    f"method {method!r}: loss term {term_name!r} reads {side} output "
                    f"{missing[0]!r}, which the {domain} {where} do not produce (they give: "
                    f"{have}). Pick another term or point its options at an existing key."
                )


# --------------------------------------------------------------------------- the teacher


@dataclass(frozen=True)
class TeacherPlan:
    """How a method's run gets the teacher's outputs, and why."""

    mode: Literal["none", "cache", "live"]
    reason: str
    reads: frozenset[str] = frozenset()

    @property
    def needed(self) -> bool:
        return self.mode != "none"

    def note(self, cache_info: Mapping[str, Any] | None, batches_served: int | None) -> dict:
        """The ``extra.teacher_cache`` record of one run."""
        note: dict[str, Any] = {
            "mode": self.mode,
            "enabled": self.mode == "cache",
            "reason": self.reason,
        }
        if self.mode == "cache":
            note.update(cache_info or {})
            note["batches_served"] = batches_served
        return note


def plan_teacher(
    reads: frozenset[str],
    *,
    cache: bool,
    cacheable: frozenset[str],
    why_not_cached: str,
) -> TeacherPlan:
    """Decide, for every domain alike: no term reads the teacher -> not run at all; caching
    turned off, or an output the domain cannot cache now (``cacheable``; ``why_not_cached``
    says why) -> live; else served from the cache."""
    if not reads:
        return TeacherPlan("none", "student alone: no loss term reads the teacher")
    if not cache:
        return TeacherPlan("live", "turned off (--no-cache)", reads)
    uncached = sorted(reads - cacheable)
    if uncached:
        return TeacherPlan("live", f"teacher runs live for {uncached}: {why_not_cached}", reads)
    return TeacherPlan("cache", "teacher outputs served from the cache", reads)


# --------------------------------------------------------------------------- the runner


@dataclass
class RunOutcome:
    """What a domain's training of one (method, seed) gives back to the runner."""

    student: dict[str, Any]
    """Model description for results.json (name, params, size, speed, ...)."""
    metrics: dict[str, Any]
    """The metrics block (:func:`common.results.make_metrics`, with ``sampling``)."""
    budget: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    batches_served: int | None = None
    """Teacher batches the cache served (for the record)."""
    loss: dict[str, Any] | None = None
    """The loss record when it is not the method's (RL's baseline trains by PPO)."""


class DistillTask(Protocol):
    """What a domain supplies to :func:`run_experiment`."""

    domain: str
    dataset: str
    teacher: dict[str, Any]
    """Teacher description for results.json: name, params, score, speed, sampling, ..."""
    settings: dict[str, Any]
    """What every run's result depends on besides its method and seed (compared on resume)."""
    cacheable: frozenset[str]
    """Teacher outputs the domain can serve from the cache in this run."""
    why_not_cached: str
    """Why the other outputs (or all of them) run live."""

    def produced(self) -> Reads:
        """Outputs the adapters give and keys the batches hold."""
        ...

    def complete(self, method: Method) -> Method:
        """Fill in options that depend on the models (widths, layer maps); check the rest."""
        ...

    def prepare(self, plans: Mapping[str, TeacherPlan], cache_keys: frozenset[str]) -> dict:
        """Build what the runs share (the teacher cache for ``cache_keys``); returns the
        cache's record for results.json ({} without a cache)."""
        ...

    def run(
        self, method: Method, seed: int, run_dir: Path, plan: TeacherPlan, settings: dict
    ) -> RunOutcome:
        """Build, train (with ``settings`` as the checkpoint's settings), test and save one
        student."""
        ...

    def summary_extra(self) -> dict[str, Any]:
        """Domain facts for summary.json besides the statistics ({} if none)."""
        ...


def run_experiment(
    task: DistillTask | Callable[[], DistillTask], methods: Sequence[Method], args: DistillArgs
) -> dict[str, Any]:
    """Every method x seed of ``task`` (or of the task a factory builds, once the output
    folder is claimed): check, plan the teacher, run or reuse each, write each
    ``results.json``, then ``<out-dir>/summary.json``; prints the table; returns the summary."""
    check_seeds(args)
    claim_folder(args.out_dir)
    if not hasattr(task, "run"):  # a factory: claim the folder before the expensive set-up
        task = task()
    methods = [task.complete(m) for m in methods]
    # A method without loss terms is a domain's own baseline (RL: PPO from scratch).
    losses = {m.name: m.build() for m in methods if m.weights}
    produced = task.produced()
    for name, loss in losses.items():
        check_reads(name, loss, produced, task.domain)
    plans = {
        m.name: plan_teacher(
            frozenset(losses[m.name].reads().teacher) if m.name in losses else frozenset(),
            cache=args.cache,
            cacheable=task.cacheable,
            why_not_cached=task.why_not_cached,
        )
        for m in methods
    }
    if is_main_process():
        for name, plan in plans.items():
            print(f"{name}: {plan.reason}")
    keys = frozenset().union(*(p.reads for p in plans.values() if p.mode == "cache"))
    cache_info = task.prepare(plans, keys)
    results = []
    for m in methods:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            results.append(_one_run(task, m, seed, args, plans[m.name], cache_info))
    return _summary(task, results, args.out_dir)


def _one_run(
    task: DistillTask,
    method: Method,
    seed: int,
    args: DistillArgs,
    plan: TeacherPlan,
    cache_info: dict,
) -> dict[str, Any]:
    run_dir = Path(args.out_dir) / method.name / f"seed-{seed}"
    settings = {"method": method.name, "seed": seed, "loss": method.describe(), **task.settings}
    done = finished_run(run_dir, settings, [run_dir / "model"]) if args.resume else None
    if done is not None:
        if is_main_process():
            score = done["metrics"]["final"][done["metrics"]["primary"]]
            print(
                f"{method.name} seed {seed}: finished before with the same settings "
                f"({done['metrics']['primary']} {score:.4g}); reused"
            )
        return done
    start = time.perf_counter()
    set_seed(seed)  # same initialisation and data order for every method
    out = task.run(method, seed, run_dir, plan, settings)
    result = RunResult(
        domain=task.domain,
        dataset=task.dataset,
        role="student",
        method=method.name,
        seed=seed,
        teacher=task.teacher,
        student=out.student,
        metrics=out.metrics,
        loss=out.loss or method.describe(),
        budget=out.budget,
        wall_time_s=time.perf_counter() - start,
        extra={
            **out.extra,
            "teacher_cache": plan.note(cache_info, out.batches_served),
            "settings": settings,
        },
    )
    write_results(run_dir, result)
    if is_main_process():
        primary = out.metrics["primary"]
        print(
            f"{method.name} seed {seed}: {primary} {out.metrics['final'][primary]:.4g} "
            f"({result.wall_time_s:.0f} s)"
        )
    return result.to_dict()


_RUN_KEYS = ("method", "seed", "loss")
"""The settings a run adds to its task's (:func:`_one_run`)."""


def earlier_runs(out_dir: Path, settings: Mapping[str, Any], skip: set[str]) -> list[dict]:
    """Finished runs in ``out_dir`` (``<method>/seed-<k>/results.json``) of methods not in
    ``skip`` whose settings, but for method, seed and loss, are ``settings``: runs of other
    methods on the same task, teacher and data, which an earlier invocation made."""
    wanted = json.loads(json.dumps(dict(settings)))
    found = []
    for path in sorted(Path(out_dir).glob(f"*/seed-*/{RESULTS_FILE}")):
        try:
            data = load_results(path)
        except ResultsError:
            continue  # a broken file is the report's to name, not the summary's
        stored = dict(data.get("extra", {}).get("settings") or {})
        if data.get("role") != "student" or stored.get("method") in skip:
            continue
        if {k: v for k, v in stored.items() if k not in _RUN_KEYS} == wanted:
            found.append(data)
    return found


def _summary(task: DistillTask, results: list[dict], out_dir: Path) -> dict[str, Any]:
    """Summarise this invocation's runs together with the finished runs of other methods that
    earlier invocations left in ``out_dir`` with the same settings, so ``--methods kd`` after
    ``--methods none`` still compares kd with the student alone."""
    from common.report import render_terminal  # local: the report imports plotting

    def group_key(r: dict) -> tuple:
        return r["domain"], r["dataset"], (r.get("teacher") or {}).get("name"), r["student"]["name"]

    earlier = earlier_runs(out_dir, task.settings, {r["method"] for r in results})
    earlier = [r for r in earlier if group_key(r) == group_key(results[0])]
    if earlier and is_main_process():
        counts = Counter(r["method"] for r in earlier)
        listed = ", ".join(f"{m} ({n} seed{'s' * (n > 1)})" for m, n in sorted(counts.items()))
        print(f"summary also holds earlier runs with the same settings: {listed}")
    (group,) = summarize([*results, *earlier])
    summary = {**as_json(group), **task.summary_extra()}
    if is_main_process():
        atomic_write_json(Path(out_dir) / "summary.json", summary)
        print(render_terminal([group], []))
        print(f"summary: {Path(out_dir) / 'summary.json'}")
    return summary


# --------------------------------------------------------------------------- teachers


def teacher_settings(
    args: Any, data_sha256: str, only_when_set: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A teacher run's settings record (what its checkpoints must match) and its reuse key:
    the settings and a fingerprint of the data. ``only_when_set``: options newer than
    finished teachers, recorded only away from their defaults (:func:`common.cli.args_dict`)."""
    settings = args_dict(args, ("out_dir", "resume", "retrain"), only_when_set)
    return settings, {**settings, "data_sha256": data_sha256}


def reuse_teacher(
    run_dir: Path, reuse_key: dict[str, Any], required: Sequence[Path], retrain: bool
) -> dict[str, Any] | None:
    """The results of a teacher that finished in ``run_dir`` with exactly ``reuse_key`` (and
    whose ``required`` files exist), announced; None when it must be trained. Claims
    ``run_dir`` first (:func:`common.io.claim_folder`)."""
    claim_folder(run_dir)
    done = finished_run(run_dir, reuse_key, required)
    if done is None or retrain:
        return None
    if is_main_process():
        primary = done["metrics"]["primary"]
        print(
            f"teacher reused: {run_dir} (same settings and data; {primary} "
            f"{done['metrics']['final'][primary]:.4g}). Pass --retrain to train it again."
        )
    return done


def write_teacher_result(
    run_dir: Path,
    *,
    domain: str,
    dataset: str,
    seed: int,
    model: dict[str, Any],
    metrics: dict[str, Any],
    budget: dict[str, Any],
    started: float,
    reuse_key: dict[str, Any],
    loss: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    summary: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Write a teacher's ``results.json`` (role "teacher"; ``reuse_key`` is what
    :func:`reuse_teacher` compares) and print ``summary()``."""
    result = RunResult(
        domain=domain,
        dataset=dataset,
        role="teacher",
        method="teacher",
        seed=seed,
        student=model,
        teacher=None,
        metrics=metrics,
        loss=loss or {"weights": {"ce": 1.0}, "options": {}},
        budget=budget,
        wall_time_s=time.perf_counter() - started,
        extra={**(extra or {}), "settings": reuse_key},
    )
    write_results(run_dir, result)
    if summary is not None and is_main_process():
        print(summary())
    return result.to_dict()
