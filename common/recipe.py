"""One supervised training recipe for every domain: optimizer and schedule, evaluation, the
standard callbacks and the Accelerate options a GPU user expects (mixed precision, gradient
accumulation), around :class:`~common.training.DistillationLoop`.

A domain supplies its loaders, its forward adapter and an ``evaluate(model) -> metrics``;
``train`` does the rest the same way for teachers and students, in every domain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn

from common.callbacks import (
    CheckpointCallback,
    EvaluateCallback,
    JsonlLogger,
    ProgressBar,
    TensorBoardLogger,
)
from common.losses import CombinedLoss
from common.training import (
    DistillationLoop,
    ForwardAdapter,
    LoopConfig,
    LoopState,
    make_accelerator,
    make_optimizer,
    trainable_parameters,
)


@dataclass
class Recipe:
    """One training run's schedule and bookkeeping."""

    name: str
    """Shown on the progress bar."""
    run_dir: Path
    """checkpoints/, metrics.jsonl and tensorboard/ go here."""
    epochs: int
    """Passes over the training data; 0: until ``max_steps``."""
    lr: float
    weight_decay: float
    optimizer: str = "adamw"
    """adamw or sgd (Nesterov), under a one-cycle schedule."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (equal budgets over data of different sizes)."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm (None: no clipping)."""
    eval_every_epochs: int = 1
    """Validate after every this many epochs, and at the end."""
    monitor: str = "val/accuracy"
    """The validation metric whose best value is kept (higher is better)."""
    select_best: bool = False
    """End with the weights of the best validation (else the last)."""
    checkpoint_every: int | None = 200
    """Optimizer steps between checkpoints (also one per epoch); None: per epoch only."""
    checkpoints: bool = True
    """Write checkpoints (a killed run resumes from the last one)."""
    resume: bool = True
    mixed_precision: str = "no"
    grad_accum: int = 1
    tensorboard: bool = True
    logs: bool = True
    """Progress bar and JSON-lines/TensorBoard logs (off: a silent run, e.g. a benchmark)."""

    @classmethod
    def from_args(cls, args: Any, name: str, run_dir: Path, **overrides: Any) -> Recipe:
        """A recipe from a script's arguments: the fields they share with it (epochs, lr,
        weight_decay, optimizer, resume, mixed_precision, grad_accum), then ``overrides``."""
        shared = ("epochs", "lr", "weight_decay", "optimizer", "resume", "mixed_precision")
        fields = {f: getattr(args, f) for f in (*shared, "grad_accum") if hasattr(args, f)}
        return cls(name=name, run_dir=run_dir, **{**fields, **overrides})

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps the run will take (what the learning-rate schedule spans)."""
        per_epoch = math.ceil(batches_per_epoch / self.grad_accum)
        by_epochs = self.epochs * per_epoch if self.epochs > 0 else None
        if self.max_steps is None:
            assert by_epochs is not None, "give epochs or max_steps"
            return by_epochs
        return self.max_steps if by_epochs is None else min(by_epochs, self.max_steps)


def standard_callbacks(
    recipe: Recipe, evaluate: Callable[[nn.Module], dict[str, float]] | None, config: dict | None
) -> list[Any]:
    """Evaluation (unless ``evaluate`` is None), progress bar, checkpoints, JSON-lines and
    TensorBoard logs, in the order the loop needs them (evaluation first, so the others see
    its metrics)."""
    callbacks: list[Any] = []
    if evaluate is not None:
        callbacks.append(
            EvaluateCallback(
                evaluate, monitor=recipe.monitor, every_epochs=recipe.eval_every_epochs
            )
        )
    if recipe.logs:
        callbacks.append(ProgressBar(desc=recipe.name))
    if recipe.checkpoints:
        callbacks.append(
            CheckpointCallback(
                recipe.run_dir / "checkpoints",
                every_steps=recipe.checkpoint_every,
                resume=recipe.resume,
                config=config,
            )
        )
    if recipe.logs:
        callbacks.append(JsonlLogger(recipe.run_dir / "metrics.jsonl"))
    if recipe.logs and recipe.tensorboard:
        callbacks.append(TensorBoardLogger(recipe.run_dir / "tensorboard"))
    return callbacks


def train(
    model: nn.Module,
    loss: CombinedLoss,
    adapter: ForwardAdapter,
    train_data: Iterable[Any],
    evaluate: Callable[[nn.Module], dict[str, float]] | None,
    recipe: Recipe,
    teacher: nn.Module | None = None,
    config: dict[str, Any] | None = None,
    extra_callbacks: Sequence[Any] = (),
) -> tuple[nn.Module, LoopState]:
    """Train ``model`` with ``loss`` on ``train_data`` (a sized loader); returns the trained,
    unwrapped model in eval mode (the best-validation weights with ``select_best``) and the
    loop state. ``teacher`` is a model or a teacher-output cache; ``config`` is the settings
    record a resumed run must match."""
    steps = recipe.total_steps(len(train_data))  # type: ignore[arg-type]
    optimizer, schedule = make_optimizer(
        trainable_parameters(model, loss), recipe.optimizer, recipe.lr, recipe.weight_decay, steps
    )
    loop = DistillationLoop(
        student=model,
        teacher=teacher,
        loss_fn=loss,
        adapter=adapter,
        train_data=train_data,
        optimizer=optimizer,
        scheduler=schedule,
        accelerator=make_accelerator(
            mixed_precision=recipe.mixed_precision,
            gradient_accumulation_steps=recipe.grad_accum,
        ),
        config=LoopConfig(
            epochs=recipe.epochs, max_steps=recipe.max_steps, max_grad_norm=recipe.max_grad_norm
        ),
        callbacks=[*standard_callbacks(recipe, evaluate, config), *extra_callbacks],
    )
    state = loop.run()
    trained = loop.student
    if recipe.select_best and load_best(trained, recipe.run_dir) and state.best.get("metrics"):
        # The run ends with the best evaluation's weights: that evaluation is the last word
        # on them (results record it beside the test score, not the last epoch's).
        state.last_eval = dict(state.best["metrics"])
    return trained.eval(), state


def load_best(model: nn.Module, run_dir: Path) -> bool:
    """Load ``run_dir/checkpoints/best.safetensors`` (the student at its best validation,
    kept by the checkpoint callback) into ``model``; False, keeping the last weights, when
    there is none or it is unreadable (said on stdout)."""
    best = run_dir / "checkpoints" / "best.safetensors"
    if not best.is_file():
        return False
    try:
        load_model(model, str(best))
    except SafetensorError as err:
        print(f"warning: {best} is unreadable ({err}); keeping the last weights")
        return False
    return True
