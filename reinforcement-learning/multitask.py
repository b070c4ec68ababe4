"""Multi-task policy distillation (Rusu et al. 2015): one student for several tasks, each
with its own PPO teacher. What ``scripts/distill_multitask.py`` runs: the tasks and their
reference returns, the loop's adapter, loss and batches across tasks, one seed's training,
test and record, and the summary over seeds. The method table (which loss per kind of
action space) is distill.py's, passed in by the script.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn

from common.callbacks import KeepBest
from common.errors import ConfigError
from common.experiment import Method
from common.io import atomic_write_json, sha256_file
from common.losses import CombinedLoss, LossTerm, Reads
from common.metrics import count_parameters, model_size_bytes
from common.recipe import Recipe, standard_callbacks
from common.results import git_commit, library_versions
from common.stats import mean_sampling, mean_std, score_interval
from common.training import (
    DistillationLoop,
    LoopConfig,
    LoopState,
    is_main_process,
    make_accelerator,
    trainable_parameters,
    training_budget,
)
from reinforcement_learning.data.replay import (
    Collector,
    RoundBatches,
    StateBuffer,
    beta_schedule,
)
from reinforcement_learning.envs import (
    TEST_SEED,
    VAL_SEED,
    SpaceSpec,
    check_env_id,
    check_same_spaces,
    env_space_spec,
    random_policy,
    run_episodes,
    teacher_return_kept,
)
from reinforcement_learning.pipeline import evaluate_returns
from reinforcement_learning.student_model.multitask import (
    MultiTaskConfig,
    MultiTaskPolicy,
    TaskConfig,
    save_multitask_dir,
)
from reinforcement_learning.teacher_model.hyperparams import env_settings
from reinforcement_learning.teacher_model.ppo import Teacher, load_teacher

Methods = Mapping[str, Mapping[str, Method]]
"""distill.py's table: kind of action space -> method name -> method."""

RESULTS = "results-multitask.json"
"""Per seed. Not ``results.json``: that schema describes one dataset, and the report would
list a multi-task record as malformed."""


# --------------------------------------------------------------------------- tasks


def parse_tasks(items: tuple[str, ...]) -> list[tuple[str, Path]]:
    """``ENV_ID=TEACHER_DIR`` items as (env id, teacher folder); malformed input is one
    :class:`ConfigError` naming the item and the form."""
    example = "--tasks CartPole-v1=runs/quick/reinforcement-learning/CartPole-v1/teacher/model"
    if len(items) < 2:
        raise ConfigError(
            f"--tasks: a multi-task student needs at least two tasks, got {len(items)}; "
            f"write ENV_ID=TEACHER_DIR per task, e.g. {example} Acrobot-v1=... (or --preset quick)"
        )
    tasks: list[tuple[str, Path]] = []
    for item in items:
        env_id, sep, folder = (part.strip() for part in item.partition("="))
        if not sep or not env_id or not folder:
            raise ConfigError(f"--tasks {item!r}: write ENV_ID=TEACHER_DIR, e.g. {example}")
        if env_id in (e for e, _ in tasks):
            raise ConfigError(f"--tasks: {env_id} appears twice; give each environment once")
        tasks.append((env_id, Path(folder)))
    for env_id, _ in tasks:
        check_env_id(env_id)  # every id before any teacher is loaded
    return tasks


@dataclass
class TaskSetup:
    """One task: its teacher, spaces and budget, then (:func:`score_references`) the returns
    of the teacher and of a random policy on the test and validation episodes."""

    env_id: str
    teacher: Teacher
    spec: SpaceSpec
    sha256: str
    steps_per_round: int
    teacher_test: dict[str, Any] = field(default_factory=dict)
    random_test: float = math.nan
    teacher_val: float = math.nan
    random_val: float = math.nan

    def config(self) -> TaskConfig:
        s = self.spec
        return TaskConfig(
            env_id=self.env_id,
            obs_dim=s.obs_dim,
            action_dim=s.action_dim,
            continuous=s.continuous,
            normalization=self.teacher.normalization.to_dict(),
            action_low=list(s.action_low) if s.action_low else None,
            action_high=list(s.action_high) if s.action_high else None,
        )


def load_task(env_id: str, folder: Path, steps_per_round: int | None) -> TaskSetup:
    """Load a teacher, refused (as distill.py does) when its spaces are not the environment's."""
    teacher = load_teacher(folder, env_id=env_id)
    spec = env_space_spec(env_id)
    trained_on = f" (trained on {teacher.env_id})" if teacher.env_id else ""
    check_same_spaces(teacher.spec, spec, f"the teacher in {folder}{trained_on}", env_id)
    return TaskSetup(
        env_id=env_id,
        teacher=teacher,
        spec=spec,
        sha256=sha256_file(teacher.path),
        steps_per_round=steps_per_round or env_settings(env_id).steps_per_round,
    )


def _random_return(env_id: str, episodes: int, seed: int) -> float:
    return run_episodes(random_policy(env_id, seed), env_id, episodes, seed).mean


def score_references(s: TaskSetup, eval_episodes: int, val_episodes: int) -> None:
    """Score the teacher and a random policy once: every seed is measured against the same
    references (test episodes for the results, validation episodes for the learning curve)."""
    test, episodes = evaluate_returns(
        s.teacher.policy, s.env_id, s.spec, eval_episodes, TEST_SEED, "test"
    )
    val, _ = evaluate_returns(s.teacher.policy, s.env_id, s.spec, val_episodes, VAL_SEED, "val")
    s.teacher_test = {
        "return_mean": test["test/return_mean"],
        "return_std": test["test/return_std"],
        "sampling": mean_sampling(episodes.returns),
    }
    s.random_test = _random_return(s.env_id, eval_episodes, TEST_SEED)
    s.teacher_val = val["val/return_mean"]
    s.random_val = _random_return(s.env_id, val_episodes, VAL_SEED)


# --------------------------------------------------------------------------- training


def obs_key(task: str) -> str:
    return f"obs/{task}"


def _prefixed(outputs: Mapping[str, Tensor], task: str) -> dict[str, Tensor]:
    return {f"{task}/{k}": v for k, v in outputs.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class MultiTaskAdapter:
    """Batches hold ``obs/<task>`` for every task; both sides return ``<task>/<key>`` outputs
    (the student through ``forward(obs, task)``, each task's teacher on its own states; the
    teachers are a ``ModuleDict`` keyed by task position)."""

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = tasks

    def student(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        device, out = _device(model), {}
        for task in self.tasks:
            out.update(_prefixed(model(batch[obs_key(task)].to(device), task), task))
        return out

    def teacher(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        device, out = _device(model), {}
        for i, task in enumerate(self.tasks):
            out.update(_prefixed(model[str(i)](batch[obs_key(task)].to(device)), task))
        return out


class TaskLoss(LossTerm):
    """One task's single-task loss (a :class:`CombinedLoss`) on its ``<task>/`` outputs, as one
    term of the multi-task sum (so the loop logs ``loss/<task>``)."""

    def __init__(self, task: str, loss: CombinedLoss) -> None:
        super().__init__()
        self.task, self.loss = task, loss

    def reads(self) -> Reads:
        inner = self.loss.reads()
        prefix = lambda keys: frozenset(f"{self.task}/{k}" for k in keys)  # noqa: E731
        return Reads(prefix(inner.student), prefix(inner.teacher), frozenset())

    def _own(self, outputs: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
        if outputs is None:
            return None
        start = f"{self.task}/"
        return {k[len(start) :]: v for k, v in outputs.items() if k.startswith(start)}

    def forward(self, student: Any, teacher: Any, batch: Any) -> Tensor:
        return self.loss(self._own(student), self._own(teacher), batch).total


def task_method(s: TaskSetup, methods: Methods, name: str) -> Method:
    """The method ``name`` of distill.py's table for the task's kind of action space."""
    return methods["continuous" if s.spec.continuous else "discrete"][name]


def task_losses(setups: list[TaskSetup], methods: Methods, name: str) -> dict[str, dict[str, Any]]:
    """Each task's loss record: distill.py's method for its kind of action space."""
    return {s.env_id: task_method(s, methods, name).describe() for s in setups}


def multitask_loss(setups: list[TaskSetup], methods: Methods, name: str) -> CombinedLoss:
    """The sum of the per-task losses, one term per task, weight 1 each."""
    terms: dict[str, LossTerm] = {}
    for s in setups:
        # Module names cannot hold dots; Gymnasium ids practically never do.
        terms[s.env_id.replace(".", "_")] = TaskLoss(
            s.env_id, task_method(s, methods, name).build()
        )
    return CombinedLoss(terms, dict.fromkeys(terms, 1.0))


class MultiTaskBatches:
    """The loop's data: one epoch = one round. Each task's :class:`RoundBatches` collects into
    its own buffer at the start of the round, then every batch holds ``batch_size`` states of
    each task under ``obs/<task>``."""

    def __init__(self, rounds: dict[str, RoundBatches]) -> None:
        self.rounds = rounds

    def set_epoch(self, epoch: int) -> None:
        for r in self.rounds.values():
            r.set_epoch(epoch)

    def __len__(self) -> int:
        return min(len(r) for r in self.rounds.values())

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        tasks = list(self.rounds)
        streams = [iter(self.rounds[t]) for t in tasks]
        for batches in zip(*streams, strict=True):
            yield {obs_key(t): b["obs"] for t, b in zip(tasks, batches, strict=True)}

    def last(self) -> dict[str, float]:
        out = {}
        for task, r in self.rounds.items():
            out.update({k.replace("collect/", f"collect/{task}/"): v for k, v in r.last().items()})
        return out

    def close(self) -> None:
        for r in self.rounds.values():
            r.collector.close()


def _kept_stats(kept: list[float]) -> dict[str, float]:
    """Minimum and mean share kept over the tasks whose teacher beats a random policy (kept is
    NaN for the others: there is nothing to keep)."""
    finite = [k for k in kept if math.isfinite(k)]
    return {
        "kept_min": min(finite) if finite else math.nan,
        "kept_mean": sum(finite) / len(finite) if finite else math.nan,
    }


def validation(setups: list[TaskSetup], episodes: int, batches: MultiTaskBatches):
    """The per-round evaluation: each task's validation return and share kept (against the
    teacher's and a random policy's validation returns), their minimum and mean."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        metrics, kept = {}, []
        for s in setups:
            view = model.task_view(s.env_id)  # type: ignore[operator]
            m, _ = evaluate_returns(view, s.env_id, s.spec, episodes, VAL_SEED, "val")
            kept.append(teacher_return_kept(m["val/return_mean"], s.teacher_val, s.random_val))
            metrics[f"val/{s.env_id}/return"] = m["val/return_mean"]
            metrics[f"val/{s.env_id}/kept"] = kept[-1]
        stats = _kept_stats(kept)
        return {**metrics, **{f"val/{k}": v for k, v in stats.items()}, **batches.last()}

    return evaluate


def train_student(
    student: MultiTaskPolicy,
    setups: list[TaskSetup],
    args: Any,
    methods: Methods,
    rounds: int,
    seed: int,
    run_dir: Path,
) -> tuple[LoopState, MultiTaskBatches]:
    """Rounds of collect-then-train through the shared loop (its single adapter and loss see
    all tasks at once: batches keyed by task, one loss term per task)."""
    schedule = beta_schedule(args.method, args.beta_decay)
    batches = MultiTaskBatches(
        {
            s.env_id: RoundBatches(
                Collector(
                    s.env_id,
                    s.spec,
                    s.teacher.policy,
                    student.task_view(s.env_id),
                    args.n_envs,
                    seed,
                    sample_actions=args.sample_actions,
                ),
                StateBuffer(args.buffer_size, s.spec.obs_dim),
                schedule,
                s.steps_per_round,
                args.train_steps_per_round,
                args.batch_size,
                seed,
            )
            for s in setups
        }
    )
    loss = multitask_loss(setups, methods, args.method)
    recipe = Recipe(
        name=f"{args.method} seed {seed}",
        run_dir=run_dir,
        epochs=rounds,
        lr=args.lr,
        weight_decay=0.0,
        monitor="val/kept_min",
        checkpoints=False,
        tensorboard=False,
    )
    keep_best = KeepBest()
    loop = DistillationLoop(
        student=student,
        teacher=nn.ModuleDict({str(i): s.teacher.policy for i, s in enumerate(setups)}),
        loss_fn=loss,
        adapter=MultiTaskAdapter([s.env_id for s in setups]),
        train_data=batches,
        optimizer=torch.optim.Adam(trainable_parameters(student, loss), lr=args.lr),
        accelerator=make_accelerator(
            mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum
        ),
        config=LoopConfig(epochs=rounds),
        callbacks=[
            *standard_callbacks(recipe, validation(setups, args.val_episodes, batches), None),
            *([keep_best] if args.select_best else []),
        ],
    )
    try:
        state = loop.run()
    finally:
        batches.close()
    if args.select_best:  # the round whose worst task kept the most of its teacher
        keep_best.restore(student)
    return state, batches


# --------------------------------------------------------------------------- one seed


def build_student(setups: list[TaskSetup], hidden: tuple[int, ...]) -> MultiTaskPolicy:
    return MultiTaskPolicy([s.config() for s in setups], hidden)


def check_smaller(setups: list[TaskSetup], hidden: tuple[int, ...]) -> tuple[int, int]:
    """The student's parameters and the teachers' actors' together; the student must be the
    smaller (the point of distilling several policies into one)."""
    student = count_parameters(build_student(setups, hidden))
    teachers = sum(s.teacher.actor_params for s in setups)
    if student >= teachers:
        raise ConfigError(
            f"--hidden {' '.join(map(str, hidden))}: the multi-task student would have "
            f"{student:,} parameters, not fewer than the teachers' actors together "
            f"({teachers:,}); give smaller sizes, e.g. --hidden 32 32"
        )
    return student, teachers


def score_task(student: MultiTaskPolicy, s: TaskSetup, episodes: int) -> dict[str, Any]:
    """One task's test record: the student's return on the seeded test episodes (with its
    agreement or action gap with the teacher), the references and the share kept."""
    final, eps = evaluate_returns(
        student.task_view(s.env_id), s.env_id, s.spec, episodes, TEST_SEED, "test", s.teacher.policy
    )
    ret = final["test/return_mean"]
    return {
        "test_return_mean": ret,
        "test_return_std": final["test/return_std"],
        "teacher_return_mean": s.teacher_test["return_mean"],
        "random_return_mean": s.random_test,
        "kept": teacher_return_kept(ret, s.teacher_test["return_mean"], s.random_test),
        **{k.removeprefix("test/"): v for k, v in final.items() if "agreement" in k or "gap" in k},
        "test_returns": eps.returns,
        "sampling": mean_sampling(eps.returns),
        "teacher": {
            "checkpoint": str(s.teacher.path),
            "sha256": s.sha256,
            "actor_params": s.teacher.actor_params,
            "test_return_std": s.teacher_test["return_std"],
        },
        "active_params": student.task_parameters(s.env_id),
    }


def run_seed(
    setups: list[TaskSetup],
    args: Any,
    methods: Methods,
    rounds: int,
    seed: int,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Train, test and save the student of one seed; returns (and writes) its record."""
    start = time.perf_counter()
    run_dir = args.out_dir / f"seed-{seed}"
    set_seed(seed)
    student = build_student(setups, args.hidden)
    state, batches = train_student(student, setups, args, methods, rounds, seed, run_dir)
    student.eval()
    tasks = {s.env_id: score_task(student, s, args.eval_episodes) for s in setups}
    cfg = MultiTaskConfig(
        tasks=[s.config() for s in setups],
        hidden=list(args.hidden),
        extra={"method": args.method, "seed": seed, "teachers_sha256": settings["teachers"]},
    )
    model_dir = save_multitask_dir(student, cfg, run_dir / "model")
    params = count_parameters(student)
    teachers = sum(s.teacher.actor_params for s in setups)
    env_steps = {t: r.collector.env_steps for t, r in batches.rounds.items()}
    record = {
        "kind": "multitask-distillation",
        "domain": "reinforcement-learning",
        "method": args.method,
        "seed": seed,
        "tasks": tasks,
        **_kept_stats([t["kept"] for t in tasks.values()]),
        "student": {
            "name": "multitask-mlp-" + "x".join(map(str, args.hidden)),
            "params": params,
            "size_bytes": model_size_bytes(student),
            "hidden": list(args.hidden),
            "checkpoint": str(model_dir),
        },
        "teachers_actor_params": teachers,
        "params_ratio": params / teachers,
        "fewer_params_than_teachers": params < teachers,
        "loss": task_losses(setups, methods, args.method),
        "loss_combination": "sum over tasks, weight 1 each, every optimizer step",
        "budget": {
            **training_budget(rounds, state, args.batch_size * len(setups), args.grad_accum),
            "env_steps": sum(env_steps.values()),
            "env_steps_per_task": env_steps,
        },
        "best": state.best,
        "rounds": {t: [asdict(h) for h in r.history] for t, r in batches.rounds.items()},
        "wall_time_s": time.perf_counter() - start,
        "settings": settings,
        "command": list(sys.argv),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
    if is_main_process():
        atomic_write_json(run_dir / RESULTS, record)
        print(
            f"{args.method} seed {seed}: kept (min over tasks) {record['kept_min']:.3f} "
            f"({record['wall_time_s']:.0f} s)"
        )
    return record


def finished_seed(args: Any, seed: int, settings: dict[str, Any]) -> dict[str, Any] | None:
    """A seed's record when it finished before with the same settings and its model exists."""
    run_dir = args.out_dir / f"seed-{seed}"
    path = run_dir / RESULTS
    if not args.resume or not path.is_file() or not (run_dir / "model" / "config.json").is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return record if record.get("settings") == json.loads(json.dumps(settings)) else None


# --------------------------------------------------------------------------- summary


def _spread(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "values": values}
    mean, std = mean_std(finite)
    return {"mean": mean, "std": std if len(finite) > 1 else None, "values": values}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds per task (std None with one seed), with the test set's own 95%
    interval around the mean return (:mod:`common.stats`)."""
    first = records[0]
    tasks = {}
    for task, t in first["tasks"].items():
        returns = _spread([r["tasks"][task]["test_return_mean"] for r in records])
        interval = (
            score_interval(returns["mean"], t["sampling"]) if returns["mean"] is not None else None
        )
        tasks[task] = {
            "return": returns,
            "test_interval95": list(interval) if interval else None,
            "kept": _spread([r["tasks"][task]["kept"] for r in records]),
            "teacher_return": t["teacher_return_mean"],
            "random_return": t["random_return_mean"],
            "teacher_actor_params": t["teacher"]["actor_params"],
            "active_params": t["active_params"],
        }
    return {
        "kind": "multitask-distillation",
        "method": first["method"],
        "n_seeds": len(records),
        "seeds": [r["seed"] for r in records],
        "tasks": tasks,
        "kept_min": _spread([r["kept_min"] for r in records]),
        "student_params": first["student"]["params"],
        "teachers_actor_params": first["teachers_actor_params"],
        "params_ratio": first["params_ratio"],
        "fewer_params_than_teachers": first["fewer_params_than_teachers"],
        "env_steps_per_run": first["budget"]["env_steps"],
        "wall_time_s_mean": mean_std([r["wall_time_s"] for r in records])[0],
    }


def _pm(stat: dict[str, Any], fmt: str) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = format(stat["mean"], fmt)
    return text if stat["std"] is None else f"{text} ± {format(stat['std'], fmt)}"


def render(summary: dict[str, Any]) -> str:
    width = max(len(t) for t in summary["tasks"]) + 2
    lines = [
        f"multi-task {summary['method']}, {len(summary['tasks'])} tasks, "
        f"{summary['n_seeds']} seed(s): student {summary['student_params']:,} params = "
        f"{summary['params_ratio']:.2f} x the teachers' actors together "
        f"({summary['teachers_actor_params']:,})",
        f"{'task':<{width}}{'teacher':>10}{'random':>10}{'student':>20}{'kept':>16}",
    ]
    for task, t in summary["tasks"].items():
        lines.append(
            f"{task:<{width}}{t['teacher_return']:>10.1f}{t['random_return']:>10.1f}"
            f"{_pm(t['return'], '.1f'):>20}{_pm(t['kept'], '.3f'):>16}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
