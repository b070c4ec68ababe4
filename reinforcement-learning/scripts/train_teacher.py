"""Train a PPO teacher (stable-baselines3 ``MlpPolicy``) and save it for distillation.

    python -m reinforcement_learning.scripts.train_teacher --preset quick      # CartPole-v1
    python -m reinforcement_learning.scripts.train_teacher --preset full       # LunarLander-v3
    python -m reinforcement_learning.scripts.train_teacher --preset full --env-id Pendulum-v1

Hyperparameters come from the per-environment table (rl-zoo's tuned PPO settings, the PPO
paper's for the MuJoCo tasks; see ``teacher_model/hyperparams.py``). Writes
``<run-dir>/model/`` (``ppo.zip``, ``normalization.json`` with the frozen VecNormalize
statistics, ``config.json``), SB3's ``sb3/progress.csv`` and ``results.json``; the run
directory defaults to ``<run-root>/<env-id>/teacher``. About every tenth of the run, the model and the
VecNormalize state are saved to ``checkpoints/``; a killed run started again with the same
command resumes from there.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.utils import set_seed

from common.cli import args_dict, parse_args, run_main
from common.experiment import reuse_teacher, write_teacher_result
from common.results import make_metrics
from common.stats import mean_sampling
from reinforcement_learning.envs import TEST_SEED, check_env_id, random_policy, run_episodes
from reinforcement_learning.pipeline import describe_teacher, evaluate_returns
from reinforcement_learning.teacher_model.hyperparams import env_settings, with_overrides
from reinforcement_learning.teacher_model.ppo import load_teacher, save_teacher, train_ppo


@dataclass
class Args:
    """Train a PPO teacher on a Gymnasium environment."""

    env_id: str = "CartPole-v1"
    """Gymnasium id: CartPole-v1, LunarLander-v3, LunarLanderContinuous-v3, Acrobot-v1,
    Pendulum-v1 have rl-zoo's tuned settings, the MuJoCo Hopper-v5, HalfCheetah-v5 and
    Walker2d-v5 the PPO paper's; other ids with vector observations get SB3's defaults."""
    timesteps: int | None = None
    """Environment steps to train for; unset: the table's value for the environment."""
    n_envs: int | None = None
    """Parallel environments; unset: the table's value."""
    seed: int = 0
    """Seed of the policy initialisation and the environments (env i gets seed + i)."""
    eval_episodes: int = 20
    """Seeded test episodes (greedy actions) for the reported mean ± std return."""
    device: str = "cpu"
    """Torch device for PPO; SB3 runs MLP policies fastest on the CPU."""
    run_root: Path = Path("runs/reinforcement-learning")
    """Runs go to <run-root>/<env-id>/teacher unless --out-dir is given."""
    out_dir: Path | None = None
    """Run directory: model/, sb3/, checkpoints/, results.json."""
    retrain: bool = False
    """Train afresh even when the run directory holds a finished teacher with the same
    settings, or checkpoints of an unfinished one (otherwise those are reused/resumed)."""


# Quick: CartPole-v1 with the zoo's 1e5 steps (measurements: docs/measured.md).
QUICK = Args(run_root=Path("runs/quick/reinforcement-learning"))
# Full: the benchmark teacher; run it again with --env-id for the other tasks.
FULL = Args(env_id="LunarLander-v3", run_root=Path("runs/full/reinforcement-learning"))
PRESETS = {"quick": QUICK, "full": FULL}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(Args, argv, PRESETS)
    start = time.perf_counter()
    check_env_id(args.env_id)
    settings = env_settings(args.env_id)
    hp = with_overrides(settings.ppo, total_timesteps=args.timesteps, n_envs=args.n_envs)
    run_dir = args.out_dir or args.run_root / args.env_id / "teacher"
    # The environment id is the data: same settings, same teacher.
    reuse_key = {
        "args": {
            k: v for k, v in asdict(args).items() if k not in ("out_dir", "run_root", "retrain")
        },
        "hyperparams": asdict(hp),
    }
    if reuse_teacher(run_dir, reuse_key, [run_dir / "model" / "ppo.zip"], args.retrain):
        return run_dir / "model"

    set_seed(args.seed)
    if args.retrain:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    rollout = hp.n_envs * hp.n_steps
    run = train_ppo(
        args.env_id,
        hp,
        hp.total_timesteps,
        args.seed,
        run_dir / "sb3",
        device=args.device,
        desc=f"teacher {args.env_id}",
        checkpoint_dir=run_dir / "checkpoints",
        # About ten checkpoints a run, each at a rollout boundary.
        checkpoint_every=max(rollout, hp.total_timesteps // 10),
        # What training depends on (not the evaluation episodes).
        settings={**reuse_key, "args": {**reuse_key["args"], "eval_episodes": None}},
    )
    model_dir = save_teacher(run, run_dir / "model", args.env_id, hp, args.seed)
    # The finished model supersedes them; left behind, they would block other settings.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)

    # Evaluate what was saved, loaded the way distill.py will load it.
    teacher = load_teacher(model_dir)
    final, episodes = evaluate_returns(
        teacher.policy, args.env_id, teacher.spec, args.eval_episodes, TEST_SEED, "test"
    )
    rand = run_episodes(
        random_policy(args.env_id, TEST_SEED), args.env_id, args.eval_episodes, TEST_SEED
    )
    final["test/random_return_mean"] = rand.mean
    arch = "x".join(map(str, hp.net_arch))
    desc = describe_teacher(
        teacher.policy, f"ppo-mlp-{arch}", teacher.spec.obs_dim, checkpoint=str(model_dir)
    )
    write_teacher_result(
        run_dir,
        domain="reinforcement-learning",
        dataset=args.env_id,
        seed=args.seed,
        model=desc,
        metrics=make_metrics(final, "test/return_mean", sampling=mean_sampling(episodes.returns)),
        budget=run.budget(),
        started=start,
        reuse_key=reuse_key,
        loss={"weights": {"ppo": 1.0}, "options": {"ppo": asdict(hp)}},
        extra={
            "train_time_s": run.seconds,
            "eval_episodes": args.eval_episodes,
            "test_returns": episodes.returns,
            "solved_return": settings.solved,
            "args": args_dict(args),
        },
        summary=lambda: (
            f"teacher PPO on {args.env_id}: return {final['test/return_mean']:.1f} ± "
            f"{final['test/return_std']:.1f} over {args.eval_episodes} test episodes (random "
            f"policy {rand.mean:.1f}); {desc['params']:,} actor params; "
            f"{run.budget()['env_steps']:,} env steps in {run.seconds:.0f} s -> {model_dir}"
        ),
    )
    return model_dir


if __name__ == "__main__":
    run_main(main)
