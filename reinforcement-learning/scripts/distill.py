"""Distil a saved PPO teacher into a compact policy, comparing methods over seeds.

    python -m reinforcement_learning.scripts.distill --preset quick
    python -m reinforcement_learning.scripts.distill --preset full --seeds 3
    python -m reinforcement_learning.scripts.distill --preset full --env-id Pendulum-v1
    python -m reinforcement_learning.scripts.distill --methods none --loss "dist=1"

Methods are the tables below, one per kind of action space: ``none`` (the same compact policy
trained from scratch by PPO, for the environment steps distillation used: the honest
baseline), ``distill`` (policy distillation on states from teacher rollouts only) and
``dagger`` (the student acts too: a per-step β-mix of teacher and student actions, β =
beta_decay ** round, with the teacher labelling every state). ``--loss SPEC`` runs any
registered terms on teacher rollouts as one more method. Distillation minimises ``policy_kl``
(discrete actions, teacher softmax at a temperature) or ``gaussian_kl`` (continuous) on
batches drawn from a replay buffer of states, through the shared loop. Every method gets the
same student architecture, seeds and evaluation episodes.

Each run writes ``<out-dir>/<method>/seed-<k>/`` (model/, metrics.jsonl, results.json); the
comparison goes to ``<out-dir>/summary.json`` and is printed. A distill or dagger run also keeps
``checkpoints/`` (with ``rounds/``, the student weights each round collected with): killed, it
resumes with the same command and ends with the student an uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from common.cli import parse_args, run_main
from common.experiment import (
    DistillArgs,
    Method,
    check_runtime,
    method_table,
    resolve_methods,
    run_experiment,
)
from reinforcement_learning.data.replay import check_vec_env
from reinforcement_learning.envs import check_env_id, env_space_spec
from reinforcement_learning.task import PolicyDistillTask

_BASELINE = Method("none", {}, extra={"baseline": "ppo"})
METHODS = {
    "discrete": {
        "none": _BASELINE,
        **method_table(
            {
                "distill": ("policy_kl=1", {"policy_kl": {"temperature": 1.0}}),
                "dagger": ("policy_kl=1", {"policy_kl": {"temperature": 1.0}}),
            },
            extra={"distill": {"collect": "teacher"}, "dagger": {"collect": "dagger"}},
        ),
    },
    "continuous": {
        "none": _BASELINE,
        **method_table(
            {"distill": "gaussian_kl=1", "dagger": "gaussian_kl=1"},
            extra={"distill": {"collect": "teacher"}, "dagger": {"collect": "dagger"}},
        ),
    },
}
"""Action-space kind -> method name -> loss spec, options and how states are collected
(``none`` has no loss: PPO trains it)."""


@dataclass
class Args(DistillArgs):
    """Distil a PPO teacher into a compact policy with one or more methods over seeds."""

    env_id: str = "CartPole-v1"
    """Gymnasium id; the teacher must have been trained on an environment with its spaces."""
    teacher: Path | None = None
    """Teacher folder (ppo.zip, normalization.json, config.json) from train_teacher.py;
    unset: <run-root>/<env-id>/teacher/model."""
    methods: tuple[str, ...] = ("none", "distill", "dagger")
    """Methods to compare: none (PPO from scratch, same env steps), distill, dagger."""
    student_hidden: tuple[int, ...] | None = None
    """Student hidden layer sizes; unset: the environment's table value (16 to 64 units);
    the flag with no sizes: a linear policy."""
    rounds: int | None = None
    """Collect-then-train rounds; unset: the table's value."""
    steps_per_round: int | None = None
    """Environment steps collected per round; unset: the table's value."""
    train_steps_per_round: int | None = None
    """Optimizer steps on the replay buffer after each collection; unset: the table's value
    (500; Walker2d-v5 2000)."""
    batch_size: int = 256
    """States per optimizer step."""
    lr: float = 3e-3
    """Adam learning rate of the student."""
    lr_decay: bool | None = None
    """Decay the learning rate along a cosine to 0 over all rounds' optimizer steps (else
    constant): the last rounds settle instead of swinging; unset: the table's value (on for
    Walker2d-v5)."""
    buffer_size: int = 100_000
    """Replay buffer capacity in states (the oldest are dropped first)."""
    beta_decay: float = 0.5
    """dagger: probability of the teacher acting is beta_decay ** round (round 0: teacher only)."""
    n_envs: int = 8
    """Parallel environments for collecting states."""
    vec_env: Literal["dummy", "subproc"] = "dummy"
    """How distill and dagger step their n-envs environments: dummy (one after another in this
    process) or subproc (one process each, SB3's SubprocVecEnv: for slow environments). The
    same states either way, so not part of a run's settings; the none baseline ignores it."""
    sample_actions: bool = True
    """Collect with sampled (not greedy) actions, for more varied states."""
    eval_episodes: int = 20
    """Seeded test episodes (greedy actions) per policy: the reported mean ± std return."""
    val_episodes: int | None = None
    """Validation episodes after each round (learning curve in metrics.jsonl); unset: the
    table's value (5; Walker2d-v5 10)."""
    select_best: bool = False
    """End each run with its student of the best validation round (val episodes, never the
    test seeds), not the last round's; the PPO baseline then ends with the best point of its
    learning curve, on the same validation episodes."""
    run_root: Path = Path("runs/reinforcement-learning")
    """Unset --teacher: <run-root>/<env-id>/teacher/model; unset --out-dir:
    <run-root>/<env-id>/distill."""
    out_dir: Path | None = None  # type: ignore[assignment]
    """Where runs (<method>/seed-<k>/) and summary.json go; unset: under --run-root."""


# Quick: CartPole-v1, 3 rounds of 1000 env steps per method, 3 seeds (docs/measured.md).
QUICK = Args(
    rounds=3,
    steps_per_round=1000,
    train_steps_per_round=250,
    seeds=3,
    run_root=Path("runs/quick/reinforcement-learning"),
)
# Full: LunarLander-v3, 20 rounds of 10k steps, each run ending with its best validation
# round (the baseline: its best curve point); --env-id for the other tasks, with the rounds,
# student and optimizer steps of their table entry.
FULL = Args(
    env_id="LunarLander-v3",
    seeds=3,
    buffer_size=200_000,
    select_best=True,
    run_root=Path("runs/full/reinforcement-learning"),
)
PRESETS = {"quick": QUICK, "full": FULL}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, PRESETS)
    check_runtime(args)
    check_vec_env(args.vec_env)
    if args.out_dir is None:
        args = replace(args, out_dir=args.run_root / args.env_id / "distill")
    check_env_id(args.env_id)
    kind = "continuous" if env_space_spec(args.env_id).continuous else "discrete"
    methods = resolve_methods(
        args.methods, METHODS[kind], args.loss, args.loss_option, {"collect": "teacher"}
    )
    return run_experiment(lambda: PolicyDistillTask(args), methods, args)


if __name__ == "__main__":
    run_main(main)
