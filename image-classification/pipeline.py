"""What train_teacher.py and distill.py share: the forward adapter, evaluation, one training
run (common's recipe on image loaders), and speed measurement."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.cache import CachedTeacherAdapter
from common.losses import CombinedLoss
from common.metrics import (
    classification_metrics,
    count_flops,
    count_parameters,
    model_size_bytes,
    speed_profile,
)
from common.recipe import Recipe, train
from common.training import ForwardAdapter, LoopState
from image_classification.data.images import BatchBuilder, ImageData, make_loader


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


@torch.no_grad()
def view_logits(
    teacher: nn.Module, builder: BatchBuilder, start: int, stop: int, batch_size: int = 512
) -> dict[str, Tensor]:
    """The teacher's logits on every view of images ``start..stop-1``, ``[images, views,
    classes]`` on the CPU: what the view cache stores (``builder`` makes the views)."""
    views = builder.views
    index = torch.arange(start, stop).repeat_interleave(views)
    view = torch.arange(views).repeat(stop - start)
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    out = []
    for k in range(0, len(index), batch_size):
        images = builder.view_batch(index[k : k + batch_size], view[k : k + batch_size])["images"]
        out.append(teacher(images.to(device))["logits"].float().cpu())
    teacher.train(was_training)
    return {"logits": torch.cat(out).view(stop - start, views, -1)}


def run_training(
    model: nn.Module,
    loss: CombinedLoss,
    data: ImageData,
    recipe: Recipe,
    *,
    batch_size: int,
    augment: tuple[str, ...],
    seed: int,
    num_workers: int = 0,
    teacher: nn.Module | None = None,
    config: dict[str, Any] | None = None,
    teacher_val_logits: Tensor | None = None,
    adapter: ForwardAdapter | None = None,
    views: int = 0,
    view_seed: int = 0,
) -> tuple[nn.Module, LoopState]:
    """Train ``model`` on ``data.train`` with common's recipe, validating on ``data.val``;
    returns it (unwrapped, eval mode) and the loop state. ``teacher`` may be a model or a
    :class:`~common.cache.TeacherOutputCache` (then pass a ``CachedTeacherAdapter``), or with
    ``views`` a :class:`~common.cache.ViewOutputCache` (then a ``ViewCacheAdapter``)."""
    train_loader = make_loader(
        data.train,
        data,
        batch_size,
        shuffle=True,
        augment=augment,
        seed=seed,
        num_workers=num_workers,
        **({"views": views, "view_seed": view_seed} if views else {}),
    )
    val_loader = make_loader(data.val, data, 512, shuffle=False)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return classification_metrics(*predict_logits(m, val_loader), "val", teacher_val_logits)

    return train(
        model, loss, adapter or ImageAdapter(), train_loader, evaluate, recipe, teacher, config
    )


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
