"""Export a saved image model to ONNX and check it against PyTorch in onnxruntime.

    python -m image_classification.scripts.export_onnx --model runs/.../model

Writes ``<model>/model.onnx`` (input ``images`` [batch, C, H, W] normalised as in
config.json; output ``logits``) and prints the largest absolute difference between the
ONNX Runtime and PyTorch logits on a batch of random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.cli import parse_args, run_main
from common.errors import DistilleryError
from common.io import atomic_path
from image_classification.model_io import load_model_dir
from image_classification.pipeline import LogitsOnly


@dataclass
class Args:
    """Export a saved model folder to ONNX with a parity check."""

    model: Path = Path("runs/quick/image-classification/distill/kd/seed-0/model")
    """Saved model folder (model.safetensors + config.json)."""
    out: Path | None = None
    """ONNX file to write; unset: model.onnx inside the model folder."""
    tolerance: float = 1e-4
    """Largest absolute logit difference accepted between ONNX Runtime and PyTorch."""
    check_batch: int = 16
    """Random inputs for the parity check."""


def export(
    model_dir: Path, out: Path | None = None, tolerance: float = 1e-4, check_batch: int = 16
) -> tuple[Path, float]:
    """Export and verify; returns the ONNX path and the max abs logit difference."""
    import onnxruntime as ort

    model, cfg = load_model_dir(model_dir)
    wrapped = LogitsOnly(model).eval()
    example = torch.randn(2, cfg.in_channels, *cfg.image_size)
    out = Path(out) if out else Path(model_dir) / "model.onnx"
    with atomic_path(out) as tmp:
        torch.onnx.export(
            wrapped,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
            external_data=False,  # one self-contained file (the rename would orphan a .data file)
        )
    x = torch.randn(check_batch, cfg.in_channels, *cfg.image_size)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        torch_logits = wrapped(x).numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    if not diff <= tolerance:
        raise DistilleryError(
            f"ONNX output differs from PyTorch by {diff:.3g} (> {tolerance}); the export of "
            f"{model_dir} is not faithful: report it with the torch and onnx versions"
        )
    return out, diff


def main(argv: list[str] | None = None) -> tuple[Path, float]:
    args = parse_args(Args, argv)
    path, diff = export(args.model, args.out, args.tolerance, args.check_batch)
    print(f"wrote {path}; max |onnxruntime - torch| over {args.check_batch} inputs: {diff:.3g}")
    return path, diff


if __name__ == "__main__":
    run_main(main)
