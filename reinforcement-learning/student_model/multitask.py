"""One student policy for several tasks (Rusu et al. 2015, multi-task policy distillation).

Per task an input layer (its observation size -> the trunk's width, behind that task's frozen
observation normalization, as in :class:`~reinforcement_learning.student_model.policy.
CompactPolicy`), one trunk every task shares, and per task a head: categorical logits, or a
Gaussian mean with a state-independent log-std for continuous actions::

    obs_t -> normalize_t -> [Linear_t, Tanh] -> ([Linear, Tanh] * (len(hidden) - 1): shared)
          -> Linear_t (+ log_std_t)

``forward(obs, task)`` returns the single-task student's keys (``logits``, or ``mean`` and
``log_std``), so the registered losses (``policy_kl``, ``gaussian_kl``) and ``select_actions``
read it unchanged; ``task_view(task)`` is a module that acts like a single-task student, so
``evaluate_returns``, ``run_episodes`` and the replay ``Collector`` take it as they are.

Saved like a single-task student: a folder of ``model.safetensors`` + ``config.json`` (the
tasks with their environment ids, sizes, action bounds and normalization, and the hidden
sizes), each written atomically; :class:`MultiTaskStudent` loads it and ``predict(obs, task)``
acts on raw observations with torch and numpy alone (no stable-baselines3, no gymnasium, no
pickles).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model
from torch import Tensor, nn

from common.domains import check_model_folder
from common.errors import CheckpointError, ConfigError, ShapeMismatchError
from common.io import atomic_write_json, save_model_atomic
from common.training import is_main_process
from reinforcement_learning.model_io import PolicyConfig, StudentPolicy
from reinforcement_learning.normalization import ObsNormalization, ObsNormalizer

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FAMILY = "multitask-mlp"


@dataclass
class TaskConfig:
    """One task of a multi-task student: what it sees and how it acts."""

    env_id: str
    """The task's name: its Gymnasium id (``forward(obs, task)`` takes it)."""
    obs_dim: int
    action_dim: int
    """Number of actions (discrete) or action dimensions (continuous)."""
    continuous: bool
    normalization: dict[str, Any]
    """:class:`ObsNormalization` as a dict: the task's teacher's frozen statistics."""
    action_low: list[float] | None = None
    action_high: list[float] | None = None

    def policy_config(self, hidden: Sequence[int]) -> PolicyConfig:
        """This task as a single-task student's config (what :class:`StudentPolicy` reads)."""
        return PolicyConfig(
            env_id=self.env_id,
            obs_dim=self.obs_dim,
            action_dim=self.action_dim,
            continuous=self.continuous,
            hidden=list(hidden),
            normalization=self.normalization,
            action_low=self.action_low,
            action_high=self.action_high,
            family=FAMILY,
        )


@dataclass
class MultiTaskConfig:
    """How to rebuild a saved multi-task student."""

    tasks: list[TaskConfig]
    hidden: list[int]
    """Width of every task's input layer, then the shared trunk's layers."""
    family: str = FAMILY
    extra: dict[str, Any] = field(default_factory=dict)


def check_hidden(hidden: Sequence[int]) -> None:
    """Refuse hidden sizes that leave nothing to share."""
    if len(hidden) < 2 or min(hidden) < 1:
        raise ConfigError(
            f"hidden sizes {list(hidden)}: give at least two sizes >= 1, the width of each "
            "task's input layer and then the shared trunk's layers, e.g. 64 64"
        )


def check_architecture(tasks: Sequence[TaskConfig], hidden: Sequence[int]) -> None:
    """Refuse task lists and sizes no multi-task student can be built from."""
    check_hidden(hidden)
    if not tasks:
        raise ConfigError("a multi-task student needs at least one task")
    names = [t.env_id for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"task {twice[0]!r} appears twice; give each environment once")


class MultiTaskPolicy(nn.Module):
    """Per-task input layers and heads around a shared trunk (see the module docstring).

    Modules are indexed by the task's position (``inputs.0``, ``heads.2``, ``log_std.2``), so
    any environment id is a valid task name.
    """

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        hidden: Sequence[int] = (64, 64),
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        check_architecture(tasks, hidden)
        self.tasks = list(tasks)
        self.hidden = [int(h) for h in hidden]
        self.index = {t.env_id: i for i, t in enumerate(self.tasks)}
        self.normalizers = nn.ModuleList(
            ObsNormalizer(ObsNormalization.from_dict(t.normalization)) for t in self.tasks
        )
        width = self.hidden[0]
        self.inputs = nn.ModuleList(
            nn.Sequential(nn.Linear(t.obs_dim, width), nn.Tanh()) for t in self.tasks
        )
        layers: list[nn.Module] = []
        for h in self.hidden[1:]:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, t.action_dim) for t in self.tasks)
        self.log_std = nn.ParameterDict(
            {
                str(i): nn.Parameter(torch.full((t.action_dim,), float(log_std_init)))
                for i, t in enumerate(self.tasks)
                if t.continuous
            }
        )

    @property
    def task_names(self) -> list[str]:
        return [t.env_id for t in self.tasks]

    def task_index(self, task: str) -> int:
        try:
            return self.index[task]
        except KeyError:
            raise ConfigError(
                f"unknown task {task!r}; this student acts in {', '.join(self.task_names)}"
            ) from None

    def forward(self, obs: Tensor, task: str) -> dict[str, Tensor]:
        i = self.task_index(task)
        cfg = self.tasks[i]
        if obs.shape[-1] != cfg.obs_dim:
            raise ShapeMismatchError(
                f"observations of shape {tuple(obs.shape)} for task {task}, which takes "
                f"{cfg.obs_dim}-dim observations"
            )
        out = self.heads[i](self.trunk(self.inputs[i](self.normalizers[i](obs))))
        if cfg.continuous:
            return {"mean": out, "log_std": self.log_std[str(i)].expand_as(out)}
        return {"logits": out}

    def task_view(self, task: str) -> TaskView:
        """A module acting like a single-task student of ``task`` (weights shared)."""
        return TaskView(self, task)

    def task_parameters(self, task: str) -> int:
        """Parameters that act for ``task``: its input layer and head, and the trunk."""
        i = self.task_index(task)
        parts = [self.inputs[i], self.trunk, self.heads[i]]
        own = sum(p.numel() for m in parts for p in m.parameters())
        return own + (self.log_std[str(i)].numel() if str(i) in self.log_std else 0)


class TaskView(nn.Module):
    """``model(obs)`` of one task of a :class:`MultiTaskPolicy`: what the single-task helpers
    (evaluation, episodes, the replay collector, ``StudentPolicy``) call. Its parameters are
    the whole policy's, so ``next(view.parameters()).device`` is the policy's device."""

    def __init__(self, policy: MultiTaskPolicy, task: str) -> None:
        super().__init__()
        policy.task_index(task)  # an unknown task fails here, not at the first step
        self.policy, self.task = policy, task
        self.continuous = policy.tasks[policy.index[task]].continuous

    def forward(self, obs: Tensor) -> dict[str, Tensor]:
        return self.policy(obs, self.task)


def build_multitask(cfg: MultiTaskConfig) -> MultiTaskPolicy:
    if cfg.family != FAMILY:
        raise CheckpointError(f"unknown policy family {cfg.family!r} in config (not {FAMILY})")
    return MultiTaskPolicy(cfg.tasks, cfg.hidden)


def save_multitask_dir(model: MultiTaskPolicy, cfg: MultiTaskConfig, directory: Path) -> Path:
    """Write weights then config, each atomically; the config's presence marks completion."""
    directory = Path(directory)
    if is_main_process():
        save_model_atomic(model, directory / WEIGHTS)
        atomic_write_json(directory / CONFIG, asdict(cfg))
    return directory


def _read_config(directory: Path) -> MultiTaskConfig:
    try:
        raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"{directory}/{CONFIG} is not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("family") != FAMILY:
        family = raw.get("family") if isinstance(raw, dict) else None
        raise CheckpointError(
            f"{directory} is not a multi-task student (family {family!r}, not {FAMILY!r}); a "
            "single-task student loads with reinforcement_learning.model_io.StudentPolicy"
        )
    try:
        tasks = [TaskConfig(**t) for t in raw.pop("tasks")]
        return MultiTaskConfig(tasks=tasks, **raw)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{directory}/{CONFIG} is not a multi-task config: {err}") from None


def load_multitask_dir(directory: Path) -> tuple[MultiTaskPolicy, MultiTaskConfig]:
    """Rebuild a saved multi-task student in eval mode; errors name the folder and the fix."""
    directory = Path(directory)
    check_model_folder(directory, "reinforcement-learning")
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise CheckpointError(
            f"{directory} is not a saved multi-task student (needs {CONFIG} and {WEIGHTS}). "
            "Make one with `python -m reinforcement_learning.scripts.distill_multitask`, or "
            "pass the model/ folder of one of its seeds."
        )
    cfg = _read_config(directory)
    try:
        model = build_multitask(cfg)
    except ConfigError as err:
        raise CheckpointError(f"{directory}/{CONFIG}: {err}") from None
    try:
        load_model(model, str(directory / WEIGHTS))
    except RuntimeError as err:
        raise CheckpointError(f"{directory}/{WEIGHTS} does not match its {CONFIG}: {err}") from None
    return model.eval(), cfg


class MultiTaskStudent:
    """A saved multi-task student ready to act: ``predict(obs, task)`` on raw observations.

    Per task it behaves as :class:`StudentPolicy` does (one observation gives one action, a
    batch gives a batch); ``for_task(task)`` is that task's :class:`StudentPolicy`, which
    ``SB3Predictor`` wraps for SB3's ``evaluate_policy``.
    """

    def __init__(self, model: MultiTaskPolicy, config: MultiTaskConfig) -> None:
        self.model, self.config = model.eval(), config
        self._policies: dict[str, StudentPolicy] = {}

    @classmethod
    def load(cls, directory: Path) -> MultiTaskStudent:
        return cls(*load_multitask_dir(directory))

    @property
    def tasks(self) -> list[str]:
        return self.model.task_names

    def for_task(self, task: str) -> StudentPolicy:
        if task not in self._policies:
            cfg = self.config.tasks[self.model.task_index(task)]
            view = self.model.task_view(task)
            self._policies[task] = StudentPolicy(view, cfg.policy_config(self.config.hidden))  # type: ignore[arg-type]
        return self._policies[task]

    def predict(
        self,
        obs: np.ndarray,
        task: str,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> np.ndarray | int:
        return self.for_task(task).predict(obs, deterministic, generator)
