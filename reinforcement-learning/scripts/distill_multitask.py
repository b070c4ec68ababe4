"""Distil several PPO teachers, one per task, into one multi-task student (Rusu et al. 2015).

    python -m reinforcement_learning.scripts.distill_multitask --preset quick
    python -m reinforcement_learning.scripts.distill_multitask --preset full
    python -m reinforcement_learning.scripts.distill_multitask --preset mujoco
    python -m reinforcement_learning.scripts.distill_multitask --method dagger --seeds 3 \\
        --tasks CartPole-v1=runs/a/model Acrobot-v1=runs/b/model Pendulum-v1=runs/c/model

The student (:class:`~reinforcement_learning.student_model.multitask.MultiTaskPolicy`) has
per task an input layer and a head around one shared trunk. Each round collects states in
every task into that task's replay buffer (``distill``: teacher rollouts; ``dagger``: the
student acts with probability 1 - β, β = beta_decay ** round), then trains
``--train-steps-per-round`` steps on batches holding ``--batch-size`` states of *every* task:
the loss of a step is the sum of the per-task losses (``policy_kl`` for discrete actions,
``gaussian_kl`` for continuous ones, as in distill.py), each task's teacher labelling its own
states. The sum, not a round-robin of one task per step, so every step moves the shared
trunk towards all tasks at once (no drift toward the task of the last steps, one gradient
scale for Adam), and every parameter gets a gradient every step, which DDP needs.

Each seed writes ``<out-dir>/seed-<k>/`` (model/, metrics.jsonl, results-multitask.json: per
task the test return, the teacher's and a random policy's return and the share kept, and the
student's parameters against the teachers' actors together); ``<out-dir>/summary.json``
holds mean ± std over seeds per task, and the table is printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.cli import args_dict, parse_args, run_main
from common.experiment import RuntimeArgs, check_runtime
from common.io import atomic_write_json, claim_folder
from common.training import (
    is_main_process,
)
from reinforcement_learning.multitask import (
    check_smaller,
    finished_seed,
    load_task,
    parse_tasks,
    render,
    run_seed,
    score_references,
    summarize,
)
from reinforcement_learning.scripts.distill import METHODS
from reinforcement_learning.student_model.multitask import (
    check_hidden,
)
from reinforcement_learning.teacher_model.hyperparams import env_settings


@dataclass
class Args(RuntimeArgs):
    """Distil one PPO teacher per task into one multi-task student, over seeds."""

    tasks: tuple[str, ...] = ()
    """ENV_ID=TEACHER_DIR per task (at least two), each teacher folder from train_teacher.py,
    e.g. CartPole-v1=runs/quick/reinforcement-learning/CartPole-v1/teacher/model."""
    method: Literal["distill", "dagger"] = "distill"
    """distill (teacher rollouts) or dagger (the student acts with probability 1 - β)."""
    hidden: tuple[int, ...] = (64, 64)
    """Width of each task's input layer, then the shared trunk's layer sizes."""
    rounds: int | None = None
    """Collect-then-train rounds; unset: the largest table value among the tasks."""
    steps_per_round: int | None = None
    """Environment steps collected per task and round; unset: each task's table value."""
    train_steps_per_round: int = 250
    """Optimizer steps after each collection, each on a batch of every task."""
    batch_size: int = 256
    """States per task in each optimizer step."""
    lr: float = 3e-3
    """Adam learning rate of the student."""
    buffer_size: int = 100_000
    """Replay buffer capacity per task, in states (the oldest are dropped first)."""
    beta_decay: float = 0.5
    """dagger: probability of the teacher acting is beta_decay ** round (round 0: teacher only)."""
    n_envs: int = 8
    """Parallel environments per task for collecting states."""
    sample_actions: bool = True
    """Collect with sampled (not greedy) actions, for more varied states."""
    eval_episodes: int = 20
    """Seeded test episodes (greedy actions) per task: the reported mean ± std return."""
    val_episodes: int = 5
    """Validation episodes per task after each round (learning curve in metrics.jsonl)."""
    select_best: bool = False
    """End with the student of the round whose worst task kept the most of its teacher on the
    validation episodes (never the test seeds), not the last round's."""
    seeds: int = 1
    """Seeds (seed_start, seed_start + 1, ...); the summary reports mean and std per task."""
    seed_start: int = 0
    """First seed."""
    out_dir: Path = Path("runs/reinforcement-learning/multitask")
    """Where seed-<k>/ folders and summary.json go."""
    resume: bool = True
    """Reuse a seed that finished with the same settings and teachers (else run it again)."""


def _teachers(root: str, envs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{env}={root}/{env}/teacher/model" for env in envs)


_QUICK_ENVS = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1")
# Quick: the quick teachers of three tasks (train each with train_teacher.py --preset quick
# --env-id ENV), 3 seeds.
QUICK = Args(
    tasks=_teachers("runs/quick/reinforcement-learning", _QUICK_ENVS),
    seeds=3,
    out_dir=Path("runs/quick/reinforcement-learning/multitask"),
)
# Full: the four benchmark teachers of the README (train_teacher.py --preset full --env-id ENV).
FULL = Args(
    tasks=_teachers("runs/full/reinforcement-learning", ("LunarLander-v3", *_QUICK_ENVS)),
    seeds=3,
    train_steps_per_round=500,
    buffer_size=200_000,
    select_best=True,
    out_dir=Path("runs/full/reinforcement-learning/multitask"),
)
# MuJoCo: the three locomotion teachers (train_teacher.py --env-id ENV, full run root), DAgger.
MUJOCO = Args(
    tasks=_teachers(
        "runs/full/reinforcement-learning", ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5")
    ),
    method="dagger",
    seeds=3,
    train_steps_per_round=500,
    select_best=True,
    out_dir=Path("runs/full/reinforcement-learning/multitask-mujoco"),
)
PRESETS = {"quick": QUICK, "full": FULL, "mujoco": MUJOCO}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, PRESETS)
    check_runtime(args)
    tasks = parse_tasks(args.tasks)
    check_hidden(args.hidden)
    claim_folder(args.out_dir)
    setups = [load_task(env_id, folder, args.steps_per_round) for env_id, folder in tasks]
    check_smaller(setups, args.hidden)
    for s in setups:
        score_references(s, args.eval_episodes, args.val_episodes)
    rounds = args.rounds or max(env_settings(s.env_id).rounds for s in setups)
    settings = {
        **args_dict(
            args,
            ("tasks", "seeds", "seed_start", "out_dir", "resume"),
            only_when_set=("select_best",),
        ),
        "rounds": rounds,
        "teachers": {s.env_id: s.sha256 for s in setups},
        "steps_per_round": {s.env_id: s.steps_per_round for s in setups},
    }
    records = []
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        seed_settings = {**settings, "seed": seed}
        done = finished_seed(args, seed, seed_settings)
        if done is not None and is_main_process():
            print(f"seed {seed}: finished before with the same settings; reused")
        records.append(done or run_seed(setups, args, METHODS, rounds, seed, seed_settings))
    summary = summarize(records)
    if is_main_process():
        atomic_write_json(args.out_dir / "summary.json", summary)
        print(render(summary))
        print(f"summary: {args.out_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
