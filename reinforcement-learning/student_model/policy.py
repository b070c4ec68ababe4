"""The compact student: a small tanh MLP on raw observations (normalization inside).

Its outputs use the same keys as the teacher wrapper, so the registered losses read both:
``{"logits"}`` for discrete actions (``policy_kl``), ``{"mean", "log_std"}`` for continuous
ones (``gaussian_kl``; one state-independent log-std vector, as in SB3's PPO).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from reinforcement_learning.normalization import ObsNormalization, ObsNormalizer


class CompactPolicy(nn.Module):
    """``obs -> normalize -> [Linear, Tanh] * len(hidden) -> Linear``.

    The body has the layout of SB3's ``mlp_extractor.policy_net`` and the head that of its
    ``action_net``, so a PPO actor of the same sizes copies in weight for weight (the "none"
    baseline is trained that way).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (32,),
        continuous: bool = False,
        normalization: ObsNormalization | None = None,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.continuous = continuous
        self.normalizer = ObsNormalizer(normalization or ObsNormalization.identity(obs_dim))
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, action_dim)
        if continuous:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, obs: Tensor) -> dict[str, Tensor]:
        out = self.head(self.body(self.normalizer(obs)))
        if self.continuous:
            return {"mean": out, "log_std": self.log_std.expand_as(out)}
        return {"logits": out}


def select_actions(
    outputs: Mapping[str, Tensor],
    deterministic: bool = True,
    generator: torch.Generator | None = None,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> np.ndarray:
    """Actions from a policy's outputs (student or teacher wrapper alike).

    Discrete: argmax, or a sample of the softmax. Continuous: the mean, or mean + std * noise,
    clipped to the action bounds as SB3 does for an unsquashed Gaussian.
    """
    if "logits" in outputs:
        logits = outputs["logits"]
        if deterministic:
            return logits.argmax(-1).cpu().numpy()
        probs = torch.softmax(logits.float(), -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).cpu().numpy()
    mean = outputs["mean"]
    if not deterministic:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        mean = mean + outputs["log_std"].exp() * noise
    actions = mean.cpu().numpy().astype(np.float32)
    if low is not None and high is not None:
        actions = np.clip(actions, np.asarray(low, np.float32), np.asarray(high, np.float32))
    return actions
