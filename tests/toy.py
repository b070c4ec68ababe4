"""A tiny, fully seeded distillation setup shared by the loop tests and the 2-process run.

Run under ``accelerate launch`` it trains once and writes the student's weights, so a test
can compare one process against two (``python tests/toy.py --out w.safetensors``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.callbacks import Callback, CheckpointCallback, EvaluateCallback, JsonlLogger
from common.cli import run_main
from common.losses import build_loss
from common.training import (
    DistillationLoop,
    LoopConfig,
    make_accelerator,
    process_state,
    trainable_parameters,
)

N, D, C = 64, 8, 3


class Net(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, C)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"logits": self.head(h), "hint": h}


class Adapter:
    def student(self, model, batch):
        return model(batch["x"])

    def teacher(self, model, batch):
        return model(batch["x"])


class NoisyAdapter(Adapter):
    """Noise on the student's inputs that draws a different amount in each process (as
    batches of other lengths do), so the processes' generators part ways."""

    def student(self, model, batch):
        torch.rand(1 + process_state().process_index)  # only moves this process's generator
        x = batch["x"]
        return model(x + 0.1 * torch.randn_like(x))


def make_teacher() -> Net:
    torch.manual_seed(7)
    return Net(hidden=32)


class ToyData(Dataset):
    def __init__(self, n: int = N, seed: int = 123) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, D, generator=g)
        with torch.no_grad():  # labels are the teacher's own predictions: KD and CE agree
            self.y = make_teacher()(self.x)["logits"].argmax(-1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def make_loop(
    run_dir: Path | None,
    *,
    seed: int = 0,
    epochs: int = 3,
    batch_size: int = 8,
    split_batches: bool = False,
    loss_spec: str = "kd=0.5,ce=0.5,hint=0.1",
    callbacks: list[Callback] | None = None,
    checkpoint_every: int | None = None,
    data: Dataset | None = None,
    max_steps: int | None = None,
    adapter: Adapter | None = None,
) -> DistillationLoop:
    teacher = make_teacher()
    set_seed(seed)  # the student's init and the sampler's seed both come from here
    student = Net(hidden=16)
    options = {"hint": {"student_dim": 16, "teacher_dim": 32, "kind": "linear"}}
    loss = build_loss(loss_spec, {k: v for k, v in options.items() if k in loss_spec})
    optimizer = torch.optim.AdamW(trainable_parameters(student, loss), lr=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max_steps or epochs * N // batch_size
    )
    loader = DataLoader(data or ToyData(), batch_size=batch_size, shuffle=True)
    val = ToyData(n=32, seed=99)
    cbs = list(callbacks or [])
    if run_dir is not None:
        cbs = [
            EvaluateCallback(
                lambda m: {
                    "val/accuracy": float((m(val.x)["logits"].argmax(-1) == val.y).float().mean())
                },
                monitor="val/accuracy",
            ),
            *cbs,
            CheckpointCallback(run_dir / "checkpoints", every_steps=checkpoint_every),
            JsonlLogger(run_dir / "metrics.jsonl"),
        ]
    return DistillationLoop(
        student=student,
        loss_fn=loss,
        adapter=adapter or Adapter(),
        train_data=loader,
        optimizer=optimizer,
        accelerator=make_accelerator(cpu=True, split_batches=split_batches),
        teacher=teacher,
        scheduler=scheduler,
        config=LoopConfig(epochs=epochs, max_steps=max_steps),
        callbacks=cbs,
    )


class Crash(Callback):
    """Simulate a kill: raise after a given step (after that step's checkpoint, if any)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, loop, logs):
        if loop.state.step == self.at_step:
            raise KeyboardInterrupt


def trained_weights(loop: DistillationLoop) -> dict[str, torch.Tensor]:
    weights = {f"student.{k}": v.detach().clone() for k, v in loop.student.state_dict().items()}
    weights.update(
        {f"loss.{k}": v.detach().clone() for k, v in loop.unwrapped_loss.state_dict().items()}
    )
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, help="checkpoint (every 4 steps) and resume here")
    parser.add_argument("--crash-at", type=int, help="raise KeyboardInterrupt after this step")
    parser.add_argument("--noise", action="store_true", help="train through NoisyAdapter")
    args = parser.parse_args()
    # split_batches: each of P processes takes 1/P of every batch, so the global batch (and
    # so the averaged gradient) is the same as in a single process.
    loop = make_loop(
        args.run_dir,
        split_batches=True,
        checkpoint_every=4 if args.run_dir else None,
        callbacks=[Crash(args.crash_at)] if args.crash_at else None,
        adapter=NoisyAdapter() if args.noise else None,
    )
    loop.run()
    if loop.accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in trained_weights(loop).items()}, str(args.out))
        print(f"processes={loop.accelerator.num_processes} steps={loop.state.step}")


if __name__ == "__main__":
    run_main(main)
