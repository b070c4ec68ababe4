"""The distillation data: states visited in the environment, kept in a replay buffer.

Each round a :class:`Collector` steps vectorized environments with a β-mix of teacher and
student actions (DAgger: β = 1 is teacher rollouts only, β = 0 the student alone) and stores
every state it sees; :class:`RoundBatches` then serves the shared loop batches of states drawn
from the buffer. The teacher labels them in the loop's forward pass, so a state visited by the
student is labelled exactly like one visited by the teacher.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv
from torch import Tensor, nn

from common.errors import ConfigError
from reinforcement_learning.envs import SpaceSpec
from reinforcement_learning.student_model.policy import select_actions


class StateBuffer:
    """A FIFO ring buffer of raw observations: once full, the oldest states go first."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        if capacity < 1:
            raise ConfigError(
                f"the replay buffer needs room for at least one state, got {capacity}"
            )
        self.capacity = capacity
        self.states = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.size = 0
        self._next = 0
        self.added = 0
        """States ever added (the buffer holds the last ``capacity`` of them)."""

    def __len__(self) -> int:
        return self.size

    def add(self, states: np.ndarray) -> None:
        rows = np.asarray(states, dtype=np.float32).reshape(-1, self.states.shape[1])
        self.added += len(rows)
        rows = rows[-self.capacity :]  # more than fit: only the newest survive anyway
        idx = (self._next + np.arange(len(rows))) % self.capacity
        self.states[idx] = rows
        self._next = int((self._next + len(rows)) % self.capacity)
        self.size = min(self.size + len(rows), self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        if self.size == 0:
            raise ConfigError("the replay buffer is empty; collect states before training")
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return torch.from_numpy(self.states[idx.numpy()])


VEC_ENVS = ("dummy", "subproc")
"""How the collector runs its environments: all in this process (SB3's ``DummyVecEnv``), or one
process each (``SubprocVecEnv``). Both give the same states for the same seeds."""
START_METHOD = "forkserver"
"""How ``subproc`` starts its workers: not ``fork``, which copies a process whose torch threads
may hold locks; a fresh server process that forks the workers is safe and starts fast."""


def check_vec_env(vec_env: str) -> None:
    """Refuse an unknown ``--vec-env`` before any work starts."""
    if vec_env not in VEC_ENVS:
        raise ConfigError(
            f"--vec-env {vec_env!r}: use dummy (environments in this process) or subproc "
            "(one process per environment)"
        )


def make_collection_env(env_id: str, n_envs: int, seed: int, vec_env: str = "dummy") -> VecEnv:
    """``n_envs`` seeded environments (env i reset with ``seed + i``), run as ``vec_env`` says."""
    check_vec_env(vec_env)
    if vec_env == "subproc":
        return make_vec_env(
            env_id,
            n_envs=n_envs,
            seed=seed,
            vec_env_cls=SubprocVecEnv,
            vec_env_kwargs={"start_method": START_METHOD},
        )
    return make_vec_env(env_id, n_envs=n_envs, seed=seed)


@dataclass
class RoundStats:
    """What one collection round did."""

    round: int
    beta: float
    env_steps: int
    teacher_actions: float
    """Fraction of steps on which the teacher's action was taken."""
    episodes: int
    episode_return: float | None
    """Mean return of the episodes that ended this round (None if none did)."""
    buffer: int


class Collector:
    """Steps ``n_envs`` environments with a per-step β-mix of teacher and student actions.

    Environments persist between rounds (an episode may span two), so a long episode is
    never cut short to fit a round. ``vec_env`` (:data:`VEC_ENVS`) runs them in this process or
    one process each.
    """

    def __init__(
        self,
        env_id: str,
        spec: SpaceSpec,
        teacher: nn.Module,
        student: nn.Module,
        n_envs: int,
        seed: int,
        sample_actions: bool = True,
        vec_env: str = "dummy",
    ) -> None:
        self.spec, self.teacher, self.student = spec, teacher, student
        self.sample_actions = sample_actions
        self.venv = make_collection_env(env_id, n_envs, seed, vec_env)
        self.obs = self.venv.reset()
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.env_steps = 0

    def steps_for(self, steps: int) -> int:
        """Steps a request of ``steps`` really takes: whole vector steps."""
        n = self.venv.num_envs
        return n * math.ceil(steps / n)

    def _act(self, model: nn.Module, obs: Tensor) -> np.ndarray:
        device = next(model.parameters()).device
        return select_actions(
            model(obs.to(device)),
            deterministic=not self.sample_actions,
            generator=self.generator,
            low=self.spec.action_low,
            high=self.spec.action_high,
        )

    @torch.no_grad()
    def collect(self, steps: int, beta: float, buffer: StateBuffer, round_index: int) -> RoundStats:
        n = self.venv.num_envs
        teacher_steps, returns = 0, []
        for _ in range(self.steps_for(steps) // n):
            obs = torch.from_numpy(np.asarray(self.obs, dtype=np.float32))
            buffer.add(self.obs)
            use_teacher = self.rng.random(n) < beta
            if use_teacher.all():
                actions = self._act(self.teacher, obs)
            elif not use_teacher.any():
                actions = self._act(self.student, obs)
            else:
                mask = use_teacher[:, None] if self.spec.continuous else use_teacher
                actions = np.where(mask, self._act(self.teacher, obs), self._act(self.student, obs))
            teacher_steps += int(use_teacher.sum())
            self.obs, _, _, infos = self.venv.step(actions)
            returns += [info["episode"]["r"] for info in infos if "episode" in info]
        done = self.steps_for(steps)
        self.env_steps += done
        return RoundStats(
            round=round_index,
            beta=beta,
            env_steps=done,
            teacher_actions=teacher_steps / done,
            episodes=len(returns),
            episode_return=float(np.mean(returns)) if returns else None,
            buffer=len(buffer),
        )

    def close(self) -> None:
        self.venv.close()


def beta_schedule(method: str, decay: float) -> Callable[[int], float]:
    """β per round: 1 throughout for ``distill`` (teacher rollouts only); ``decay ** round``
    for ``dagger`` (round 0 is all teacher, as in Ross et al. 2011 with β_i = p^(i-1))."""
    if method == "distill":
        return lambda _: 1.0
    if method == "dagger":
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"--beta-decay must be in [0, 1], got {decay}")
        return lambda r: decay**r
    raise ConfigError(f"no β schedule for method {method!r}; use distill or dagger")


class RoundBatches:
    """The shared loop's data: one epoch = one round = collect, then ``batches`` batches.

    ``set_epoch`` (called by the loop before each epoch) picks the round, and so β and the
    sampling seed; ``len`` tells the loop (and its progress bar) the batches per round.
    ``on_collect(round)``, if given, runs right after each round's collection, before its
    first batch (a checkpoint keeps what the round collected with).

    A round already in ``history`` is not collected again: a resumed run replays the rounds
    its checkpoint had collected (:meth:`collect` for each), so the loop then picks up with
    the same buffer, environments and random generators as the run it continues.
    """

    def __init__(
        self,
        collector: Collector,
        buffer: StateBuffer,
        schedule: Callable[[int], float],
        steps_per_round: int,
        batches: int,
        batch_size: int,
        seed: int,
        on_collect: Callable[[int], None] | None = None,
    ) -> None:
        self.collector, self.buffer, self.schedule = collector, buffer, schedule
        self.steps_per_round, self.batches, self.batch_size = steps_per_round, batches, batch_size
        self.seed, self.on_collect = seed, on_collect
        self.round = 0
        self.history: list[RoundStats] = []

    def set_epoch(self, epoch: int) -> None:
        self.round = epoch

    def __len__(self) -> int:
        return self.batches

    def collect(self) -> RoundStats:
        """Collect round ``self.round`` into the buffer (the next round not yet collected)."""
        if self.round != len(self.history):
            raise RuntimeError(
                f"round {self.round} collected out of order ({len(self.history)} rounds done)"
            )
        stats = self.collector.collect(
            self.steps_per_round, self.schedule(self.round), self.buffer, self.round
        )
        self.history.append(stats)
        return stats

    def fingerprint(self) -> str:
        """sha256 of everything the next rounds depend on besides the student: the buffer, the
        environments' current observations and the collector's random generators."""
        c, b = self.collector, self.buffer
        h = hashlib.sha256(b.states.tobytes())
        h.update(json.dumps([b.size, b._next, b.added, c.env_steps]).encode())
        h.update(np.ascontiguousarray(c.obs, dtype=np.float32).tobytes())
        h.update(json.dumps(c.rng.bit_generator.state, sort_keys=True).encode())
        h.update(c.generator.get_state().numpy().tobytes())
        return h.hexdigest()

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.round >= len(self.history):  # else replayed on resume: collected already
            self.collect()
            if self.on_collect is not None:
                self.on_collect(self.round)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.round)
        for _ in range(self.batches):
            yield {"obs": self.buffer.sample(self.batch_size, generator)}

    def last(self) -> dict[str, float]:
        stats = asdict(self.history[-1])
        return {f"collect/{k}": float(v) for k, v in stats.items() if v is not None}
