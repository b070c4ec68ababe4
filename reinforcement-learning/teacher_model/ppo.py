"""PPO teachers (stable-baselines3 ``MlpPolicy``): train, save, load, and wrap for distillation.

A saved teacher is a folder::

    ppo.zip              SB3's own archive (the PPO model)
    normalization.json   frozen VecNormalize observation statistics (JSON, read by us)
    config.json          env id, spaces, hyperparameters, parameter counts (written last)

:class:`TeacherPolicy` wraps the SB3 policy as an ``nn.Module`` that takes *raw* observations
and returns the same output keys as the student (``logits`` or ``mean``/``log_std``), so the
shared loop and the registered losses treat both alike.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize
from torch import Tensor, nn

from common.checkpoint import PREFIX, changed_settings, latest_checkpoint
from common.errors import CheckpointError, ConfigError
from common.io import atomic_write, atomic_write_json
from reinforcement_learning.envs import SpaceSpec, check_env_id, space_spec
from reinforcement_learning.normalization import ObsNormalization, ObsNormalizer
from reinforcement_learning.teacher_model.hyperparams import PPOHyperparams

TEACHER_ZIP, NORMALIZATION, CONFIG = "ppo.zip", "normalization.json", "config.json"


class TeacherError(CheckpointError):
    """A teacher path that does not hold a PPO model saved by stable-baselines3."""


def _train_command(env_id: str | None = None) -> str:
    env = f" --env-id {env_id}" if env_id else ""
    return f"python -m reinforcement_learning.scripts.train_teacher{env}"


class TqdmCallback(BaseCallback):
    """A tqdm bar over environment steps with the mean return of recent episodes."""

    def __init__(self, total: int, desc: str, initial: int = 0) -> None:
        super().__init__()
        self.total, self.desc, self.initial = total, desc, initial
        self.bar: Any = None

    def _on_training_start(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total,
            initial=self.initial,
            desc=self.desc,
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
        )

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        episodes = self.model.ep_info_buffer
        if episodes:
            self.bar.set_postfix(
                return_=f"{np.mean([e['r'] for e in episodes]):.1f}", refresh=False
            )

    def _on_training_end(self) -> None:
        self.bar.close()


class RolloutCheckpoint(BaseCallback):
    """Every ``every_steps`` environment steps, between rollouts (after PPO's update, so the
    saved model has learned from every step counted), save the model and the VecNormalize
    state to ``directory/step-<n>/``. ``state.json`` is written last and marks a complete
    checkpoint, as in :mod:`common.checkpoint` (whose ``latest_checkpoint`` finds it); older
    ones are then deleted."""

    def __init__(self, directory: Path, every_steps: int, settings: dict[str, Any]) -> None:
        super().__init__()
        self.directory, self.every, self.settings = Path(directory), every_steps, settings
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self.last >= self.every:
            self.save()

    def _on_step(self) -> bool:
        return True

    def save(self) -> Path:
        out = self.directory / f"{PREFIX}{self.num_timesteps:09d}"
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "ppo.zip") as f:
            self.model.save(f)
        env = self.model.get_env()
        assert isinstance(env, VecNormalize)
        with atomic_write(out / "vecnormalize.pkl") as f:
            pickle.dump(env, f)  # VecNormalize's own format (it leaves out the wrapped envs)
        atomic_write_json(
            out / "state.json", {"num_timesteps": self.num_timesteps, "settings": self.settings}
        )
        for old in self.directory.glob(f"{PREFIX}*"):
            if old != out:
                shutil.rmtree(old, ignore_errors=True)
        self.last = self.num_timesteps
        return out


def make_training_env(env_id: str, hp: PPOHyperparams, seed: int) -> VecNormalize:
    """``hp.n_envs`` monitored copies of the environment (env ``i`` seeded ``seed + i``) under
    ``VecNormalize``; with both normalizations off it only records statistics."""
    check_env_id(env_id)
    venv = make_vec_env(env_id, n_envs=hp.n_envs, seed=seed)
    space_spec(venv.observation_space, venv.action_space)  # refuse unsupported spaces early
    return VecNormalize(
        venv, norm_obs=hp.normalize_obs, norm_reward=hp.normalize_reward, gamma=hp.gamma
    )


def build_ppo(
    venv: VecNormalize,
    hp: PPOHyperparams,
    seed: int,
    log_dir: Path,
    actor: tuple[int, ...] | None = None,
    device: str = "cpu",
) -> PPO:
    """A PPO ``MlpPolicy`` with ``hp``; ``actor`` overrides the actor's hidden sizes (the
    critic keeps ``hp.net_arch``). Logs go to ``log_dir/progress.csv``: setting the logger
    explicitly also stops SB3 from creating ``/tmp/SB3-*`` folders."""
    if hp.use_sde and not isinstance(venv.action_space, spaces.Box):
        raise ConfigError("use_sde (gSDE exploration) needs continuous actions; turn it off")
    lr: Any = LinearSchedule(hp.learning_rate, 0.0, 1.0) if hp.linear_lr else hp.learning_rate
    clip: Any = LinearSchedule(hp.clip_range, 0.0, 1.0) if hp.linear_clip else hp.clip_range
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=hp.n_steps,
        batch_size=hp.batch_size,
        n_epochs=hp.n_epochs,
        gamma=hp.gamma,
        gae_lambda=hp.gae_lambda,
        ent_coef=hp.ent_coef,
        vf_coef=hp.vf_coef,
        max_grad_norm=hp.max_grad_norm,
        learning_rate=lr,
        clip_range=clip,
        use_sde=hp.use_sde,
        sde_sample_freq=hp.sde_sample_freq,
        policy_kwargs={"net_arch": {"pi": list(actor or hp.net_arch), "vf": list(hp.net_arch)}},
        seed=seed,
        device=device,
        verbose=0,
    )
    model.set_logger(configure(str(log_dir), ["csv"]))
    return model


@dataclass
class PPORun:
    """A finished PPO training run."""

    model: PPO
    venv: VecNormalize
    seconds: float

    @property
    def normalization(self) -> ObsNormalization:
        return ObsNormalization.from_vecnormalize(self.venv)

    def budget(self) -> dict[str, int]:
        """Environment steps, PPO epochs and gradient steps consumed."""
        m = self.model
        per_epoch = math.ceil(m.n_steps * m.n_envs / m.batch_size)
        return {
            "env_steps": int(m.num_timesteps),
            "epochs": int(m._n_updates),
            "steps": int(m._n_updates) * per_epoch,
        }


def train_ppo(
    env_id: str,
    hp: PPOHyperparams,
    total_timesteps: int,
    seed: int,
    log_dir: Path,
    actor: tuple[int, ...] | None = None,
    device: str = "cpu",
    desc: str = "ppo",
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 100_000,
    settings: dict[str, Any] | None = None,
) -> PPORun:
    """Train PPO for ``total_timesteps`` (rounded up to whole rollouts by SB3).

    With ``checkpoint_dir``, the model and the VecNormalize state are saved there every
    ``checkpoint_every`` environment steps, and a run that finds a checkpoint written with the
    same ``settings`` resumes from it: the step count, the learning-rate and clip schedules,
    the optimizer and the normalization statistics carry on; episodes in progress start over
    and SB3 re-seeds on load, so the result is not bit-identical to an uninterrupted run, and
    ``seconds`` counts the resumed part only."""
    start = time.perf_counter()
    venv = make_training_env(env_id, hp, seed)
    found = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if found is not None:
        model = resume_ppo(found, venv, settings or {}, log_dir, device)
        venv = model.get_env()  # type: ignore[assignment]
        print(f"resumed from {found} ({model.num_timesteps:,} env steps done)")
    else:
        model = build_ppo(venv, hp, seed, log_dir, actor=actor, device=device)
    rollout = hp.n_envs * hp.n_steps  # SB3 stops after the rollout that passes the total
    total = rollout * math.ceil(total_timesteps / rollout)
    callbacks: list[BaseCallback] = []
    if progress:
        callbacks.append(TqdmCallback(total, desc, initial=model.num_timesteps))
    if checkpoint_dir is not None:
        callbacks.append(RolloutCheckpoint(checkpoint_dir, checkpoint_every, settings or {}))
    # Not resetting the count: SB3 then trains up to the same total and keeps the schedules.
    model.learn(
        total_timesteps=total_timesteps - model.num_timesteps,
        callback=callbacks,
        reset_num_timesteps=found is None,
    )
    venv.training = False  # freeze the statistics from here on
    return PPORun(model, venv, time.perf_counter() - start)


def resume_ppo(
    checkpoint: Path, venv: VecNormalize, settings: dict[str, Any], log_dir: Path, device: str
) -> PPO:
    """The PPO model of a :class:`RolloutCheckpoint`, on fresh copies of the environments
    with the saved normalization statistics; refuses a checkpoint of other settings."""
    import pickle

    meta = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    changed = changed_settings(meta.get("settings", {}), settings)
    if changed:
        raise CheckpointError(
            f"checkpoint {checkpoint} was written with other settings ({', '.join(changed)}); "
            "resume with the same settings, or pass --retrain to start afresh"
        )
    with open(checkpoint / "vecnormalize.pkl", "rb") as f:
        saved_norm: VecNormalize = pickle.load(f)  # our own file, written by RolloutCheckpoint
    saved_norm.set_venv(venv.venv)
    model = PPO.load(checkpoint / "ppo.zip", env=saved_norm, device=device)
    # A folder of its own: SB3's CSV logger truncates progress.csv on open.
    model.set_logger(configure(str(log_dir / f"resumed-at-{model.num_timesteps}"), ["csv"]))
    return model


def actor_parameters(policy: ActorCriticPolicy) -> int:
    """Parameters of the part of the policy that acts: features, actor MLP, action head and
    log-std (the critic is only needed for training)."""
    params: dict[int, nn.Parameter] = {}
    for module in (
        policy.pi_features_extractor,
        policy.mlp_extractor.policy_net,
        policy.action_net,
    ):
        params.update({id(p): p for p in module.parameters()})
    log_std = getattr(policy, "log_std", None)
    if isinstance(log_std, nn.Parameter):
        params[id(log_std)] = log_std
    return sum(p.numel() for p in params.values())


class TeacherPolicy(nn.Module):
    """An SB3 actor-critic policy as a distillation teacher on raw observations.

    Outputs the action distribution's parameters: ``logits`` (Categorical, normalized to
    log-probabilities) or ``mean``/``log_std`` of the Gaussian. With gSDE the std depends on
    the state; it is read from the distribution, so the loss sees what the teacher samples.
    """

    def __init__(self, policy: ActorCriticPolicy, normalization: ObsNormalization) -> None:
        super().__init__()
        self.policy = policy
        self.normalizer = ObsNormalizer(normalization)
        self.spec = space_spec(policy.observation_space, policy.action_space)

    def forward(self, obs: Tensor) -> dict[str, Tensor]:
        dist = self.policy.get_distribution(self.normalizer(obs)).distribution
        if self.spec.continuous:
            return {"mean": dist.loc, "log_std": dist.scale.log()}
        return {"logits": dist.logits}


@dataclass
class Teacher:
    """A loaded teacher: the SB3 model, its wrapper, statistics and saved settings."""

    model: PPO
    policy: TeacherPolicy
    normalization: ObsNormalization
    spec: SpaceSpec
    path: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def env_id(self) -> str | None:
        return self.config.get("env_id")

    @property
    def actor_params(self) -> int:
        return actor_parameters(self.model.policy)


def save_teacher(run: PPORun, directory: Path, env_id: str, hp: PPOHyperparams, seed: int) -> Path:
    """Write ``ppo.zip``, ``normalization.json`` and (last, marking completion) ``config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / TEACHER_ZIP) as f:
        run.model.save(f)
    atomic_write_json(directory / NORMALIZATION, run.normalization.to_dict())
    spec = space_spec(run.model.observation_space, run.model.action_space)
    policy = run.model.policy
    atomic_write_json(
        directory / CONFIG,
        {
            "family": "ppo",
            "env_id": env_id,
            "seed": seed,
            "spaces": asdict(spec),
            "hyperparams": asdict(hp),
            "actor_params": actor_parameters(policy),
            "total_params": sum(p.numel() for p in policy.parameters()),
            "budget": run.budget(),
        },
    )
    return directory


def check_ppo_zip(path: Path) -> None:
    """Refuse anything but an SB3 PPO archive, before SB3 fails with a less helpful error."""
    fix = f"Pass the model/ folder (or its {TEACHER_ZIP}) that `{_train_command()}` wrote."
    if not zipfile.is_zipfile(path):
        raise TeacherError(f"{path} is not a stable-baselines3 model (not a zip archive). {fix}")
    with zipfile.ZipFile(path) as archive:
        if "data" not in archive.namelist():
            raise TeacherError(f"{path} is a zip archive but not a stable-baselines3 model. {fix}")
        try:
            data = json.loads(archive.read("data"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TeacherError(f"{path}: its 'data' entry is not SB3's JSON. {fix}") from None
    # PPO's saved attributes; A2C, DQN, SAC... lack some of them.
    missing = [k for k in ("clip_range", "n_epochs", "gae_lambda") if k not in data]
    if missing:
        raise TeacherError(
            f"{path} is a stable-baselines3 model but not PPO (no {', '.join(missing)}); only "
            f"PPO MlpPolicy teachers are supported. {fix}"
        )


def load_teacher(path: Path, device: str = "cpu") -> Teacher:
    """Load a teacher folder (or a ``ppo.zip`` with the optional JSON files beside it)."""
    path = Path(path)
    zip_path = path / TEACHER_ZIP if path.is_dir() else path
    if not zip_path.is_file():
        raise TeacherError(
            f"no PPO teacher at {zip_path}. Train one first with `{_train_command()}`, or pass "
            "the model/ folder it wrote."
        )
    check_ppo_zip(zip_path)
    folder = zip_path.parent
    # Schedules are pickled closures: not needed to act, and loading them can fail across
    # Python versions, so they are replaced (as rl-zoo does when enjoying a model).
    custom = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}
    try:
        model = PPO.load(zip_path, device=device, custom_objects=custom)
    except Exception as err:  # SB3 raises many kinds; all mean "not loadable"
        raise TeacherError(f"{zip_path} could not be loaded as a PPO model: {err}") from None
    if not isinstance(model.policy, ActorCriticPolicy):
        raise TeacherError(f"{zip_path} holds a {type(model.policy).__name__}, not an MlpPolicy")
    spec = space_spec(model.observation_space, model.action_space)
    config: dict[str, Any] = {}
    if (folder / CONFIG).is_file():
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    if (folder / NORMALIZATION).is_file():
        normalization = ObsNormalization.from_dict(
            json.loads((folder / NORMALIZATION).read_text(encoding="utf-8"))
        )
    else:
        normalization = ObsNormalization.identity(spec.obs_dim)
    if normalization.obs_dim != spec.obs_dim:
        raise TeacherError(
            f"{folder / NORMALIZATION} has statistics for {normalization.obs_dim} observation "
            f"dims, the model in {zip_path} takes {spec.obs_dim}: the files belong to different "
            "teachers. Re-train or copy the matching file."
        )
    policy = model.policy.eval()
    policy.requires_grad_(False)
    return Teacher(
        model, TeacherPolicy(policy, normalization), normalization, spec, zip_path, config
    )
