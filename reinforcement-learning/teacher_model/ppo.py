"""PPO teachers (stable-baselines3 ``MlpPolicy``): train, save, load, and wrap for distillation.

A saved teacher is a folder::

    ppo.zip              SB3's own archive (the PPO model)
    normalization.json   frozen VecNormalize observation statistics (JSON, read by us)
    config.json          env id, spaces, hyperparameters, parameter counts (written last)

Nothing is unpickled on loading, because unpickling a file runs whatever code it names and
teachers come from users. SB3's ``PPO.load`` decodes every ``:serialized:`` (base64 cloudpickle)
entry of the zip's ``data`` JSON, so it is not used: :func:`read_sb3_zip` takes the plain JSON
entries and the torch state dicts (``weights_only=True``), and the PPO is rebuilt from our
``config.json`` (or, for a zip from elsewhere, from what its JSON and weight shapes say) on the
spaces of a freshly made environment. Training checkpoints are read the same way, with the
VecNormalize state as JSON. Files only unpickling could read are refused
(:class:`UnsafeFileError`).

:class:`TeacherPolicy` wraps the SB3 policy as an ``nn.Module`` that takes *raw* observations
and returns the same output keys as the student (``logits`` or ``mean``/``log_std``), so the
shared loop and the registered losses treat both alike.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import LinearSchedule, get_device
from stable_baselines3.common.vec_env import VecNormalize
from torch import Tensor, nn

from common.checkpoint import PREFIX, changed_settings, latest_checkpoint
from common.domains import check_model_folder
from common.errors import CheckpointError, ConfigError
from common.io import atomic_write, atomic_write_json
from reinforcement_learning.envs import SpaceSpec, check_env_id, make_env, space_spec
from reinforcement_learning.normalization import (
    ObsNormalization,
    ObsNormalizer,
    restore_vecnormalize,
    vecnormalize_state,
)
from reinforcement_learning.teacher_model.hyperparams import PPOHyperparams

TEACHER_ZIP, NORMALIZATION, CONFIG = "ppo.zip", "normalization.json", "config.json"
VECNORMALIZE = "vecnormalize.json"
"""A checkpoint's VecNormalize state, as :func:`vecnormalize_state` writes it."""
OLD_VECNORMALIZE = "vecnormalize.pkl"
"""What checkpoints held before: the pickled wrapper, refused now."""
PICKLE_SUFFIXES = (".pkl", ".pickle")


class TeacherError(CheckpointError):
    """A teacher path that does not hold a PPO model saved by stable-baselines3."""


class UnsafeFileError(CheckpointError):
    """A file that only unpickling could read. Unpickling runs whatever code the file names,
    so a model or checkpoint from anyone else could run commands: such files are refused
    without being opened."""


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
    saved model has learned from every step counted), save the model (SB3's zip, read back by
    :func:`resume_ppo` without unpickling) and the VecNormalize state (JSON) to
    ``directory/step-<n>/``. ``state.json`` is written last and marks a complete checkpoint,
    as in :mod:`common.checkpoint` (whose ``latest_checkpoint`` finds it); older ones are then
    deleted."""

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
        atomic_write_json(out / VECNORMALIZE, vecnormalize_state(env))
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


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
"""``PPOHyperparams.activation`` names and the layers they stand for."""


def net_arch_kwargs(hp: PPOHyperparams, actor: tuple[int, ...] | None = None) -> dict[str, Any]:
    """``policy_kwargs`` of our MlpPolicy: ``actor`` overrides the actor's hidden sizes (the
    critic keeps ``hp.net_arch``); activation, initialisation and the Gaussian's initial
    log-std come from ``hp`` (their defaults are SB3's)."""
    if hp.activation not in ACTIVATIONS:
        raise ConfigError(f"activation {hp.activation!r} is not one of {', '.join(ACTIVATIONS)}")
    return {
        "net_arch": {"pi": list(hp.net_arch if actor is None else actor), "vf": list(hp.net_arch)},
        "activation_fn": ACTIVATIONS[hp.activation],
        "ortho_init": hp.ortho_init,
        "log_std_init": hp.log_std_init,
    }


def _ppo_kwargs(hp: PPOHyperparams, policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    lr: Any = LinearSchedule(hp.learning_rate, 0.0, 1.0) if hp.linear_lr else hp.learning_rate
    clip: Any = LinearSchedule(hp.clip_range, 0.0, 1.0) if hp.linear_clip else hp.clip_range
    return {
        "n_steps": hp.n_steps,
        "batch_size": hp.batch_size,
        "n_epochs": hp.n_epochs,
        "gamma": hp.gamma,
        "gae_lambda": hp.gae_lambda,
        "ent_coef": hp.ent_coef,
        "vf_coef": hp.vf_coef,
        "max_grad_norm": hp.max_grad_norm,
        "learning_rate": lr,
        "clip_range": clip,
        "use_sde": hp.use_sde,
        "sde_sample_freq": hp.sde_sample_freq,
        "policy_kwargs": policy_kwargs,
        "verbose": 0,
    }


def build_ppo(
    venv: VecNormalize,
    hp: PPOHyperparams,
    seed: int,
    log_dir: Path | None,
    actor: tuple[int, ...] | None = None,
    device: str = "cpu",
) -> PPO:
    """A PPO ``MlpPolicy`` with ``hp``; ``actor`` overrides the actor's hidden sizes (the
    critic keeps ``hp.net_arch``). Logs go to ``log_dir/progress.csv``: setting the logger
    explicitly also stops SB3 from creating ``/tmp/SB3-*`` folders. ``log_dir=None`` leaves
    the logger to the caller (SB3's CSV logger truncates the file it opens)."""
    if hp.use_sde and not isinstance(venv.action_space, spaces.Box):
        raise ConfigError("use_sde (gSDE exploration) needs continuous actions; turn it off")
    model = PPO(
        "MlpPolicy", venv, **_ppo_kwargs(hp, net_arch_kwargs(hp, actor)), seed=seed, device=device
    )
    if log_dir is not None:
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
    callbacks: Sequence[BaseCallback] = (),
) -> PPORun:
    """Train PPO for ``total_timesteps`` (rounded up to whole rollouts by SB3); ``callbacks``
    run after the progress bar and checkpoint ones.

    With ``checkpoint_dir``, the model and the VecNormalize state are saved there every
    ``checkpoint_every`` environment steps, and a run that finds a checkpoint written with the
    same ``settings`` resumes from it: the step count, the learning-rate and clip schedules,
    the optimizer and the normalization statistics carry on; episodes in progress start over
    and the model is re-seeded on resume (as SB3's load does), so the result is not
    bit-identical to an uninterrupted run, and ``seconds`` counts the resumed part only."""
    start = time.perf_counter()
    venv = make_training_env(env_id, hp, seed)
    found = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if found is not None:
        model = resume_ppo(found, venv, hp, seed, settings or {}, log_dir, actor, device)
        venv = model.get_env()  # type: ignore[assignment]
        print(f"resumed from {found} ({model.num_timesteps:,} env steps done)")
    else:
        model = build_ppo(venv, hp, seed, log_dir, actor=actor, device=device)
    rollout = hp.n_envs * hp.n_steps  # SB3 stops after the rollout that passes the total
    total = rollout * math.ceil(total_timesteps / rollout)
    ours: list[BaseCallback] = []
    if progress:
        ours.append(TqdmCallback(total, desc, initial=model.num_timesteps))
    if checkpoint_dir is not None:
        ours.append(RolloutCheckpoint(checkpoint_dir, checkpoint_every, settings or {}))
    # Not resetting the count: SB3 then trains up to the same total and keeps the schedules.
    model.learn(
        total_timesteps=total_timesteps - model.num_timesteps,
        callback=[*ours, *callbacks],
        reset_num_timesteps=found is None,
    )
    venv.training = False  # freeze the statistics from here on
    return PPORun(model, venv, time.perf_counter() - start)


RESUMED_COUNTERS: dict[str, type] = {
    "num_timesteps": int,
    "_n_updates": int,
    "_episode_num": int,
    "_current_progress_remaining": float,
}
"""Plain JSON entries of SB3's ``data`` that carry training on where it stopped."""


def resume_ppo(
    checkpoint: Path,
    venv: VecNormalize,
    hp: PPOHyperparams,
    seed: int,
    settings: dict[str, Any],
    log_dir: Path,
    actor: tuple[int, ...] | None = None,
    device: str = "cpu",
) -> PPO:
    """The PPO model of a :class:`RolloutCheckpoint` on fresh copies of the environments
    (``venv``), rebuilt without unpickling; refuses a checkpoint of other settings.

    What SB3's ``PPO.load`` restored, restored here from plain data: a PPO built with the same
    settings and seed (so the same schedules), the policy and optimizer state dicts, the step,
    update and episode counters (the schedules follow the step count) and the normalization
    statistics. Not restored: the window of recent episodes SB3 logs as
    ``rollout/ep_rew_mean`` (a pickled deque); it refills within a few episodes."""
    meta = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    changed = changed_settings(meta.get("settings", {}), settings)
    if changed:
        raise CheckpointError(
            f"checkpoint {checkpoint} was written with other settings ({', '.join(changed)}); "
            "resume with the same settings, or pass --retrain to start afresh"
        )
    stats = checkpoint / VECNORMALIZE
    if not stats.is_file():
        if (checkpoint / OLD_VECNORMALIZE).exists():
            raise UnsafeFileError(
                f"{checkpoint / OLD_VECNORMALIZE}: this older checkpoint keeps its normalization "
                "statistics pickled, and unpickling can run code, so it is not read; pass "
                "--retrain to start afresh"
            )
        raise CheckpointError(f"checkpoint {checkpoint} has no {VECNORMALIZE}; pass --retrain")
    try:
        state = json.loads(stats.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{stats} is not JSON; pass --retrain to start afresh") from None
    restore_vecnormalize(venv, state, str(stats))
    retrain = "Pass --retrain to start afresh."
    archive = read_sb3_zip(checkpoint / "ppo.zip", device, optimizer=True, fix=retrain)
    model = build_ppo(venv, hp, seed, None, actor=actor, device=device)
    load_state_dict_checked(
        model.policy,
        archive.policy,
        f"{archive.path}:policy.pth",
        "the run's settings",
        retrain,
    )
    try:
        model.policy.optimizer.load_state_dict(archive.optimizer or {})
        for name, kind in RESUMED_COUNTERS.items():
            setattr(model, name, kind(archive.data[name]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{archive.path} lacks the training state to resume from ({err!r}); pass --retrain"
        ) from None
    if model.use_sde:
        model.policy.reset_noise()  # as PPO.load does: sample gSDE's matrix from the loaded std
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
    """Our config.json; empty for a zip from elsewhere."""
    env_id: str | None = None
    """The environment whose spaces the policy was built on."""

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


def _fix() -> str:
    return f"Pass the model/ folder (or its {TEACHER_ZIP}) that `{_train_command()}` wrote."


def _is_pickled(value: Any) -> bool:
    return isinstance(value, dict) and ":serialized:" in value


@dataclass
class SB3Archive:
    """What an SB3 zip holds that can be read without unpickling."""

    path: Path
    data: dict[str, Any]
    """The plain JSON entries of ``data``."""
    pickled: dict[str, dict[str, Any]]
    """The ``:serialized:`` entries' readable descriptions (type, JSON-able attributes, the
    ``str`` of the others) that SB3 writes beside the pickle; the pickle itself is dropped."""
    policy: dict[str, Any]
    optimizer: dict[str, Any] | None = None


def _read_state_dict(raw: bytes, name: str, path: Path, device: str, fix: str) -> dict[str, Any]:
    """A torch state dict with ``weights_only=True``: tensors and plain containers only, so
    a planted object is refused instead of run."""
    try:
        state = torch.load(io.BytesIO(raw), map_location=get_device(device), weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TeacherError(
            f"{path}: its {name} is not a plain torch state dict ({reason}); it is not loaded, "
            f"since anything more would need unpickling. {fix}"
        ) from None
    if not isinstance(state, dict):
        raise TeacherError(f"{path}: its {name} is not a state dict. {fix}")
    return state


def read_sb3_zip(
    path: Path, device: str = "cpu", optimizer: bool = False, fix: str | None = None
) -> SB3Archive:
    """Read a stable-baselines3 PPO zip without unpickling anything: ``data`` as JSON with
    its ``:serialized:`` (base64 cloudpickle) entries left undecoded, ``policy.pth`` (and
    with ``optimizer``, ``policy.optimizer.pth``) with ``weights_only=True``. Anything that
    is not a readable PPO archive is one :class:`TeacherError` naming the file and ``fix``
    (default: pass a teacher folder)."""
    path, fix = Path(path), fix or _fix()
    if not zipfile.is_zipfile(path):
        raise TeacherError(
            f"{path} is not a stable-baselines3 model (not a zip archive, or a truncated one). "
            + fix
        )
    wanted = ["data", "policy.pth"] + (["policy.optimizer.pth"] if optimizer else [])
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "data" not in names:
                raise TeacherError(
                    f"{path} is a zip archive but not a stable-baselines3 model (no 'data' "
                    f"entry; a truncated copy can look like this). {fix}"
                )
            raw = {name: archive.read(name) for name in wanted if name in names}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise TeacherError(f"{path} is damaged ({err}); copy it again. {fix}") from None
    try:
        data = json.loads(raw["data"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise TeacherError(f"{path}: its 'data' entry is not SB3's JSON. {fix}")
    # PPO's saved attributes; A2C, DQN, SAC... lack some of them.
    missing = [k for k in ("clip_range", "n_epochs", "gae_lambda") if k not in data]
    if missing:
        raise TeacherError(
            f"{path} is a stable-baselines3 model but not PPO (no {', '.join(missing)}); only "
            f"PPO MlpPolicy teachers are supported. {fix}"
        )
    absent = [name for name in wanted if name not in raw]
    if absent:
        raise TeacherError(f"{path} lacks {', '.join(absent)}: an incomplete SB3 model. {fix}")
    pickled = {
        k: {a: b for a, b in v.items() if a != ":serialized:"}
        for k, v in data.items()
        if _is_pickled(v)
    }
    # SB3 describes the pickled policy class by its methods: MlpPolicy's are ActorCriticPolicy's.
    init = re.match(
        r"<function (\w+)\.__init__", str(pickled.get("policy_class", {}).get("__init__"))
    )
    if init and init[1] != "ActorCriticPolicy":
        raise TeacherError(f"{path} holds a {init[1]}, not an MlpPolicy (ActorCriticPolicy)")
    return SB3Archive(
        path,
        {k: v for k, v in data.items() if not _is_pickled(v)},
        pickled,
        _read_state_dict(raw["policy.pth"], "policy.pth", path, device, fix),
        _read_state_dict(raw["policy.optimizer.pth"], "policy.optimizer.pth", path, device, fix)
        if optimizer
        else None,
    )


def load_state_dict_checked(
    module: nn.Module, state: Mapping[str, Any], where: str, fits: str, fix: str
) -> None:
    """Load ``state`` into ``module`` strictly. A mismatch is one :class:`TeacherError` naming
    ``where``, what it should fit, the first differences (not torch's multi-line report) and
    ``fix``."""
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    for key, want in expected.items():
        got = state.get(key, want)
        if not torch.is_tensor(got):
            problems.append(f"{key} is a {type(got).__name__}, not a tensor")
        elif got.shape != want.shape:
            problems.append(f"{key} is {tuple(got.shape)}, expected {tuple(want.shape)}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise TeacherError(f"{where} does not fit {fits} ({'; '.join(problems[:3])}{more}). {fix}")
    module.load_state_dict(state, strict=True)


# PPO settings taken from a zip from elsewhere. Not n_envs, n_steps, batch_size: they size the
# rollout buffer allocated on building (unused for acting), which a file should not choose.
_PPO_FIELDS = (
    "n_epochs", "gamma", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm", "learning_rate",
    "use_sde", "sde_sample_freq",
)  # fmt: skip
# What it may set in policy_kwargs, read from SB3's JSON (never from the pickle): the hidden
# sizes come from the weights, these few options change how it acts.
_POLICY_FLAGS = ("full_std", "use_expln", "squash_output", "share_features_extractor")
_SETUP_ONLY = ("net_arch", "ortho_init", "log_std_init", "optimizer_class", "optimizer_kwargs")
_ACTIVATIONS = ("Tanh", "ReLU", "ELU", "LeakyReLU", "GELU", "SiLU")
_ACTIVATION = re.compile(rf"<class 'torch\.nn\.modules\.activation\.({'|'.join(_ACTIVATIONS)})'>")
_FLATTEN = "<class 'stable_baselines3.common.torch_layers.FlattenExtractor'>"


def _hidden_sizes(state: Mapping[str, Any], net: str) -> list[int]:
    """Hidden sizes of SB3's ``mlp_extractor.<net>``, from its Linear layers' weight shapes."""
    layers = {
        int(m[1]): t
        for k, t in state.items()
        if (m := re.fullmatch(rf"mlp_extractor\.{net}\.(\d+)\.weight", str(k)))
        and torch.is_tensor(t)
    }
    return [int(layers[i].shape[0]) for i in sorted(layers)]


def _inferred_settings(archive: SB3Archive) -> tuple[PPOHyperparams, dict[str, Any]]:
    """Settings of a PPO zip we did not write: PPO's numbers from its plain JSON, the hidden
    sizes from the weights, the activation and policy options from the JSON description SB3
    writes beside pickled ``policy_kwargs``. Refuses what these cannot rebuild."""
    data = archive.data
    hp = PPOHyperparams(**{k: data[k] for k in _PPO_FIELDS if isinstance(data.get(k), int | float)})
    kwargs: dict[str, Any] = {
        "net_arch": {
            "pi": _hidden_sizes(archive.policy, "policy_net"),
            "vf": _hidden_sizes(archive.policy, "value_net"),
        }
    }
    raw = data.get("policy_kwargs") or archive.pickled.get("policy_kwargs") or {}
    unsupported = []
    for key, value in raw.items() if isinstance(raw, dict) else [("policy_kwargs", raw)]:
        if key.startswith(":") or key in _SETUP_ONLY:
            continue
        if key in _POLICY_FLAGS and isinstance(value, bool):
            kwargs[key] = value
        elif key == "activation_fn" and (m := _ACTIVATION.fullmatch(str(value))):
            kwargs[key] = getattr(nn, m[1])
        elif not (key == "features_extractor_class" and value == _FLATTEN) and not (
            key == "features_extractor_kwargs" and not value
        ):
            unsupported.append(f"{key}={value}")
    if unsupported:
        raise TeacherError(
            f"{archive.path}: its policy_kwargs ({'; '.join(unsupported)}) cannot be rebuilt "
            f"without unpickling; supported: MlpPolicy with a {'/'.join(_ACTIVATIONS)} "
            f"activation. Train a teacher with `{_train_command()}`."
        )
    return hp, kwargs


def _ppo_on_spaces(
    observation_space: spaces.Space,
    action_space: spaces.Space,
    hp: PPOHyperparams,
    policy_kwargs: dict[str, Any],
    seed: int | None,
    device: str,
    where: Path,
) -> PPO:
    """A PPO without environments, built as ``PPO.load`` builds one when given none: acting
    needs only the spaces. ``seed`` re-seeds the global RNGs, as ``PPO.load`` did with the
    saved seed, so loading a teacher keeps the side effects it always had."""
    try:
        model = PPO(
            "MlpPolicy",
            None,  # type: ignore[arg-type]
            **_ppo_kwargs(hp, policy_kwargs),
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        model.observation_space, model.action_space = observation_space, action_space
        model.n_envs = hp.n_envs
        model._setup_model()
    except Exception as err:  # SB3 and torch raise many kinds for settings they cannot build
        raise TeacherError(
            f"{where}: could not build a PPO MlpPolicy from its settings ({err})"
        ) from None
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise TeacherError(f"{path} is not a JSON object; copy it again or retrain")
    return data


def _recorded_hyperparams(config: dict[str, Any], where: Path) -> PPOHyperparams:
    raw: Any = config.get("hyperparams")
    try:
        return PPOHyperparams(**{**raw, "net_arch": tuple(raw["net_arch"])})
    except (TypeError, KeyError) as err:
        raise TeacherError(
            f"{where}: its hyperparams are not this version's ({err}); retrain with "
            f"`{_train_command(config.get('env_id'))} --retrain`"
        ) from None


def _env_spaces(env_id: str) -> tuple[spaces.Space, spaces.Space]:
    env = make_env(env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _read_normalization(folder: Path, spec: SpaceSpec, zip_path: Path) -> ObsNormalization:
    if (folder / NORMALIZATION).is_file():
        normalization = ObsNormalization.from_dict(_read_json(folder / NORMALIZATION))
    elif (folder / OLD_VECNORMALIZE).exists():
        raise UnsafeFileError(
            f"{folder / OLD_VECNORMALIZE}: the observation statistics beside {zip_path.name} are "
            "pickled, and unpickling can run code, so they are not read (without them the "
            f"teacher would see unnormalized observations); write them as {NORMALIZATION} "
            "(ObsNormalization.to_dict) where you trust the file, or train a teacher with "
            f"`{_train_command()}`"
        )
    else:
        normalization = ObsNormalization.identity(spec.obs_dim)
    if normalization.obs_dim != spec.obs_dim:
        raise TeacherError(
            f"{folder / NORMALIZATION} has statistics for {normalization.obs_dim} observation "
            f"dims, the model in {zip_path} takes {spec.obs_dim}: the files belong to different "
            "teachers. Re-train or copy the matching file."
        )
    return normalization


def load_teacher(path: Path, device: str = "cpu", env_id: str | None = None) -> Teacher:
    """Load a teacher folder (or a ``ppo.zip`` with the optional JSON files beside it) without
    unpickling anything (see the module docstring).

    With our ``config.json`` beside the zip, the policy is built from its hyperparameters on
    the spaces of its environment; without one (a PPO zip from elsewhere), ``env_id`` names
    the environment and the architecture comes from the weights' shapes and the zip's JSON.
    Either way the weights must fit exactly."""
    path = Path(path)
    if path.is_dir():
        check_model_folder(path, "reinforcement-learning")
    if path.suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{path} is a pickle, and unpickling can run code, so it is not loaded; pass the "
            f"model/ folder (ppo.zip and JSON files) that `{_train_command()}` wrote"
        )
    zip_path = path / TEACHER_ZIP if path.is_dir() else path
    if not zip_path.is_file():
        raise TeacherError(
            f"no PPO teacher at {zip_path}. Train one first with `{_train_command()}`, or pass "
            "the model/ folder it wrote."
        )
    archive = read_sb3_zip(zip_path, device)
    folder = zip_path.parent
    config = _read_json(folder / CONFIG) if (folder / CONFIG).is_file() else {}
    if config.get("family") != "ppo":
        config = {}  # not ours (a student's, or none): treat the zip as one from elsewhere
    env_id = config.get("env_id") or env_id
    if env_id is None:
        raise TeacherError(
            f"{zip_path} has no {CONFIG} beside it (train_teacher writes one), so the "
            "environment it acts in is unknown; pass its environment id (--env-id)"
        )
    observation_space, action_space = _env_spaces(env_id)
    spec = space_spec(observation_space, action_space)
    if config:
        hp = _recorded_hyperparams(config, folder / CONFIG)
        policy_kwargs = net_arch_kwargs(hp)
        fits = f"the policy its {CONFIG} describes (net_arch {list(hp.net_arch)} on {env_id})"
        fix = "The files belong to different teachers: copy the matching ones, or retrain."
    else:
        hp, policy_kwargs = _inferred_settings(archive)
        fits = f"an MlpPolicy on {env_id} ({spec.describe()})"
        fix = "Pass the environment it was trained on (--env-id)."
    if hp.use_sde and not spec.continuous:
        raise TeacherError(
            f"{zip_path}: its policy uses gSDE, for continuous actions; {env_id} has discrete "
            f"ones. {fix}"
        )
    seed = archive.data.get("seed")
    model = _ppo_on_spaces(
        observation_space,
        action_space,
        hp,
        policy_kwargs,
        seed if isinstance(seed, int) else None,
        device,
        zip_path,
    )
    load_state_dict_checked(model.policy, archive.policy, f"{zip_path}:policy.pth", fits, fix)
    if model.use_sde:
        model.policy.reset_noise()  # as PPO.load does: sample gSDE's matrix from the loaded std
    normalization = _read_normalization(folder, spec, zip_path)
    policy = model.policy.eval()
    policy.requires_grad_(False)
    return Teacher(
        model, TeacherPolicy(policy, normalization), normalization, spec, zip_path, config, env_id
    )
