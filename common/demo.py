"""A one-minute tour of the shared API on real MNIST: teacher, student alone, distilled student.

Every piece a domain uses appears once: dataclass arguments, the loss registry, the shared
loop with its callbacks, checkpoints, metrics and ``results.json``. Small MLPs keep it to
about a minute on 2 CPU cores; the domain scripts do the same with real architectures.

    python -m common.demo [--train-size 10000] [--epochs 2] [--run-dir runs/demo]
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.callbacks import CheckpointCallback, EvaluateCallback, JsonlLogger, ProgressBar
from common.cli import parse_args, run_main
from common.losses import build_loss
from common.metrics import accuracy, agreement, count_parameters, gap_closure
from common.results import RunResult, make_metrics, write_results
from common.training import DistillationLoop, LoopConfig, make_accelerator, trainable_parameters
from image_classification.data.mnist_pickle import load_mnist_pickle


@dataclass
class Args:
    """Distil an MLP teacher into a tiny MLP on MNIST through the shared loop."""

    run_dir: Path = Path("runs/demo")
    """Where each run writes checkpoints, metrics.jsonl and results.json."""
    train_size: int = 10000
    """Training images taken from MNIST's 50,000 (validation and test sets are used whole)."""
    teacher_epochs: int = 3
    """Epochs for the teacher."""
    epochs: int = 3
    """Epochs for each student (the same budget for student alone and distilled)."""
    student_hidden: int = 16
    """Hidden width of the student MLP (the teacher has 2 x 512)."""
    temperature: float = 4.0
    """Softmax temperature of the KD term."""
    alpha: float = 0.9
    """Weight of the KD term; the hard-label cross-entropy gets 1 - alpha."""
    lr: float = 3e-3
    """AdamW learning rate, annealed by a cosine schedule."""
    batch_size: int = 128
    """Examples per optimizer step."""
    seed: int = 0
    """Seed for initialisation and data order."""


class Images(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"images": self.x[i], "labels": self.y[i]}


class Adapter:
    """The forward adapter: how the loop runs these models on a dict batch."""

    def student(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        return {"logits": model(batch["images"])}

    teacher = student


def mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def train(
    name: str,
    model: nn.Module,
    loss_spec: str,
    args: Args,
    data,
    epochs: int,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, dict]:
    """One run through the shared loop; returns the trained model and its results dict."""
    start = time.perf_counter()
    run_dir = args.run_dir / name
    loss = build_loss(
        loss_spec, {"kd": {"temperature": args.temperature}} if "kd" in loss_spec else {}
    )
    optimizer = torch.optim.AdamW(trainable_parameters(model, loss), lr=args.lr)
    train_loader = DataLoader(Images(*data["train"]), batch_size=args.batch_size, shuffle=True)
    steps = epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    val_x, val_y = data["valid"]

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val/accuracy": accuracy(m(val_x), val_y)}

    loop = DistillationLoop(
        student=model,
        teacher=teacher,
        loss_fn=loss,
        adapter=Adapter(),
        train_data=train_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        accelerator=make_accelerator(cpu=True),
        config=LoopConfig(epochs=epochs),
        callbacks=[
            EvaluateCallback(evaluate, monitor="val/accuracy"),
            ProgressBar(desc=name),
            # Settings stored with the checkpoints: re-running with other settings in the same
            # run directory is refused instead of silently mixing two runs.
            CheckpointCallback(
                run_dir / "checkpoints",
                config={
                    "loss": loss_spec,
                    "epochs": epochs,
                    "params": count_parameters(model),
                    **{k: getattr(args, k) for k in ("train_size", "lr", "batch_size", "seed")},
                    **({"temperature": args.temperature} if "kd" in loss_spec else {}),
                },
            ),
            JsonlLogger(run_dir / "metrics.jsonl"),
        ],
    )
    state = loop.run()
    model = loop.student.eval()
    test_x, test_y = data["test"]
    with torch.no_grad():
        logits = model(test_x)
        final = {"test/accuracy": accuracy(logits, test_y), **state.last_eval}
        if teacher is not None:
            final["test/agreement"] = agreement(logits, teacher(test_x))
    result = RunResult(
        domain="image-classification",
        dataset="mnist",
        role="teacher" if name == "teacher" else "student",
        method=name,
        seed=args.seed,
        student={"name": f"mlp-{name}", "params": count_parameters(model)},
        teacher={"name": "mlp-teacher", "params": count_parameters(teacher)} if teacher else None,
        metrics=make_metrics(final, "test/accuracy", best=state.best),
        loss={
            "weights": dict(loss.weights),
            "options": {"kd": {"temperature": args.temperature}} if "kd" in loss.weights else {},
        },
        budget={"epochs": epochs, "steps": state.step, "examples": state.step * args.batch_size},
        wall_time_s=time.perf_counter() - start,
        extra={"args": {k: str(v) for k, v in asdict(args).items()}},
    )
    write_results(run_dir, result)
    return model, result.to_dict()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(Args, argv)
    data = load_mnist_pickle()
    data["train"] = tuple(t[: args.train_size] for t in data["train"])

    set_seed(args.seed)
    teacher, t_res = train("teacher", mlp(784, 512, 512, 10), "ce", args, data, args.teacher_epochs)
    teacher.requires_grad_(False)
    set_seed(args.seed)
    _, alone = train(
        "student-alone", mlp(784, args.student_hidden, 10), "ce", args, data, args.epochs
    )
    set_seed(args.seed)  # same init and data order as the student alone: only the loss differs
    spec = f"kd={args.alpha},ce={1 - args.alpha:.6g}"
    _, kd = train(
        "student-kd", mlp(784, args.student_hidden, 10), spec, args, data, args.epochs, teacher
    )

    acc = {
        n: r["metrics"]["final"]["test/accuracy"]
        for n, r in (("teacher", t_res), ("student alone", alone), ("student kd", kd))
    }
    print(f"\nMNIST test accuracy (seed {args.seed}, one seed: differences of ~0.5 pt are noise)")
    for name, value in acc.items():
        params = (t_res if name == "teacher" else kd)["student"]["params"]
        print(f"  {name:14s} {100 * value:6.2f}%   {params:>9,d} params")
    closure = gap_closure(acc["student kd"], acc["student alone"], acc["teacher"])
    print(f"  gap closure    {closure:6.2f}    results in {args.run_dir}/*/results.json")


if __name__ == "__main__":
    run_main(main)
