"""ResNet teachers from torchvision, with the stem adapted to small images and named taps."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision import models

from common.errors import ConfigError

Stem = Literal["small", "cifar", "imagenet"]
ARCHS = ("resnet18", "resnet34", "resnet50")
TAPS = ("layer1", "layer2", "layer3", "layer4")


class TappedResNet(nn.Module):
    """A torchvision ResNet whose forward returns ``{"logits", "layer1", ..., "layer4"}``.

    Stems for 28x28/32x32 inputs (what each costs was measured on 2 CPU cores, 28x28):

    * ``"small"`` (default): 3x3 stride-2 conv, no max-pool; layer1 runs at 14x14.
    * ``"cifar"``: 3x3 stride-1 conv, no max-pool; layer1 at 28x28, about 4x the compute of
      ``small`` for little accuracy on 28x28 images.
    * ``"imagenet"``: torchvision's 7x7 stride-2 conv + max-pool; layer1 at 7x7, layer4 at 1x1.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        in_channels: int = 1,
        stem: Stem = "small",
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown teacher architecture {arch!r}; known: {', '.join(ARCHS)}")
        net = getattr(models, arch)(weights=None, num_classes=num_classes)
        if stem == "imagenet":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        elif stem in ("small", "cifar"):
            stride = 2 if stem == "small" else 1
            net.conv1 = nn.Conv2d(
                in_channels, 64, kernel_size=3, stride=stride, padding=1, bias=False
            )
            net.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {stem!r}; use 'small', 'cifar' or 'imagenet'")
        self.net = net
        self.arch, self.stem = arch, stem

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        n = self.net
        x = n.relu(n.bn1(n.conv1(images)))
        x = n.maxpool(x)
        out: dict[str, Tensor] = {}
        for name in TAPS:
            x = getattr(n, name)(x)
            out[name] = x
        out["logits"] = n.fc(torch.flatten(n.avgpool(x), 1))
        return out


class FlipAveraged(nn.Module):
    """A tapped model averaged over an image and its mirror image (test-time augmentation).

    Logits are averaged as they are; feature maps of the mirrored image are mirrored back
    first, so both views roughly agree on where things are (a stride-2 conv on an even width
    is not symmetric: the two views sit up to a pixel apart). The result is exactly invariant
    to a horizontal flip of the input, which keeps cached outputs valid for flipped images.
    Only for data whose classes survive a mirror image (clothes, CIFAR objects; not digits).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        direct, mirrored = self.model(images), self.model(images.flip(-1))
        return {
            k: (v + (mirrored[k].flip(-1) if v.dim() == 4 else mirrored[k])) / 2
            for k, v in direct.items()
        }


#: Datasets whose classes do not survive a mirror image (a mirrored 2 is not a 2).
MIRROR_UNSAFE = frozenset({"mnist"})


def flip_averaged(model: nn.Module, dataset: str) -> FlipAveraged:
    """``FlipAveraged(model)``, refused for datasets in :data:`MIRROR_UNSAFE`."""
    if dataset in MIRROR_UNSAFE:
        raise ConfigError(
            f"averaging over mirror images on {dataset}: a mirrored digit is another shape (or "
            "no digit). Leave the flip option off."
        )
    return FlipAveraged(model)
