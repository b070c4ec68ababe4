"""Environments: checked creation, what a policy's spaces look like, and seeded evaluation.

Policies here are functions from a batch of raw observations to a batch of actions; the
same :func:`run_episodes` evaluates teachers, students, baselines and a random policy on the
same seeded episodes, so their returns are directly comparable.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from common.errors import DistilleryError, ShapeMismatchError

# Episode seeds: validation (during distillation) and test (final numbers) ranges are far
# from the small training seeds, so no evaluation episode replays a training reset.
VAL_SEED = 500_000
TEST_SEED = 1_000_000


class EnvError(DistilleryError, ValueError):
    """An unknown environment id, or one whose spaces this domain cannot handle."""


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` naming close matches when ``env_id`` is not registered."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise EnvError(
        f"unknown environment id {env_id!r}.{hint} Use a Gymnasium id such as CartPole-v1, "
        "LunarLander-v3, Acrobot-v1 or Pendulum-v1 (the tuned ones are listed in "
        "reinforcement_learning.teacher_model.hyperparams.ENV_TABLE)."
    )


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """``gym.make`` with errors that say what to do."""
    check_env_id(env_id)
    try:
        return gym.make(env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(
            f"environment {env_id!r} needs a package that is not installed ({err}); "
            "install the repo's requirements (`make setup`)"
        ) from None


@dataclass(frozen=True)
class SpaceSpec:
    """The shapes a policy must match: a flat observation vector and discrete or box actions."""

    obs_dim: int
    continuous: bool
    action_dim: int
    """Number of actions (discrete) or action dimensions (continuous)."""
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None

    def describe(self) -> str:
        kind = "continuous" if self.continuous else "discrete"
        return f"{self.obs_dim}-dim observations, {self.action_dim} {kind} actions"


def space_spec(observation_space: spaces.Space, action_space: spaces.Space) -> SpaceSpec:
    """Describe supported spaces; raise :class:`EnvError` for any other kind."""
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise EnvError(
            f"observation space {observation_space} is not a flat Box; this domain distils "
            "MLP policies on vector observations (CartPole, LunarLander, Acrobot, Pendulum, ...)"
        )
    obs_dim = int(observation_space.shape[0])
    if isinstance(action_space, spaces.Discrete):
        return SpaceSpec(obs_dim, False, int(action_space.n))
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        return SpaceSpec(
            obs_dim,
            True,
            int(action_space.shape[0]),
            tuple(float(x) for x in action_space.low),
            tuple(float(x) for x in action_space.high),
        )
    raise EnvError(
        f"action space {action_space} is neither Discrete nor a flat Box; use an environment "
        "with discrete or continuous (1-D Box) actions"
    )


def env_space_spec(env_id: str) -> SpaceSpec:
    env = make_env(env_id)
    try:
        return space_spec(env.observation_space, env.action_space)
    finally:
        env.close()


def check_same_spaces(policy: SpaceSpec, env: SpaceSpec, policy_what: str, env_what: str) -> None:
    """Refuse to run a policy on an environment whose spaces it was not built for."""
    same = (policy.obs_dim, policy.continuous, policy.action_dim) == (
        env.obs_dim,
        env.continuous,
        env.action_dim,
    )
    if not same:
        raise ShapeMismatchError(
            f"{policy_what} has {policy.describe()}, but {env_what} has {env.describe()}: "
            "observation/action spaces differ. Use the environment the policy was trained on, "
            "or train a teacher for this one first (reinforcement_learning.scripts.train_teacher)."
        )


@dataclass
class EpisodeStats:
    """Returns and lengths of evaluation episodes, in seed order."""

    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def steps(self) -> int:
        return int(sum(self.lengths))


Act = Callable[[np.ndarray], np.ndarray]


def run_episodes(act: Act, env_id: str, episodes: int, seed: int) -> EpisodeStats:
    """Run ``episodes`` episodes, episode ``i`` reset with seed ``seed + i``, all in lockstep.

    ``act`` maps a batch of raw observations ``(n, obs_dim)`` to ``n`` actions. Stepping the
    episodes side by side batches the policy calls; with a deterministic ``act`` the result
    is the same as running them one after another.
    """
    if episodes < 1:
        raise EnvError(f"need at least one evaluation episode, got {episodes}")
    envs = [make_env(env_id) for _ in range(episodes)]
    spec = space_spec(envs[0].observation_space, envs[0].action_space)
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    active = np.ones(episodes, dtype=bool)
    try:
        while active.any():
            idx = np.flatnonzero(active)
            actions = np.asarray(act(obs[idx]))
            for j, i in enumerate(idx):
                action: Any = actions[j] if spec.continuous else int(actions[j])
                o, r, terminated, truncated, _ = envs[i].step(action)
                obs[i] = o
                returns[i] += float(r)
                lengths[i] += 1
                if terminated or truncated:
                    active[i] = False
    finally:
        for env in envs:
            env.close()
    return EpisodeStats([float(r) for r in returns], [int(n) for n in lengths])


def random_policy(env_id: str, seed: int) -> Act:
    """Uniformly random actions from a seeded action space (the zero of "return kept")."""
    env = make_env(env_id)
    space = env.action_space
    env.close()
    space.seed(seed)
    return lambda obs: np.stack([np.asarray(space.sample()) for _ in range(len(obs))])


def teacher_return_kept(student: float, teacher: float, random: float) -> float:
    """``(student - random) / (teacher - random)``: the share of the teacher's improvement
    over a random policy that the student keeps. Unlike ``student / teacher`` it means the
    same for negative-return tasks (Acrobot, Pendulum). NaN when the teacher is no better
    than random."""
    gap = teacher - random
    if gap <= 0:
        return float("nan")
    return (student - random) / gap
