"""What train_teacher.py and distill.py share: the forward adapter, evaluation, the
optimizer/schedule, one training run through the shared loop, and speed measurement."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.cache import CachedTeacherAdapter
from common.callbacks import (
    CheckpointCallback,
    EvaluateCallback,
    JsonlLogger,
    ProgressBar,
    TensorBoardLogger,
)
from common.losses import CombinedLoss
from common.metrics import (
    classification_metrics,
    count_flops,
    count_parameters,
    model_size_bytes,
    speed_profile,
)
from common.training import (
    DistillationLoop,
    ForwardAdapter,
    LoopConfig,
    LoopState,
    make_accelerator,
    make_optimizer,
    trainable_parameters,
)
from image_classification.data.images import ImageData, make_loader


class ImageAdapter:
    """Both models take ``batch["images"]`` and return a dict with ``logits`` and taps."""

    def student(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return model(batch["images"])

    def teacher(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return model(batch["images"])


class MirroredCacheAdapter(CachedTeacherAdapter):
    """Cached outputs of a mirror-invariant teacher (``FlipAveraged``) for batches with
    random flips: logits hold as they are, feature maps of a mirrored image are mirrored."""

    def teacher(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = super().teacher(model, batch)
        flipped = batch.get("flipped")
        if flipped is None:
            return out
        mirror = flipped.view(-1, 1, 1, 1)
        return {
            k: torch.where(mirror, v.flip(-1), v) if v.dim() == 4 else v for k, v in out.items()
        }


class LogitsOnly(nn.Module):
    """``model(x)["logits"]``: the plain-tensor interface ONNX export and users expect."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)["logits"]


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """All logits and labels of a loader, in order, with the model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in loader:
        logits.append(model(batch["images"].to(device))["logits"].float().cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


@dataclass
class TrainSpec:
    """One training run of an image model (teacher or student)."""

    name: str
    run_dir: Path
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    augment: tuple[str, ...]
    seed: int
    resume: bool = True
    checkpoint_every: int | None = 200
    max_steps: int | None = None
    """Stop after this many optimizer steps (equal budgets over training sets of different
    sizes); unset: ``epochs`` full passes."""
    eval_every_epochs: int = 1
    """Validate after every this many epochs (and at the end): many short epochs over a small
    labelled subset need not each pay for a pass over the validation split."""


def run_training(
    model: nn.Module,
    loss: CombinedLoss,
    data: ImageData,
    spec: TrainSpec,
    teacher: nn.Module | None = None,
    config: dict[str, Any] | None = None,
    teacher_val_logits: Tensor | None = None,
    adapter: ForwardAdapter | None = None,
) -> tuple[nn.Module, LoopState, float]:
    """Train ``model`` through the shared loop; returns it (unwrapped), the loop state and
    the wall time in seconds. ``teacher`` may be a model or a
    :class:`~common.cache.TeacherOutputCache` (then pass a ``CachedTeacherAdapter``)."""
    start = time.perf_counter()
    train_loader = make_loader(
        data.train, data, spec.batch_size, shuffle=True, augment=spec.augment, seed=spec.seed
    )
    val_loader = make_loader(data.val, data, 512, shuffle=False)
    steps = spec.epochs * len(train_loader)
    if spec.max_steps is not None:
        steps = min(steps, spec.max_steps)
    optimizer, schedule = make_optimizer(
        trainable_parameters(model, loss), spec.optimizer, spec.lr, spec.weight_decay, steps
    )

    def evaluate(m: nn.Module) -> dict[str, float]:
        return classification_metrics(*predict_logits(m, val_loader), "val", teacher_val_logits)

    loop = DistillationLoop(
        student=model,
        teacher=teacher,
        loss_fn=loss,
        adapter=adapter or ImageAdapter(),
        train_data=train_loader,
        optimizer=optimizer,
        scheduler=schedule,
        accelerator=make_accelerator(),
        config=LoopConfig(epochs=spec.epochs, max_steps=spec.max_steps),
        callbacks=[
            EvaluateCallback(evaluate, monitor="val/accuracy", every_epochs=spec.eval_every_epochs),
            ProgressBar(desc=spec.name),
            CheckpointCallback(
                spec.run_dir / "checkpoints",
                every_steps=spec.checkpoint_every,
                resume=spec.resume,
                config=config,
            ),
            JsonlLogger(spec.run_dir / "metrics.jsonl"),
            TensorBoardLogger(spec.run_dir / "tensorboard"),
        ],
    )
    state = loop.run()
    return loop.student.eval(), state, time.perf_counter() - start


def speed_report(
    model: nn.Module, shape: tuple[int, int, int], repeats: int = 20
) -> dict[str, Any]:
    """CPU batch-1 latency (ms) and batch-256 throughput (img/s): common.metrics'
    ``speed_profile`` on a CPU copy, so the numbers mean the same on a machine with a GPU
    (where the trained model lives on the device)."""
    m = LogitsOnly(copy.deepcopy(model)).cpu().eval()
    return speed_profile(
        m, torch.randn(1, *shape), torch.randn(256, *shape), unit="img/s", repeats=repeats
    )


def describe_model(model: nn.Module, name: str, shape: tuple[int, int, int], **extra: Any) -> dict:
    """Name, parameter count, size and FLOPs of one forward (on a CPU copy) for results.json."""
    cpu = copy.deepcopy(model).cpu()
    return {
        "name": name,
        "params": count_parameters(cpu),
        "size_bytes": model_size_bytes(cpu),
        "flops": count_flops(cpu, torch.zeros(1, *shape)),
        **extra,
    }
