"""Small CNN students with named taps at the resolutions of the ResNet teacher's layers."""

from __future__ import annotations

from torch import Tensor, nn

#: Named sizes: channel widths of the three stages. Parameters (1 channel, 10 classes),
#: multiply-accumulates per 28x28 image, and training speed on 2 CPU cores (batch 128):
#: tiny 9k / 1.0M MACs; small 33k / 3.7M / ~2,500 img/s (the default: 1/335 of resnet18's
#: parameters, 1/9 of its MACs with the imagenet stem); medium 131k / 14.6M / ~1,000 img/s.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (8, 16, 32),
    "small": (16, 32, 64),
    "medium": (32, 64, 128),
}
TAPS = ("stage1", "stage2", "stage3")


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Three conv stages; forward returns ``{"logits", "stage1", "stage2", "stage3"}``.

    On 28x28 inputs: stage1 is 14x14 (matches the teacher's layer1 with the ``small`` stem),
    stage2 and stage3 are 7x7 (match layer2).
    """

    def __init__(self, size: str = "small", num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown student size {size!r}; known: {', '.join(SIZES)}")
        c1, c2, c3 = SIZES[size]
        self.size = size
        # One conv at full resolution: at 28x28 each conv costs 4x one at 14x14, and the
        # student's speed is the point of it.
        self.stage1 = nn.Sequential(*_conv(in_channels, c1), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(*_conv(c1, c2), *_conv(c2, c2), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(*_conv(c2, c3))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, num_classes))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        s1 = self.stage1(images)
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        return {"stage1": s1, "stage2": s2, "stage3": s3, "logits": self.head(s3)}
