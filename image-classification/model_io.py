"""Save and load image models as a folder: ``model.safetensors`` + ``config.json``.

The config holds everything needed to rebuild the model and feed it correctly (architecture,
class names, input shape, normalisation), so ``predict.py`` and ``distill.py`` need only the
folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn

from common.domains import check_model_folder
from common.errors import CheckpointError
from common.io import atomic_write_json, save_model_atomic
from common.training import is_main_process
from image_classification.student_model.cnn import SmallCNN
from image_classification.teacher_model.resnet import TappedResNet

WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass
class ModelConfig:
    """How to rebuild a saved model and what it expects as input."""

    family: str
    """"resnet" (teacher) or "cnn" (student)."""
    arch: str
    """ResNet name (resnet18, ...) or CNN size (tiny, small, medium)."""
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    classes: list[str]
    mean: list[float]
    std: list[float]
    dataset: str
    stem: str = "small"
    """ResNet stem (see TappedResNet); ignored for CNNs."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_data(cls, data: Any, family: str, arch: str, dataset: str, **more: Any) -> ModelConfig:
        """A config whose classes, input shape and normalisation are ``data``'s (an
        :class:`~image_classification.data.images.ImageData`)."""
        return cls(
            family=family,
            arch=arch,
            num_classes=data.num_classes,
            in_channels=data.shape[0],
            image_size=data.shape[1:],
            classes=data.classes,
            mean=data.mean,
            std=data.std,
            dataset=dataset,
            **more,
        )


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "resnet":
        return TappedResNet(cfg.arch, cfg.num_classes, cfg.in_channels, stem=cfg.stem)  # type: ignore[arg-type]
    if cfg.family == "cnn":
        return SmallCNN(cfg.arch, cfg.num_classes, cfg.in_channels)
    raise CheckpointError(f"unknown model family {cfg.family!r} in config")


def save_model_dir(model: nn.Module, cfg: ModelConfig, directory: Path) -> Path:
    """Write weights then config, each atomically; the config's presence marks completion.
    Only the main process writes under ``accelerate launch``."""
    directory = Path(directory)
    if is_main_process():
        save_model_atomic(model, directory / WEIGHTS)
        atomic_write_json(directory / CONFIG, asdict(cfg))
    return directory


def load_model_dir(directory: Path) -> tuple[nn.Module, ModelConfig]:
    """Rebuild a saved model in eval mode; errors name the folder and the fix."""
    directory = Path(directory)
    check_model_folder(directory, "image-classification")
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise CheckpointError(
            f"{directory} is not a saved model (needs {CONFIG} and {WEIGHTS}). Train one first "
            "with `python -m image_classification.scripts.train_teacher` (or distill.py), or "
            "pass the folder it wrote."
        )
    try:
        raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        raw["image_size"] = tuple(raw["image_size"])
        cfg = ModelConfig(**raw)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(
            f"{directory / CONFIG} is not a valid model config ({type(err).__name__}: {err}); "
            "restore it from the run that wrote it, or train the model again"
        ) from None
    model = build_model(cfg)
    try:
        load_model(model, str(directory / WEIGHTS))
    except SafetensorError as err:
        raise CheckpointError(
            f"{directory / WEIGHTS} is unreadable ({err}): the file is truncated or damaged; "
            "restore it, or train the model again"
        ) from None
    except RuntimeError as err:
        raise CheckpointError(f"{directory}/{WEIGHTS} does not match its {CONFIG}: {err}") from None
    return model.eval(), cfg
