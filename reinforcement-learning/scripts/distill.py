"""Distil a saved PPO teacher into a compact policy, comparing methods over seeds.

    python -m reinforcement_learning.scripts.distill --preset quick
    python -m reinforcement_learning.scripts.distill --preset full --seeds 3
    python -m reinforcement_learning.scripts.distill --preset full --env-id Pendulum-v1

Methods: ``none`` (the same compact policy trained from scratch by PPO, for the environment
steps distillation used: the honest baseline), ``distill`` (policy distillation on states
from teacher rollouts only) and ``dagger`` (the student acts too: a per-step β-mix of teacher
and student actions, β = beta_decay ** round, with the teacher labelling every state).
Distillation minimises ``policy_kl`` (discrete actions, teacher softmax at a temperature) or
``gaussian_kl`` (continuous) on batches drawn from a replay buffer of states, through the
shared loop. Every method gets the same student architecture, seeds and evaluation episodes.

Each run writes ``<out-dir>/<method>/seed-<k>/`` (model/, metrics.jsonl, results.json); the
comparison goes to ``<out-dir>/summary.json`` and is printed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from common.cli import args_dict, parse_args, run_main
from common.errors import ConfigError
from common.io import atomic_write_json, sha256_file
from common.metrics import gap_closure, mean_std
from common.results import RunResult, make_metrics, write_results
from common.training import is_main_process
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
    distillation_loss,
    evaluate_returns,
    run_distillation,
    speed_report,
    train_baseline,
)
from reinforcement_learning.student_model.policy import CompactPolicy
from reinforcement_learning.teacher_model.hyperparams import PPOHyperparams, env_settings
from reinforcement_learning.teacher_model.ppo import load_teacher

METHODS = ("none", "distill", "dagger")


@dataclass
class Args:
    """Distil a PPO teacher into a compact policy with one or more methods over seeds."""

    env_id: str = "CartPole-v1"
    """Gymnasium id; the teacher must have been trained on an environment with its spaces."""
    teacher: Path | None = None
    """Teacher folder (ppo.zip, normalization.json, config.json) from train_teacher.py;
    unset: <run-root>/<env-id>/teacher/model."""
    methods: tuple[str, ...] = METHODS
    """Methods to compare: none (PPO from scratch, same env steps), distill, dagger."""
    student_hidden: tuple[int, ...] | None = None
    """Student hidden layer sizes; unset: the environment's table value (16 or 32 units)."""
    rounds: int | None = None
    """Collect-then-train rounds; unset: the table's value."""
    steps_per_round: int | None = None
    """Environment steps collected per round; unset: the table's value."""
    train_steps_per_round: int = 250
    """Optimizer steps on the replay buffer after each collection."""
    batch_size: int = 256
    """States per optimizer step."""
    lr: float = 3e-3
    """Adam learning rate of the student."""
    buffer_size: int = 100_000
    """Replay buffer capacity in states (the oldest are dropped first)."""
    temperature: float = 1.0
    """policy_kl: teacher softmax temperature (< 1 sharpens its targets); discrete actions only."""
    beta_decay: float = 0.5
    """dagger: probability of the teacher acting is beta_decay ** round (round 0: teacher only)."""
    n_envs: int = 8
    """Parallel environments for collecting states."""
    sample_actions: bool = True
    """Collect with sampled (not greedy) actions, for more varied states."""
    eval_episodes: int = 20
    """Seeded test episodes (greedy actions) per policy: the reported mean ± std return."""
    val_episodes: int = 5
    """Validation episodes after each round (learning curve in metrics.jsonl)."""
    seeds: int = 1
    """Seeds per method (seed_start, seed_start + 1, ...); the summary reports mean and std."""
    seed_start: int = 0
    """First seed."""
    run_root: Path = Path("runs/reinforcement-learning")
    """Runs go to <run-root>/<env-id>/distill unless --out-dir is given."""
    out_dir: Path | None = None
    """Where runs and summary.json go."""


# Quick: CartPole-v1, 10 rounds of 2000 env steps per method (20k, the baseline's budget too):
# about 50 s for the three methods, 2 min with the teacher (measured on 2 busy cores).
QUICK = Args(run_root=Path("runs/quick/reinforcement-learning"))
# Full: the benchmark (LunarLander-v3: 20 rounds of 10k steps); run again with --env-id for the
# other tasks. More optimizer steps and a larger buffer for LunarLander's wider state space.
# Measured (3 seeds, 20 test episodes each, one core): LunarLander-v3 teacher 282.4, distill
# 282.6 +- 0.4, dagger 282.6 +- 0.7, PPO baseline -65.3 +- 100.3 (~17 min for all, teacher 17
# min); Pendulum-v1 teacher -170.2, distill -170.8 +- 0.5, dagger -170.7 +- 0.2, baseline
# -320.4 +- 162.5; CartPole-v1 500 / 500.0 +- 0 / 500.0 +- 0 / 331.6 +- 150.3.
FULL = Args(
    env_id="LunarLander-v3",
    seeds=3,
    train_steps_per_round=500,
    buffer_size=200_000,
    run_root=Path("runs/full/reinforcement-learning"),
)
PRESETS = {"quick": QUICK, "full": FULL}


def check_methods(methods: tuple[str, ...]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(
            f"unknown method(s) {unknown or '(none given)'}; use {', '.join(METHODS)}"
        )


def summarize(runs: dict[str, list[dict]], teacher: dict[str, Any]) -> dict[str, Any]:
    """Mean and std over seeds per method, the share of the teacher's return kept, the gain
    over the PPO baseline and the gap closure."""
    rows: dict[str, Any] = {}
    for method, results in runs.items():
        finals = [r["metrics"]["final"] for r in results]
        mean, std = mean_std([f["test/return_mean"] for f in finals])
        kept = mean_std([f["test/teacher_return_kept"] for f in finals])
        row: dict[str, Any] = {
            "n_seeds": len(finals),
            "return_mean": mean,
            "return_std": std,
            "returns": [f["test/return_mean"] for f in finals],
            "episode_std_mean": mean_std([f["test/return_std"] for f in finals])[0],
            "teacher_return_kept_mean": kept[0],
            "teacher_return_kept_std": kept[1],
            "env_steps_mean": mean_std([r["budget"]["env_steps"] for r in results])[0],
            "wall_time_s_mean": mean_std([r["wall_time_s"] for r in results])[0],
            "params": results[0]["student"]["params"],
        }
        for key in ("agreement", "action_gap"):
            if f"test/{key}" in finals[0]:
                row[f"{key}_mean"] = mean_std([f[f"test/{key}"] for f in finals])[0]
        rows[method] = row
    base = rows.get("none")
    for method, row in rows.items():
        if base is None or method == "none":
            continue
        row["gain_over_none"] = row["return_mean"] - base["return_mean"]
        spread = max(row["return_std"], base["return_std"])
        row["gain_in_std"] = row["gain_over_none"] / spread if spread > 0 else None
        row["gap_closure"] = gap_closure(
            row["return_mean"], base["return_mean"], teacher["return_mean"]
        )
    return {"teacher": teacher, "methods": rows}


def print_summary(summary: dict[str, Any]) -> None:
    t = summary["teacher"]
    print(
        f"\n{t['env_id']}: return over {t['episodes']} seeded test episodes (greedy). Teacher "
        f"{t['name']}: {t['return_mean']:.1f} ± {t['return_std']:.1f}, {t['params']:,} actor "
        f"params, {t['env_steps']:,} env steps; random policy {t['random_return_mean']:.1f}"
    )
    print(
        f"{'method':8s} {'return (mean ± std over seeds)':>30s} {'seeds':>5s} {'kept':>7s} "
        f"{'gain':>8s} {'gap closed':>10s} {'agree':>6s} {'params':>7s} {'env steps':>10s} "
        f"{'time/run':>8s}"
    )
    for method, r in summary["methods"].items():
        gain = f"{r['gain_over_none']:+.1f}" if "gain_over_none" in r else ""
        closure = f"{r['gap_closure']:.2f}" if "gap_closure" in r else ""
        if "agreement_mean" in r:
            agree = f"{100 * r['agreement_mean']:5.1f}%"
        else:  # continuous actions: mean |student - teacher| action instead
            agree = f"Δ{r['action_gap_mean']:.3f}" if "action_gap_mean" in r else ""
        print(
            f"{method:8s} {r['return_mean']:21.1f} ± {r['return_std']:6.1f} {r['n_seeds']:5d} "
            f"{100 * r['teacher_return_kept_mean']:6.1f}% {gain:>8s} {closure:>10s} {agree:>6s} "
            f"{r['params']:7,d} {r['env_steps_mean']:10,.0f} {r['wall_time_s_mean']:7.0f}s"
        )
    print(
        "kept = (student - random) / (teacher - random); agree = greedy actions equal to the "
        "teacher's on the states the student visits (Δ: mean |action difference|); 'none' is "
        "PPO with the student's actor for the same env steps."
    )
    if any(r["n_seeds"] < 2 for r in summary["methods"].values()):
        print("One seed per method: no spread is measured, so no gain can be called significant.")
    base = summary["methods"].get("none")
    if base is not None and t["return_mean"] <= base["return_mean"]:
        print("The teacher is no better than the baseline: gap closure is not meaningful.")
    sp = summary.get("speed")
    if sp:
        print(
            f"Inference (CPU, side by side): batch-1 latency teacher "
            f"{sp['teacher']['latency_b1_ms']:.3f} ms vs student {sp['student']['latency_b1_ms']:.3f} "
            f"ms; batch-{sp['teacher']['batch']} throughput {sp['teacher']['throughput']:,.0f} vs "
            f"{sp['student']['throughput']:,.0f} obs/s"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, PRESETS)
    check_methods(args.methods)
    if args.temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    check_env_id(args.env_id)
    settings = env_settings(args.env_id)
    teacher_path = args.teacher or args.run_root / args.env_id / "teacher" / "model"
    out_dir = args.out_dir or args.run_root / args.env_id / "distill"
    teacher = load_teacher(teacher_path)
    spec = env_space_spec(args.env_id)
    trained_on = f" (trained on {teacher.env_id})" if teacher.env_id else ""
    check_same_spaces(teacher.spec, spec, f"the teacher in {teacher_path}{trained_on}", args.env_id)

    # The baseline trains with the teacher's own PPO recipe (the table's, unless overridden).
    recorded = teacher.config.get("hyperparams")
    ppo_hp = settings.ppo
    if recorded and teacher.env_id == args.env_id:
        ppo_hp = PPOHyperparams(**{**recorded, "net_arch": tuple(recorded["net_arch"])})
    hidden = tuple(args.student_hidden or settings.student_hidden)
    rounds = args.rounds or settings.rounds
    steps_per_round = args.steps_per_round or settings.steps_per_round
    # What each distillation run consumes (whole vector steps); the baseline gets the same.
    env_steps = rounds * args.n_envs * math.ceil(steps_per_round / args.n_envs)
    digest = sha256_file(teacher.path)
    t_test, _ = evaluate_returns(
        teacher.policy, args.env_id, spec, args.eval_episodes, TEST_SEED, "test"
    )
    random_return = run_episodes(
        random_policy(args.env_id, TEST_SEED), args.env_id, args.eval_episodes, TEST_SEED
    ).mean
    arch = "x".join(map(str, teacher.config.get("hyperparams", {}).get("net_arch", [64, 64])))
    t_desc = describe_teacher(
        teacher.policy, f"ppo-mlp-{arch}", spec.obs_dim, checkpoint=str(teacher.path), sha256=digest
    )
    # Teacher and student speed side by side, once (a fresh student acts as fast as a trained
    # one); with "score" and "floor" (a random policy's return) for the cross-domain report.
    speed = {
        "teacher": speed_report(teacher.policy, spec.obs_dim),
        "student": speed_report(
            CompactPolicy(spec.obs_dim, spec.action_dim, hidden, spec.continuous, None),
            spec.obs_dim,
        ),
    }
    t_desc.update(
        test_return_mean=t_test["test/return_mean"],
        test_return_std=t_test["test/return_std"],
        random_return_mean=random_return,
        score=t_test["test/return_mean"],
        floor=random_return,
        speed=speed["teacher"],
    )
    loss, loss_desc = distillation_loss(spec, args.temperature)
    s_name = "mlp-" + "x".join(map(str, hidden))

    runs: dict[str, list[dict]] = {}
    student: CompactPolicy | None = None
    for method in args.methods:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            start = time.perf_counter()
            run_dir = out_dir / method / f"seed-{seed}"
            set_seed(seed)  # same initialisation and environment seeds for every method
            best = None
            if method == "none":
                student, ppo = train_baseline(
                    args.env_id, ppo_hp, env_steps, hidden, spec, seed, run_dir,
                    f"none seed {seed}",
                )  # fmt: skip
                normalization = ppo.normalization
                budget: dict[str, Any] = ppo.budget()
                run_loss = {"weights": {"ppo": 1.0}, "options": {"ppo": asdict(ppo_hp)}}
                details: dict[str, Any] = {"train_time_s": ppo.seconds}
            else:
                normalization = teacher.normalization
                student = CompactPolicy(
                    spec.obs_dim, spec.action_dim, hidden, spec.continuous, normalization
                )
                dist = run_distillation(
                    student,
                    teacher.policy,
                    args.env_id,
                    spec,
                    loss,
                    DistillSpec(
                        name=f"{method} seed {seed}",
                        method=method,
                        run_dir=run_dir,
                        rounds=rounds,
                        steps_per_round=steps_per_round,
                        train_steps_per_round=args.train_steps_per_round,
                        batch_size=args.batch_size,
                        lr=args.lr,
                        buffer_size=args.buffer_size,
                        beta_decay=args.beta_decay,
                        n_envs=args.n_envs,
                        sample_actions=args.sample_actions,
                        seed=seed,
                        val_episodes=args.val_episodes,
                    ),
                )
                student, best = dist.student, dist.state.best
                budget = {
                    "epochs": rounds,
                    "steps": dist.state.step,
                    "examples": dist.state.step * args.batch_size,
                    "env_steps": dist.env_steps,
                }
                run_loss = loss_desc
                details = {
                    "train_time_s": dist.seconds,
                    "rounds": [asdict(h) for h in dist.history],
                }
            final, episodes = evaluate_returns(
                student, args.env_id, spec, args.eval_episodes, TEST_SEED, "test", teacher.policy
            )
            final["test/teacher_return_kept"] = teacher_return_kept(
                final["test/return_mean"], t_test["test/return_mean"], random_return
            )
            cfg = PolicyConfig(
                env_id=args.env_id,
                obs_dim=spec.obs_dim,
                action_dim=spec.action_dim,
                continuous=spec.continuous,
                hidden=list(hidden),
                normalization=normalization.to_dict(),
                action_low=list(spec.action_low) if spec.action_low else None,
                action_high=list(spec.action_high) if spec.action_high else None,
                extra={"method": method, "seed": seed, "teacher_sha256": digest},
            )
            model_dir = save_policy_dir(student, cfg, run_dir / "model")
            settings_json = args_dict(
                args, ("methods", "seeds", "seed_start", "out_dir", "run_root")
            )
            result = RunResult(
                domain="reinforcement-learning",
                dataset=args.env_id,
                role="student",
                method=method,
                seed=seed,
                teacher=t_desc,
                student=describe_policy(
                    student,
                    s_name,
                    spec.obs_dim,
                    checkpoint=str(model_dir),
                    hidden=list(hidden),
                    speed=speed["student"],
                ),
                metrics=make_metrics(final, "test/return_mean", best=best),
                loss=run_loss,
                budget=budget,
                wall_time_s=time.perf_counter() - start,
                extra={
                    **details,
                    "eval_episodes": args.eval_episodes,
                    "test_returns": episodes.returns,
                    "teacher_env_steps": teacher.config.get("budget", {}).get("env_steps"),
                    "args": {**settings_json, "rounds": rounds, "steps_per_round": steps_per_round},
                },
            )
            write_results(run_dir, result)
            runs.setdefault(method, []).append(result.to_dict())
            print(
                f"{method} seed {seed}: return {final['test/return_mean']:.1f} ± "
                f"{final['test/return_std']:.1f} ({budget['env_steps']:,} env steps, "
                f"{result.wall_time_s:.0f} s)"
            )

    assert student is not None
    summary = summarize(
        runs,
        {
            "env_id": args.env_id,
            "name": t_desc["name"],
            "params": t_desc["params"],
            "return_mean": t_test["test/return_mean"],
            "return_std": t_test["test/return_std"],
            "random_return_mean": random_return,
            "episodes": args.eval_episodes,
            "env_steps": teacher.config.get("budget", {}).get("env_steps", 0),
        },
    )
    summary["student"] = {"name": s_name, "params": runs[args.methods[0]][0]["student"]["params"]}
    summary["speed"] = speed
    if is_main_process():
        atomic_write_json(out_dir / "summary.json", summary)
        print_summary(summary)
        print(f"summary: {out_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
