"""What train_teacher.py and distill.py share: the forward adapter, the loss per action kind,
evaluation on seeded episodes, one distillation run through the shared loop, the PPO
baseline with the student's architecture, and model descriptions for results.json."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import Tensor, nn

from common.losses import CombinedLoss
from common.metrics import count_flops, count_parameters, model_size_bytes, speed_profile
from common.recipe import Recipe, load_best, standard_callbacks
from common.training import (
    DistillationLoop,
    LoopConfig,
    LoopState,
    make_accelerator,
    trainable_parameters,
)
from reinforcement_learning.data.replay import (
    Collector,
    RoundBatches,
    RoundStats,
    StateBuffer,
    beta_schedule,
)
from reinforcement_learning.data.rounds import ROUNDS_DIR, RoundCheckpoints, global_rng_kept
from reinforcement_learning.envs import VAL_SEED, Act, EpisodeStats, SpaceSpec, run_episodes
from reinforcement_learning.normalization import ObsNormalization
from reinforcement_learning.student_model.policy import CompactPolicy, select_actions
from reinforcement_learning.teacher_model.hyperparams import PPOHyperparams
from reinforcement_learning.teacher_model.ppo import PPORun, actor_parameters, train_ppo


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class PolicyAdapter:
    """Both policies take ``batch["obs"]`` (raw observations) and return their distribution's
    parameters: ``logits``, or ``mean`` and ``log_std``."""

    def student(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return model(batch["obs"].to(_device(model)))

    def teacher(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return model(batch["obs"].to(_device(model)))


def greedy(model: nn.Module, spec: SpaceSpec) -> Act:
    """The deterministic policy of a dict-output model, as a numpy batch function."""

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(obs).to(_device(model)))
        return select_actions(out, True, None, spec.action_low, spec.action_high)

    return act


def evaluate_returns(
    model: nn.Module,
    env_id: str,
    spec: SpaceSpec,
    episodes: int,
    seed: int,
    prefix: str,
    teacher: nn.Module | None = None,
) -> tuple[dict[str, float], EpisodeStats]:
    """Mean and std of the return over seeded episodes with greedy actions; with a teacher,
    also how often it would have acted the same on the states the model visited (discrete:
    ``agreement``; continuous: mean absolute action difference ``action_gap``). Returns the
    metrics and the episodes' returns and lengths."""
    was_training = model.training
    model.eval()
    act, matches = greedy(model, spec), []
    t_act = greedy(teacher, spec) if teacher is not None else None

    def tracked(obs: np.ndarray) -> np.ndarray:
        actions = act(obs)
        if t_act is not None:
            matches.append(np.abs(actions - t_act(obs)).reshape(len(obs), -1).mean(-1))
        return actions

    try:
        stats = run_episodes(tracked, env_id, episodes, seed)
    finally:
        model.train(was_training)
    metrics = {
        f"{prefix}/return_mean": stats.mean,
        f"{prefix}/return_std": stats.std,
        f"{prefix}/episode_length": float(np.mean(stats.lengths)),
    }
    if matches:
        gaps = np.concatenate(matches)
        if spec.continuous:
            metrics[f"{prefix}/action_gap"] = float(gaps.mean())
        else:
            metrics[f"{prefix}/agreement"] = float((gaps == 0).mean())
    return metrics, stats


@dataclass
class DistillSpec:
    """One distillation run of a compact student."""

    name: str
    method: str
    """distill (β = 1: teacher rollouts only) or dagger (β decays per round)."""
    run_dir: Path
    rounds: int
    steps_per_round: int
    train_steps_per_round: int
    batch_size: int
    lr: float
    buffer_size: int
    beta_decay: float
    n_envs: int
    sample_actions: bool
    seed: int
    val_episodes: int = 5
    eval_every: int = 1
    mixed_precision: str = "no"
    grad_accum: int = 1
    vec_env: str = "dummy"
    """How the collector runs its environments: dummy (this process) or subproc (one each)."""
    settings: dict[str, Any] | None = None
    """The settings record a checkpoint must match (the runner's); None: no checkpoints, so a
    killed run starts over."""
    resume: bool = True
    """Resume from the run's last checkpoint (off: delete its checkpoints, start afresh)."""
    checkpoint_every: int | None = 200
    """Optimizer steps between checkpoints (also one after every round); None: per round."""
    select_best: bool = False
    """End with the student of the round whose validation return was best (needs
    checkpoints: ``settings``), not the last round's."""
    lr_decay: bool = False
    """Decay the learning rate along a cosine to 0 over all rounds' optimizer steps (else
    constant)."""


@dataclass
class DistillRun:
    """The outcome of :func:`run_distillation`."""

    student: CompactPolicy
    state: LoopState
    history: list[RoundStats]
    env_steps: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_distillation(
    student: CompactPolicy,
    teacher: nn.Module,
    env_id: str,
    spec: SpaceSpec,
    loss: CombinedLoss,
    run: DistillSpec,
) -> DistillRun:
    """Rounds of: collect ``steps_per_round`` states (β-mix of teacher and student actions)
    into the replay buffer, then ``train_steps_per_round`` loop steps on batches from it, the
    teacher labelling each batch in the loop's forward pass.

    With ``run.settings``, checkpoints go to ``run_dir/checkpoints`` (every
    ``checkpoint_every`` steps and after every round), with each round's collection weights
    (:mod:`~reinforcement_learning.data.rounds`): a killed run resumes and ends with the
    same student and history as an uninterrupted one."""
    start = time.perf_counter()
    collector = Collector(
        env_id, spec, teacher, student, run.n_envs, run.seed, run.sample_actions, run.vec_env
    )
    try:
        loop, batches = _distillation_loop(student, teacher, env_id, spec, loss, run, collector)
        state = loop.run()
    finally:
        collector.close()  # with subproc: its worker processes too
    trained = loop.student
    if run.select_best and run.settings is not None:
        load_best(trained, run.run_dir)
    trained.eval()
    assert isinstance(trained, CompactPolicy)
    return DistillRun(
        trained, state, batches.history, collector.env_steps, time.perf_counter() - start
    )


def _distillation_loop(
    student: CompactPolicy,
    teacher: nn.Module,
    env_id: str,
    spec: SpaceSpec,
    loss: CombinedLoss,
    run: DistillSpec,
    collector: Collector,
) -> tuple[DistillationLoop, RoundBatches]:
    """The shared loop of :func:`run_distillation` on batches of ``collector``'s rounds."""
    buffer = StateBuffer(run.buffer_size, spec.obs_dim)
    batches = RoundBatches(
        collector,
        buffer,
        beta_schedule(run.method, run.beta_decay),
        run.steps_per_round,
        run.train_steps_per_round,
        run.batch_size,
        run.seed,
    )
    optimizer = torch.optim.Adam(trainable_parameters(student, loss), lr=run.lr)
    schedule = None
    if run.lr_decay:
        total = max(run.rounds * run.train_steps_per_round, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineToZero(total))

    def evaluate(model: nn.Module) -> dict[str, float]:
        # Validation episodes (not the test seeds) for the learning curve in metrics.jsonl.
        metrics, _ = evaluate_returns(model, env_id, spec, run.val_episodes, VAL_SEED, "val")
        # env_steps: the x axis of the report's learning curve (all of them teacher-labelled).
        return {
            "val/return": metrics["val/return_mean"],
            "env_steps": batches.collector.env_steps,
            **batches.last(),
        }

    # Common's recipe for the bookkeeping (one round is an epoch).
    recipe = Recipe(
        name=run.name,
        run_dir=run.run_dir,
        epochs=run.rounds,
        lr=run.lr,
        weight_decay=0.0,
        monitor="val/return",
        eval_every_epochs=run.eval_every,
        checkpoint_every=run.checkpoint_every,
        checkpoints=run.settings is not None,
        resume=run.resume,
        tensorboard=False,
    )
    callbacks = standard_callbacks(recipe, evaluate, run.settings)
    if recipe.checkpoints:  # after the loop's checkpoint callback: it reads the restored state
        rounds = RoundCheckpoints(run.run_dir / "checkpoints" / ROUNDS_DIR, batches)
        batches.on_collect = rounds.record
        callbacks.append(rounds)
    loop = DistillationLoop(
        student=student,
        teacher=teacher,
        loss_fn=loss,
        adapter=PolicyAdapter(),
        train_data=batches,
        optimizer=optimizer,
        scheduler=schedule,
        accelerator=make_accelerator(
            mixed_precision=run.mixed_precision, gradient_accumulation_steps=run.grad_accum
        ),
        config=LoopConfig(epochs=run.rounds),
        callbacks=callbacks,
    )
    return loop, batches


@dataclass(frozen=True)
class CosineToZero:
    """Learning-rate factor ``(1 + cos(pi * step / total)) / 2``: 1 at the start, 0 from
    ``total`` steps on (a picklable callable for ``LambdaLR``)."""

    total: int

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total) / self.total))


def actor_to_compact(
    policy: Any, hidden: tuple[int, ...], spec: SpaceSpec, normalization: ObsNormalization
) -> CompactPolicy:
    """Copy a PPO actor with hidden sizes ``hidden`` into a :class:`CompactPolicy`.

    With gSDE the PPO std depends on the state and has no place in the compact policy: its
    log-std stays at 0 (greedy actions, which evaluation uses, are the mean either way)."""
    student = CompactPolicy(spec.obs_dim, spec.action_dim, hidden, spec.continuous, normalization)
    student.body.load_state_dict(policy.mlp_extractor.policy_net.state_dict())
    student.head.load_state_dict(policy.action_net.state_dict())
    log_std = getattr(policy, "log_std", None)
    if spec.continuous and log_std is not None and log_std.shape == student.log_std.shape:
        student.log_std.data.copy_(log_std.data)
    return student.eval()


class BaselineCurve(BaseCallback):
    """The PPO baseline's learning curve, on the points distillation logs its own: every
    ``every`` environment steps (between rollouts, so after PPO's update) and at the end, the
    actor as it stands, copied into the compact student with the current observation
    statistics, plays the greedy validation episodes; each point is appended to ``path`` as
    the ``metrics.jsonl`` epoch event the report's learning curves read. The global RNGs are
    saved and restored around it, so the curve does not change the run it watches."""

    def __init__(
        self, path: Path, every: int, env_id: str, spec: SpaceSpec, hidden: tuple[int, ...],
        episodes: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.path, self.every, self.env_id, self.spec = Path(path), every, env_id, spec
        self.hidden, self.episodes = hidden, episodes
        self.next, self.points = every, 0
        self.best: tuple[CompactPolicy, ObsNormalization] | None = None
        """The best point so far (the first of equal returns): the actor as a compact policy
        and its observation statistics."""
        self.best_at: dict[str, Any] = {}
        """Where it was: the ``best`` record of a results file (metric, value, point, env
        steps, candidates: the number of points)."""

    def _on_training_start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next:
            self.record()
            while self.next <= self.num_timesteps:
                self.next += self.every

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.record()

    def record(self) -> None:
        venv = self.model.get_env()
        with global_rng_kept():
            normalization = ObsNormalization.from_vecnormalize(venv)
            student = actor_to_compact(self.model.policy, self.hidden, self.spec, normalization)
            metrics, _ = evaluate_returns(
                student, self.env_id, self.spec, self.episodes, VAL_SEED, "val"
            )
        self.points += 1
        value = metrics["val/return_mean"]
        if self.best is None or value > self.best_at["value"]:
            self.best = (student, normalization)
            self.best_at = {
                "metric": "val/return",
                "value": value,
                "epoch": self.points,
                "step": self.num_timesteps,
                "metrics": {"val/return": value, "env_steps": self.num_timesteps},
            }
        self.best_at["candidates"] = self.points
        event = {
            "event": "epoch",
            "epoch": self.points,
            "step": self.num_timesteps,
            "env_steps": self.num_timesteps,
            "val/return": metrics["val/return_mean"],
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def train_baseline(
    env_id: str,
    hp: PPOHyperparams,
    env_steps: int,
    hidden: tuple[int, ...],
    spec: SpaceSpec,
    seed: int,
    run_dir: Path,
    name: str,
    curve_every: int | None = None,
    val_episodes: int = 5,
    select_best: bool = False,
) -> tuple[CompactPolicy, PPORun, ObsNormalization, dict[str, Any]]:
    """The honest baseline: the student's architecture as PPO's actor, trained from scratch
    with the teacher's tuned hyperparameters (a full-size critic, which is not deployed) for
    the environment steps distillation used, with its own observation statistics. With
    ``curve_every``, its learning curve goes to ``run_dir/metrics.jsonl``
    (:class:`BaselineCurve`); with ``select_best`` too, the actor of its best curve point is
    returned (as distillation's best round is), not the last. Returns the policy, the PPO run,
    the policy's observation statistics and the curve's best point (empty without a curve)."""
    curve = []
    if curve_every:
        path = run_dir / "metrics.jsonl"
        curve = [BaselineCurve(path, curve_every, env_id, spec, hidden, val_episodes)]
    run = train_ppo(
        env_id, hp, env_steps, seed, run_dir / "sb3", actor=hidden, desc=name, callbacks=curve
    )
    best_at = curve[0].best_at if curve else {}
    if select_best and curve and curve[0].best is not None:
        best, normalization = curve[0].best
        return best, run, normalization, best_at
    normalization = run.normalization
    student = actor_to_compact(run.model.policy, hidden, spec, normalization)
    return student, run, normalization, best_at


def _on_cpu(model: nn.Module) -> nn.Module:
    """The model itself when it is on the CPU, else a CPU copy. Not always a copy: an SB3 gSDE
    policy caches non-leaf tensors that ``deepcopy`` refuses."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


def describe_policy(model: nn.Module, name: str, obs_dim: int, **extra: Any) -> dict[str, Any]:
    """Name, parameter count, size and FLOPs of one forward (on the CPU) for results.json."""
    cpu = _on_cpu(model)
    return {
        "name": name,
        "params": count_parameters(cpu),
        "size_bytes": model_size_bytes(cpu),
        "flops": count_flops(cpu, torch.zeros(1, obs_dim)),
        **extra,
    }


def speed_report(model: nn.Module, obs_dim: int, repeats: int = 50) -> dict[str, Any]:
    """CPU batch-1 latency (ms) and batch-1024 throughput (observations/s), medians: the
    ``speed_profile`` shape every domain stores in results.json."""
    with torch.no_grad():
        return speed_profile(
            _on_cpu(model),
            torch.zeros(1, obs_dim),
            torch.zeros(1024, obs_dim),
            unit="obs/s",
            repeats=repeats,
        )


def describe_teacher(policy: nn.Module, name: str, obs_dim: int, **extra: Any) -> dict[str, Any]:
    """:func:`describe_policy` of a :class:`TeacherPolicy`, counting the parameters that act
    (the critic is only for training) as ``params`` and all of them as ``params_with_critic``."""
    desc = describe_policy(policy, name, obs_dim, **extra)
    desc["params_with_critic"] = desc["params"]
    desc["params"] = actor_parameters(policy.policy)  # type: ignore[arg-type]
    return desc
