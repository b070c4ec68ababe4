"""What the RL domain supplies to the shared experiment runner (:mod:`common.experiment`):
load the PPO teacher and score it and a random policy on the seeded test episodes, then train
(by distillation on collected states, or by PPO from scratch for the baseline), test and save
one compact policy per method and seed."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from common.cli import args_dict
from common.errors import ConfigError
from common.experiment import NOT_SETTINGS, Method, RunOutcome, TeacherPlan
from common.io import sha256_file
from common.losses import Reads
from common.results import make_metrics
from common.stats import mean_sampling
from reinforcement_learning.envs import (
    TEST_SEED,
    check_env_id,
    check_same_spaces,
    env_space_spec,
    random_policy,
    run_episodes,
    teacher_return_kept,
)
from reinforcement_learning.model_io import PolicyConfig, save_policy_dir
from reinforcement_learning.pipeline import (
    DistillSpec,
    describe_policy,
    describe_teacher,
    evaluate_returns,
    run_distillation,
    speed_report,
    train_baseline,
)
from reinforcement_learning.student_model.policy import CompactPolicy
from reinforcement_learning.teacher_model.hyperparams import PPOHyperparams, env_settings
from reinforcement_learning.teacher_model.ppo import load_teacher

ONLINE_REASON = (
    "states are collected online as the student learns (dagger lets it act), so the teacher "
    "labels each batch live; a policy forward costs little"
)
COLLECT = ("teacher", "dagger")
"""How a distillation method collects states: teacher rollouts, or the DAgger β-mix."""


def student_name(hidden: tuple[int, ...]) -> str:
    """``mlp-32`` or ``mlp-64x64``; ``linear`` without hidden layers."""
    return "mlp-" + "x".join(map(str, hidden)) if hidden else "linear"


TABLE_OPTIONS = ("rounds", "steps_per_round", "train_steps_per_round", "val_episodes", "lr_decay")
"""distill.py options that default to the environment's table entry when left unset."""


def with_table_defaults(args: Any) -> Any:
    """``args`` with each of :data:`TABLE_OPTIONS` left unset (None) taken from the table
    entry of ``args.env_id``; a flag or preset value wins."""
    table = env_settings(args.env_id)
    return replace(
        args, **{k: getattr(table, k) for k in TABLE_OPTIONS if getattr(args, k) is None}
    )


class PolicyDistillTask:
    """A PPO teacher distilled into a compact policy (see
    :class:`common.experiment.DistillTask`)."""

    domain = "reinforcement-learning"

    def __init__(self, args: Any) -> None:
        check_env_id(args.env_id)
        table = env_settings(args.env_id)
        self.args = args = with_table_defaults(args)  # for every use below
        teacher_path = args.teacher or args.run_root / args.env_id / "teacher" / "model"
        self.t = teacher = load_teacher(teacher_path, env_id=args.env_id)
        self.spec = spec = env_space_spec(args.env_id)
        trained_on = f" (trained on {teacher.env_id})" if teacher.env_id else ""
        check_same_spaces(
            teacher.spec, spec, f"the teacher in {teacher_path}{trained_on}", args.env_id
        )
        self.dataset = args.env_id
        # The baseline trains with the teacher's own PPO recipe (the table's, unless overridden).
        recorded = teacher.config.get("hyperparams")
        self.ppo_hp = table.ppo
        if recorded and teacher.env_id == args.env_id:
            self.ppo_hp = PPOHyperparams(**{**recorded, "net_arch": tuple(recorded["net_arch"])})
        hidden = table.student_hidden if args.student_hidden is None else args.student_hidden
        if any(h < 1 for h in hidden):
            raise ConfigError(f"--student-hidden {hidden}: every width must be >= 1, e.g. 16")
        self.hidden = tuple(hidden)
        self.rounds, self.steps_per_round = args.rounds, args.steps_per_round
        for flag, value in (("--rounds", self.rounds), ("--steps-per-round", self.steps_per_round)):
            if value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        # What each distillation run consumes (whole vector steps); the baseline gets the same.
        self.env_steps = self.rounds * args.n_envs * math.ceil(self.steps_per_round / args.n_envs)
        digest = sha256_file(teacher.path)
        t_test, t_episodes = evaluate_returns(
            teacher.policy, args.env_id, spec, args.eval_episodes, TEST_SEED, "test"
        )
        self.t_return = t_test["test/return_mean"]
        self.random_return = run_episodes(
            random_policy(args.env_id, TEST_SEED), args.env_id, args.eval_episodes, TEST_SEED
        ).mean
        arch = "x".join(map(str, teacher.config.get("hyperparams", {}).get("net_arch", [64, 64])))
        # Teacher and student speed side by side, once (a fresh student acts as fast as a
        # trained one); with "score" and "floor" (a random policy's return) for the report.
        self.speed = {
            "teacher": speed_report(teacher.policy, spec.obs_dim),
            "student": speed_report(self._student(None), spec.obs_dim),
        }
        self.teacher = describe_teacher(
            teacher.policy,
            f"ppo-mlp-{arch}",
            spec.obs_dim,
            checkpoint=str(teacher.path),
            sha256=digest,
        )
        self.teacher.update(
            test_return_mean=self.t_return,
            test_return_std=t_test["test/return_std"],
            random_return_mean=self.random_return,
            score=self.t_return,
            floor=self.random_return,
            speed=self.speed["teacher"],
            sampling=mean_sampling(t_episodes.returns),
            env_steps=teacher.config.get("budget", {}).get("env_steps"),
        )
        self.settings = {
            "teacher_sha256": digest,
            # --vec-env is left out: both kinds collect the same states (tests check it).
            **args_dict(
                args,
                (*NOT_SETTINGS, "run_root", "cache", "vec_env", "lr_decay"),
                only_when_set=("select_best",),
            ),
            # Newer than the first finished runs: recorded only when on.
            **({"lr_decay": True} if args.lr_decay else {}),
            # Resolved: the table's width can change under an unchanged command line.
            "student_hidden": list(self.hidden),
        }
        self.cacheable, self.why_not_cached = frozenset(), ONLINE_REASON

    def _student(self, normalization: Any) -> CompactPolicy:
        s = self.spec
        return CompactPolicy(s.obs_dim, s.action_dim, self.hidden, s.continuous, normalization)

    def produced(self) -> Reads:
        outputs = frozenset({"mean", "log_std"} if self.spec.continuous else {"logits"})
        return Reads(outputs, outputs, frozenset({"obs"}))

    def complete(self, method: Method) -> Method:
        if method.weights and method.extra.get("collect", "teacher") not in COLLECT:
            raise ConfigError(f"method {method.name!r}: collect must be one of {COLLECT}")
        return method

    def prepare(self, plans: dict[str, TeacherPlan], cache_keys: frozenset[str]) -> dict:
        return {}

    def run(
        self, method: Method, seed: int, run_dir: Path, plan: TeacherPlan, settings: dict
    ) -> RunOutcome:
        args = self.args
        if not method.weights:  # the baseline: PPO from scratch with the student's actor
            student, budget, details, loss, normalization, best = self._baseline(seed, run_dir)
        else:
            normalization = self.t.normalization
            student, budget, details, best = self._distill(method, seed, run_dir, settings)
            loss = None
        final, episodes = evaluate_returns(
            student, args.env_id, self.spec, args.eval_episodes, TEST_SEED, "test", self.t.policy
        )
        final["test/teacher_return_kept"] = teacher_return_kept(
            final["test/return_mean"], self.t_return, self.random_return
        )
        model_dir = self._save(student, normalization, method, seed, run_dir)
        return RunOutcome(
            student=describe_policy(
                student,
                student_name(self.hidden),
                self.spec.obs_dim,
                checkpoint=str(model_dir),
                hidden=list(self.hidden),
                speed=self.speed["student"],
            ),
            metrics=make_metrics(
                final, "test/return_mean", best=best, sampling=mean_sampling(episodes.returns)
            ),
            budget=budget,
            extra={
                **details,
                "eval_episodes": args.eval_episodes,
                "test_returns": episodes.returns,
                "teacher_env_steps": self.teacher.get("env_steps"),
            },
            loss=loss,
        )

    def _baseline(self, seed: int, run_dir: Path) -> tuple:
        # Its learning curve on the points where distillation evaluates (after each round).
        student, ppo, normalization, best = train_baseline(
            self.args.env_id, self.ppo_hp, self.env_steps, self.hidden, self.spec, seed, run_dir,
            f"none seed {seed}", self.env_steps // self.rounds, self.args.val_episodes,
            self.args.select_best,
        )  # fmt: skip
        loss = {"weights": {"ppo": 1.0}, "options": {"ppo": asdict(self.ppo_hp)}}
        details = {"train_time_s": ppo.seconds, "curve_best": best}
        return student, ppo.budget(), details, loss, normalization, best or None

    def _distill(self, method: Method, seed: int, run_dir: Path, settings: dict) -> tuple:
        args = self.args
        student = self._student(self.t.normalization)
        collect = method.extra.get("collect", "teacher")
        run = run_distillation(
            student,
            self.t.policy,
            args.env_id,
            self.spec,
            method.build(),
            DistillSpec(
                name=f"{method.name} seed {seed}",
                method="dagger" if collect == "dagger" else "distill",
                run_dir=run_dir,
                rounds=self.rounds,
                steps_per_round=self.steps_per_round,
                train_steps_per_round=args.train_steps_per_round,
                batch_size=args.batch_size,
                lr=args.lr,
                buffer_size=args.buffer_size,
                beta_decay=args.beta_decay,
                n_envs=args.n_envs,
                sample_actions=args.sample_actions,
                seed=seed,
                val_episodes=args.val_episodes,
                mixed_precision=args.mixed_precision,
                grad_accum=args.grad_accum,
                vec_env=args.vec_env,
                settings=settings,
                resume=args.resume,
                checkpoint_every=args.checkpoint_every,
                select_best=args.select_best,
                lr_decay=args.lr_decay,
            ),
        )
        budget = {
            "epochs": self.rounds,
            "steps": run.state.step,
            "examples": run.state.step * args.batch_size,
            "env_steps": run.env_steps,
        }
        details = {"train_time_s": run.seconds, "rounds": [asdict(h) for h in run.history]}
        return run.student, budget, details, run.state.best

    def _save(
        self, student: CompactPolicy, normalization: Any, method: Method, seed: int, run_dir: Path
    ) -> Path:
        spec = self.spec
        cfg = PolicyConfig(
            env_id=self.args.env_id,
            obs_dim=spec.obs_dim,
            action_dim=spec.action_dim,
            continuous=spec.continuous,
            hidden=list(self.hidden),
            normalization=normalization.to_dict(),
            action_low=list(spec.action_low) if spec.action_low else None,
            action_high=list(spec.action_high) if spec.action_high else None,
            extra={
                "method": method.name,
                "seed": seed,
                "teacher_sha256": self.settings["teacher_sha256"],
            },
        )
        return save_policy_dir(student, cfg, run_dir / "model")

    def summary_extra(self) -> dict[str, Any]:
        return {"env_steps_per_run": self.env_steps, "random_return": self.random_return}
