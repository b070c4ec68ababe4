"""Observation normalization: VecNormalize's statistics as plain numbers, in numpy and torch.

The teacher is trained on ``clip((obs - mean) / sqrt(var + epsilon), -clip, clip)`` with the
running statistics of SB3's ``VecNormalize``. They are frozen when the teacher is saved,
written as JSON, and applied inside the student and the teacher wrapper, so both take *raw*
observations and ``predict(obs)`` needs no SB3.

:func:`vecnormalize_state` and :func:`restore_vecnormalize` carry a training ``VecNormalize``
across a checkpoint as JSON: pickling the wrapper (SB3's own format) would make resuming
unpickle a file, which runs whatever code the file names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.errors import CheckpointError


@dataclass(frozen=True)
class ObsNormalization:
    """Frozen observation statistics; ``enabled=False`` passes observations through."""

    mean: tuple[float, ...]
    var: tuple[float, ...]
    clip: float = 10.0
    epsilon: float = 1e-8
    count: float = 0.0
    """Observations the statistics were estimated from (informative only)."""
    enabled: bool = True

    @classmethod
    def identity(cls, obs_dim: int) -> ObsNormalization:
        return cls(mean=(0.0,) * obs_dim, var=(1.0,) * obs_dim, enabled=False)

    @classmethod
    def from_vecnormalize(cls, venv: Any) -> ObsNormalization:
        """The current statistics of a ``VecNormalize`` (identity when it does not normalize
        observations)."""
        rms = venv.obs_rms
        if not venv.norm_obs:
            return cls.identity(int(np.prod(rms.mean.shape)))
        return cls(
            mean=tuple(float(x) for x in np.asarray(rms.mean).ravel()),
            var=tuple(float(x) for x in np.asarray(rms.var).ravel()),
            clip=float(venv.clip_obs),
            epsilon=float(venv.epsilon),
            count=float(rms.count),
        )

    @property
    def obs_dim(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "var": list(self.var)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObsNormalization:
        return cls(
            mean=tuple(float(x) for x in data["mean"]),
            var=tuple(float(x) for x in data["var"]),
            clip=float(data.get("clip", 10.0)),
            epsilon=float(data.get("epsilon", 1e-8)),
            count=float(data.get("count", 0.0)),
            enabled=bool(data.get("enabled", True)),
        )

    def apply(self, obs: np.ndarray) -> np.ndarray:
        """Numpy version, the same arithmetic as ``VecNormalize.normalize_obs`` (float64, then
        float32)."""
        obs = np.asarray(obs)
        if not self.enabled:
            return obs.astype(np.float32)
        mean, var = np.asarray(self.mean), np.asarray(self.var)
        return np.clip((obs - mean) / np.sqrt(var + self.epsilon), -self.clip, self.clip).astype(
            np.float32
        )


class ObsNormalizer(nn.Module):
    """Torch version of :meth:`ObsNormalization.apply` for raw observation batches.

    The statistics are non-persistent buffers: they live in ``config.json``, not in the
    weights file, so there is one copy of them. The arithmetic is float64 (as VecNormalize's)
    so the student sees bit-for-bit what the teacher was trained on, up to float32 rounding.
    """

    def __init__(self, stats: ObsNormalization) -> None:
        super().__init__()
        self.enabled = stats.enabled
        self.clip = stats.clip
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float64), False)
        std = torch.sqrt(torch.tensor(stats.var, dtype=torch.float64) + stats.epsilon)
        self.register_buffer("std", std, False)

    def forward(self, obs: Tensor) -> Tensor:
        if not self.enabled:
            return obs.float()
        out = ((obs.to(torch.float64) - self.mean) / self.std).clamp(-self.clip, self.clip)
        return out.float()


def _rms_state(rms: Any) -> dict[str, Any]:
    return {
        "mean": np.asarray(rms.mean, dtype=np.float64).ravel().tolist(),
        "var": np.asarray(rms.var, dtype=np.float64).ravel().tolist(),
        "count": float(rms.count),
    }


def vecnormalize_state(venv: Any) -> dict[str, Any]:
    """What resuming needs of an SB3 ``VecNormalize`` (flat observations), as JSON numbers:
    the running observation and return statistics and the wrapper's settings. ``returns``
    (the discounted returns of the episodes in progress) is recorded for completeness; on
    resume those episodes start over, so it is not restored (see :func:`restore_vecnormalize`).
    Python's JSON writes floats exactly, so the statistics round-trip bit for bit."""
    return {
        "obs_rms": _rms_state(venv.obs_rms),
        "ret_rms": _rms_state(venv.ret_rms),
        "clip_obs": float(venv.clip_obs),
        "clip_reward": float(venv.clip_reward),
        "gamma": float(venv.gamma),
        "epsilon": float(venv.epsilon),
        "norm_obs": bool(venv.norm_obs),
        "norm_reward": bool(venv.norm_reward),
        "training": bool(venv.training),
        "returns": np.asarray(venv.returns, dtype=np.float64).tolist(),
    }


def restore_vecnormalize(venv: Any, state: Mapping[str, Any], where: str) -> None:
    """Put :func:`vecnormalize_state`'s numbers into a fresh ``VecNormalize`` on the same
    environment (in place). ``returns`` restart at zero, as SB3's ``VecNormalize.set_venv``
    does when a pickled wrapper is reattached: the environments are reset on resume.
    A malformed state or one of other shapes is a :class:`CheckpointError` naming ``where``."""
    try:
        for name in ("obs_rms", "ret_rms"):
            rms, saved = getattr(venv, name), state[name]
            shape = np.shape(rms.mean)
            mean = np.asarray(saved["mean"], dtype=np.float64)
            var = np.asarray(saved["var"], dtype=np.float64)
            if mean.size != int(np.prod(shape)) or var.size != mean.size:
                raise ValueError(f"{name} has {mean.size} values, this environment needs {shape}")
            rms.mean, rms.var, rms.count = (
                mean.reshape(shape),
                var.reshape(shape),
                float(saved["count"]),
            )
        venv.clip_obs, venv.clip_reward = float(state["clip_obs"]), float(state["clip_reward"])
        venv.gamma, venv.epsilon = float(state["gamma"]), float(state["epsilon"])
        venv.norm_obs, venv.norm_reward = bool(state["norm_obs"]), bool(state["norm_reward"])
        venv.training = bool(state["training"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{where} is not a usable VecNormalize state ({err}); pass --retrain to start afresh"
        ) from None
    venv.returns = np.zeros(venv.num_envs)
