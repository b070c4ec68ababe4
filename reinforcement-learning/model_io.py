"""Save and load students as a folder: ``model.safetensors`` + ``config.json``.

The config holds everything needed to rebuild the policy and feed it (sizes, action kind and
bounds, the observation statistics), so :class:`StudentPolicy` acts on raw observations with
torch and numpy alone: no stable-baselines3, no gymnasium. :class:`SB3Predictor` gives it the
``predict`` signature SB3's ``evaluate_policy`` calls.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model

from common.domains import check_model_folder
from common.errors import CheckpointError, ShapeMismatchError
from common.io import atomic_write_json, save_model_atomic
from common.training import is_main_process
from reinforcement_learning.normalization import ObsNormalization
from reinforcement_learning.student_model.policy import CompactPolicy, select_actions

WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass
class PolicyConfig:
    """How to rebuild a saved student and what it expects as input."""

    env_id: str
    obs_dim: int
    action_dim: int
    continuous: bool
    hidden: list[int]
    normalization: dict[str, Any]
    """:class:`ObsNormalization` as a dict: applied inside the policy to raw observations."""
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    family: str = "compact-mlp"
    extra: dict[str, Any] = field(default_factory=dict)


def build_policy(cfg: PolicyConfig) -> CompactPolicy:
    if cfg.family != "compact-mlp":
        raise CheckpointError(f"unknown policy family {cfg.family!r} in config")
    return CompactPolicy(
        cfg.obs_dim,
        cfg.action_dim,
        cfg.hidden,
        cfg.continuous,
        ObsNormalization.from_dict(cfg.normalization),
    )


def save_policy_dir(model: CompactPolicy, cfg: PolicyConfig, directory: Path) -> Path:
    """Write weights then config, each atomically; the config's presence marks completion."""
    directory = Path(directory)
    if is_main_process():
        save_model_atomic(model, directory / WEIGHTS)
        atomic_write_json(directory / CONFIG, asdict(cfg))
    return directory


def load_policy_dir(directory: Path) -> tuple[CompactPolicy, PolicyConfig]:
    """Rebuild a saved student in eval mode; errors name the folder and the fix."""
    directory = Path(directory)
    check_model_folder(directory, "reinforcement-learning")
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise CheckpointError(
            f"{directory} is not a saved student policy (needs {CONFIG} and {WEIGHTS}). Make one "
            "with `python -m reinforcement_learning.scripts.distill`, or pass the model/ folder "
            "of one of its runs."
        )
    raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    try:
        cfg = PolicyConfig(**raw)
    except TypeError as err:
        raise CheckpointError(f"{directory}/{CONFIG} is not a student config: {err}") from None
    model = build_policy(cfg)
    try:
        load_model(model, str(directory / WEIGHTS))
    except RuntimeError as err:
        raise CheckpointError(f"{directory}/{WEIGHTS} does not match its {CONFIG}: {err}") from None
    return model.eval(), cfg


class StudentPolicy:
    """A saved student ready to act: ``predict(obs)`` on raw observations, numpy in and out.

    One observation ``(obs_dim,)`` gives one action (an int for discrete actions, an array
    for continuous ones); a batch ``(n, obs_dim)`` gives ``n``.
    """

    def __init__(self, model: CompactPolicy, config: PolicyConfig) -> None:
        self.model, self.config = model.eval(), config

    @classmethod
    def load(cls, directory: Path) -> StudentPolicy:
        return cls(*load_policy_dir(directory))

    def predict(
        self,
        obs: np.ndarray,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> np.ndarray | int:
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        if batch.ndim != 2 or batch.shape[1] != self.config.obs_dim:
            raise ShapeMismatchError(
                f"observation of shape {obs.shape}: this policy ({self.config.env_id}) takes "
                f"{self.config.obs_dim}-dim observations, one vector or a batch (n, "
                f"{self.config.obs_dim}). Feed it the raw observations of {self.config.env_id}."
            )
        with torch.no_grad():
            actions = select_actions(
                self.model(torch.from_numpy(batch)),
                deterministic,
                generator,
                self.config.action_low,
                self.config.action_high,
            )
        if single:
            return actions[0] if self.config.continuous else int(actions[0])
        return actions


class SB3Predictor:
    """``predict(observation, state, episode_start, deterministic) -> (actions, state)``, the
    interface of ``stable_baselines3.common.evaluation.evaluate_policy``.

    Give ``evaluate_policy`` an environment *without* ``VecNormalize``: the student normalizes
    raw observations itself.
    """

    def __init__(self, policy: StudentPolicy) -> None:
        self.policy = policy

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        obs = np.asarray(observation, dtype=np.float32)
        actions = self.policy.predict(obs.reshape(-1, self.policy.config.obs_dim), deterministic)
        return np.asarray(actions), state
