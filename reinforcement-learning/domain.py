"""This domain's record in the domain registry (see :mod:`common.domains`)."""

from common.domains import Domain

DOMAIN = Domain(
    name="reinforcement-learning",
    teacher_script="reinforcement_learning.scripts.train_teacher",
    distill_script="reinforcement_learning.scripts.distill",
    config_keys=("obs_dim", "action_dim"),
    marker_files=("ppo.zip",),
    summary="PPO teacher -> compact policy",
)
