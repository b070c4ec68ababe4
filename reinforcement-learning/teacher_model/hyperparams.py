"""Per-environment settings: PPO teacher hyperparameters, student size and distillation budget.

PPO values are rl-baselines3-zoo's tuned ones (``hyperparams/ppo.yml``; LunarLander-v3 and
LunarLanderContinuous-v3 use the zoo's -v2 entries, the tasks are the same up to simulator
details), with SB3's defaults where the zoo sets nothing. The MuJoCo tasks are the exception: with the zoo's settings (discount 0.999)
two Hopper-v5 seeds learned to stand still for the healthy reward (1014 of the zoo's 2410,
docs/measured.md), and the zoo's HalfCheetah (ReLU 256x256, 20 epochs of batch 64) and
Walker2d (20 epochs of batch 32) settings run at 250-460 env steps/s on one core, over an
hour per teacher. All three use the PPO paper's MuJoCo settings instead (Schulman et al. 2017,
as in OpenAI baselines' ppo2: 64x64 tanh, 2048-step rollouts, 10 epochs of batch 64, discount
0.99, learning rate 3e-4 decaying to 0; about 1000 env steps/s here), which made a hopping
Hopper teacher (3351.6, docs/measured.md).
One deliberate change: observations are normalized (``VecNormalize``) for every environment,
because the issue's design saves those statistics with the teacher and feeds them to the
student; the zoo normalizes only Acrobot (rewards too, which we keep there).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PPOHyperparams:
    """Arguments of ``stable_baselines3.PPO`` plus the environment wrapping."""

    n_envs: int = 1
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    learning_rate: float = 3e-4
    linear_lr: bool = False
    """Decay the learning rate linearly to 0 over training (the zoo's ``lin_`` prefix)."""
    clip_range: float = 0.2
    linear_clip: bool = False
    use_sde: bool = False
    """Generalized state-dependent exploration (continuous actions only)."""
    sde_sample_freq: int = -1
    normalize_obs: bool = True
    normalize_reward: bool = False
    total_timesteps: int = 1_000_000
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden sizes of the actor and of the critic (SB3's MlpPolicy default)."""
    activation: str = "tanh"
    """Hidden-layer activation of actor and critic: "tanh" (SB3's default) or "relu"."""
    ortho_init: bool = True
    """Orthogonal initialisation of the layers (SB3's default)."""
    log_std_init: float = 0.0
    """Initial log standard deviation of a Gaussian policy (continuous actions)."""


@dataclass(frozen=True)
class EnvSettings:
    """Everything that differs per environment."""

    ppo: PPOHyperparams = field(default_factory=PPOHyperparams)
    student_hidden: tuple[int, ...] = (32,)
    """Student hidden sizes: one small layer keeps it under 1/10 of the teacher's actor."""
    rounds: int = 10
    """Distillation rounds (collect states, then train on the replay buffer)."""
    steps_per_round: int = 10_000
    """Environment steps collected per round."""
    train_steps_per_round: int = 500
    """Distillation optimizer steps on the replay buffer after each round's collection."""
    val_episodes: int = 5
    """Validation episodes after each round (the learning curve; --select-best picks by it)."""
    lr_decay: bool = False
    """Decay the distillation learning rate along a cosine to 0 over all rounds."""
    solved: float | None = None
    """The usual "solved" return, for reports only."""


# MuJoCo locomotion (gymnasium[mujoco], mujoco 3.9): the PPO paper's settings, one env,
# observations and rewards normalized.
_PPO_PAPER_MUJOCO = dict(
    n_envs=1,
    n_steps=2048,
    batch_size=64,
    n_epochs=10,
    gamma=0.99,
    gae_lambda=0.95,
    learning_rate=3e-4,
    linear_lr=True,
    clip_range=0.2,
    normalize_reward=True,
)


# LunarLander, discrete and continuous: the zoo's one entry for both (-v2).
_LUNAR_LANDER = EnvSettings(
    ppo=PPOHyperparams(
        n_envs=16,
        n_steps=1024,
        batch_size=64,
        n_epochs=4,
        gamma=0.999,
        gae_lambda=0.98,
        ent_coef=0.01,
        total_timesteps=1_000_000,
    ),
    student_hidden=(32,),
    rounds=20,
    steps_per_round=10_000,
    solved=200.0,
)


ENV_TABLE: dict[str, EnvSettings] = {
    "CartPole-v1": EnvSettings(
        ppo=PPOHyperparams(
            n_envs=8,
            n_steps=32,
            batch_size=256,
            n_epochs=20,
            gamma=0.98,
            gae_lambda=0.8,
            learning_rate=1e-3,
            linear_lr=True,
            clip_range=0.2,
            linear_clip=True,
            total_timesteps=100_000,
        ),
        student_hidden=(16,),
        rounds=10,
        steps_per_round=2_000,
        solved=475.0,
    ),
    "LunarLander-v3": _LUNAR_LANDER,
    "LunarLanderContinuous-v3": _LUNAR_LANDER,
    "Acrobot-v1": EnvSettings(
        ppo=PPOHyperparams(
            n_envs=16,
            n_steps=256,
            n_epochs=4,
            gamma=0.99,
            gae_lambda=0.94,
            normalize_reward=True,
            total_timesteps=1_000_000,
        ),
        student_hidden=(16,),
        rounds=10,
        steps_per_round=5_000,
        solved=-100.0,
    ),
    "Pendulum-v1": EnvSettings(
        ppo=PPOHyperparams(
            n_envs=4,
            n_steps=1024,
            n_epochs=10,
            gamma=0.9,
            gae_lambda=0.95,
            learning_rate=1e-3,
            clip_range=0.2,
            use_sde=True,
            sde_sample_freq=4,
            total_timesteps=100_000,
        ),
        student_hidden=(16,),
        rounds=10,
        steps_per_round=5_000,
        solved=-200.0,
    ),
    "Hopper-v5": EnvSettings(
        ppo=PPOHyperparams(**_PPO_PAPER_MUJOCO, total_timesteps=1_500_000),
        student_hidden=(16,),
        rounds=10,
        steps_per_round=5_000,
    ),
    "HalfCheetah-v5": EnvSettings(
        ppo=PPOHyperparams(**_PPO_PAPER_MUJOCO, total_timesteps=1_000_000),
        student_hidden=(16,),
        rounds=10,
        steps_per_round=5_000,
    ),
    # Walker2d: two 14-unit layers (558 parameters, 9.8% of the actor), fitted longer each
    # round under a cosine decay, the round chosen on 10 episodes (docs/measured.md).
    "Walker2d-v5": EnvSettings(
        ppo=PPOHyperparams(**_PPO_PAPER_MUJOCO, total_timesteps=1_000_000),
        student_hidden=(14, 14),
        rounds=20,
        steps_per_round=5_000,
        train_steps_per_round=2_000,
        val_episodes=10,
        lr_decay=True,
    ),
}


def env_settings(env_id: str) -> EnvSettings:
    """The table's settings, or SB3's PPO defaults (and a 32-unit student) for other ids."""
    return ENV_TABLE.get(env_id, EnvSettings())


def with_overrides(hp: PPOHyperparams, **changes: object) -> PPOHyperparams:
    """``hp`` with the non-None ``changes`` applied (CLI overrides)."""
    return replace(hp, **{k: v for k, v in changes.items() if v is not None})
