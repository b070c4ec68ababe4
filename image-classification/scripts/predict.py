"""Classify image files with a saved teacher or student (top-k classes with probabilities).

python -m image_classification.scripts.predict --model runs/.../model --images a.png b.png
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from common.cli import parse_args, run_main
from image_classification.data.images import load_image, normalize
from image_classification.model_io import load_model_dir
from image_classification.teacher_model.resnet import flip_averaged


@dataclass
class Args:
    """Classify image files with a saved model folder."""

    model: Path = Path("runs/quick/image-classification/distill/kd/seed-0/model")
    """Saved model folder (model.safetensors + config.json)."""
    images: tuple[str, ...] = ()
    """Image files to classify (PNG, JPEG, ...)."""
    top_k: int = 3
    """How many classes to list per image."""
    resize: bool = False
    """Convert images of another size or channel count to the model's input instead of
    refusing them."""
    flip_average: bool = False
    """Average the model over each image and its mirror image (the teacher distill.py
    --teacher-flip distils from; not for digits)."""
    json: bool = False
    """Print one JSON object per image instead of text."""


def predict(
    model_dir: Path,
    images: list[Path],
    top_k: int = 3,
    resize: bool = False,
    flip_average: bool = False,
) -> list[dict]:
    """``[{"file", "top": [(class, probability), ...]}]`` for each image, best first."""
    model, cfg = load_model_dir(model_dir)
    if flip_average:
        model = flip_averaged(model, cfg.dataset).eval()
    batch = torch.stack(
        [
            load_image(
                p, channels=cfg.in_channels, expect_size=tuple(cfg.image_size), resize=resize
            )
            for p in images
        ]
    )
    with torch.no_grad():
        probs = model(normalize(batch, cfg.mean, cfg.std))["logits"].softmax(-1)
    k = min(top_k, cfg.num_classes)
    values, indices = probs.topk(k, dim=-1)
    return [
        {"file": str(p), "top": [(cfg.classes[i], float(v)) for v, i in zip(vs, ix, strict=True)]}
        for p, vs, ix in zip(images, values.tolist(), indices.tolist(), strict=True)
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv)
    if not args.images:
        raise SystemExit("give image files with --images a.png [b.png ...]")
    out = predict(
        args.model, [Path(p) for p in args.images], args.top_k, args.resize, args.flip_average
    )
    for row in out:
        if args.json:
            print(json.dumps(row))
        else:
            shown = ", ".join(f"{name} {100 * p:.1f}%" for name, p in row["top"])
            print(f"{row['file']}: {shown}")
    return out


if __name__ == "__main__":
    run_main(main)
