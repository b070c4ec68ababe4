"""The one distillation loop that every domain uses.

A domain supplies a :class:`ForwardAdapter` (how to run its student and teacher on a dict
batch) and an iterable of dict batches; the loop does the rest the same way everywhere:

* Accelerate prepares the trainable module (student + learnable loss parts), optimizer,
  loader and scheduler, so the same code runs on CPU, one GPU, or DDP/FSDP under
  ``accelerate launch``;
* the teacher is moved to the device, frozen, kept in ``eval()`` and run under
  ``torch.no_grad()``; it is skipped entirely when no loss term reads it;
* a non-finite loss stops the run before the optimizer step, so no checkpoint holds it, and
  a loss that explodes far above its start stops the run too (``divergence_factor``);
* logging, evaluation and checkpointing are :class:`~common.callbacks.Callback` objects.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.errors import ConfigError, DivergenceError, NonFiniteLossError
from common.losses.registry import CombinedLoss

Batch = Mapping[str, Any]


class ForwardAdapter(Protocol):
    """How a domain runs its models on a batch. Both return a dict of named outputs
    (``"logits"``, tapped features, attention maps, ...) that the loss terms read."""

    def student(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]: ...

    def teacher(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]: ...


@dataclass
class LoopConfig:
    """Loop-level settings; model, data and optimizer choices belong to the domain script."""

    epochs: int = 1
    """Passes over the training data; 0 means "until max_steps"."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, even mid-epoch (equal-budget comparisons)."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this value; None disables clipping."""
    divergence_factor: float | None = 100.0
    """Stop when the loss, smoothed over ~20 steps, exceeds this many times its value over
    the first steps (a diverging run is stopped, not trained on to the end); None: never."""


@dataclass
class LoopState:
    """What the loop has done; saved in checkpoints so a killed run resumes where it was."""

    epoch: int = 0
    """Index of the epoch in progress (equals the number of finished epochs between epochs)."""
    step: int = 0
    """Optimizer steps taken."""
    batches_in_epoch: int = 0
    """Batches of the current epoch already consumed (to skip them on resume)."""
    best: dict[str, Any] = field(default_factory=dict)
    """Best evaluation so far: the monitored metric, its epoch and step, and all metrics."""
    last_eval: dict[str, float] = field(default_factory=dict)
    """Metrics of the most recent evaluation."""
    stop: bool = False
    """Set by a callback (early stopping) to end training after the current step."""
    loss_start: list[float] = field(default_factory=list)
    """The first steps' losses: what a diverging loss is measured against (checkpointed, so a
    resumed run judges divergence exactly as an uninterrupted one)."""
    loss_ema: float = 0.0
    """The smoothed loss the divergence check follows."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoopState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class _Distiller(nn.Module):
    """Student and learnable loss parts as one module, so DDP syncs the regressors' gradients
    too (a regressor outside the wrapped module would drift apart across processes)."""

    def __init__(self, student: nn.Module, loss_fn: CombinedLoss, adapter: ForwardAdapter) -> None:
        super().__init__()
        self.student = student
        self.loss_fn = loss_fn
        self.adapter = adapter

    def forward(
        self, batch: Batch, teacher_outputs: Mapping[str, Tensor] | None
    ) -> dict[str, Tensor]:
        out = self.loss_fn(self.adapter.student(self.student, batch), teacher_outputs, batch)
        return {"loss": out.total, **{f"loss/{k}": v for k, v in out.terms.items()}}


def make_accelerator(
    cpu: bool | None = None,
    split_batches: bool = False,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str = "no",
) -> Accelerator:
    """An Accelerator with a seedable sampler, so data order depends on (seed, epoch) only:
    that is what makes a resumed run see the same batches as an uninterrupted one.

    ``cpu=None`` means "CPU when there is no CUDA device", which is also what lets
    ``accelerate launch --multi_gpu`` start gloo processes on a CPU-only machine.
    """
    if cpu is None:
        cpu = not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(
            split_batches=split_batches, use_seedable_sampler=True
        ),
    )


def shutdown_distributed(*, wait: bool = True) -> None:
    """End an ``accelerate launch`` group cleanly: wait for every process (``wait``), then
    destroy the process group. A no-op in a single process.

    Why: a gloo process that reaches interpreter exit with its group still alive can abort
    ("terminate called without an active exception") while another rank is still writing
    results, and the launcher then kills the whole group. Skip the wait after an error:
    the other ranks may never reach the barrier.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if wait:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def process_state() -> PartialState:
    """Accelerate's process state, set up the way :func:`make_accelerator` sets it up (the CPU,
    so gloo, when there is no CUDA device). Whatever asks first fixes the backend for the whole
    run, so nothing may build the state any other way: a plain ``PartialState()`` before the
    Accelerator would take two ``--multi_gpu`` CPU processes for two separate runs."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in a single process, and in process 0 of an ``accelerate launch`` group: the one
    that writes shared files (results, saved models, summaries) and prints reports."""
    return process_state().is_main_process


def trainable_parameters(student: nn.Module, loss_fn: nn.Module) -> list[nn.Parameter]:
    """Parameters the optimizer must own: the student's and any learnable loss parts'."""
    return [p for p in [*student.parameters(), *loss_fn.parameters()] if p.requires_grad]


class DistillationLoop:
    """Train ``student`` with ``loss_fn`` (optionally against a frozen ``teacher``).

    Callbacks run in the order given; put evaluation before checkpointing and logging so
    they see its metrics. After :meth:`run`, ``self.state`` holds the outcome and
    ``self.student`` the trained (unwrapped) model.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        loss_fn: CombinedLoss,
        adapter: ForwardAdapter,
        train_data: Iterable[Batch],
        optimizer: torch.optim.Optimizer,
        accelerator: Accelerator,
        teacher: nn.Module | None = None,
        scheduler: Any | None = None,
        config: LoopConfig | None = None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.config = config or LoopConfig()
        if self.config.epochs < 1 and self.config.max_steps is None:
            raise ConfigError("epochs must be >= 1 (or give max_steps)")
        if loss_fn.needs_teacher and teacher is None:
            raise ConfigError(
                f"loss terms {sorted(loss_fn.terms)} read teacher outputs but no teacher was "
                "given; train or load a teacher first, or use the student-alone loss 'ce'"
            )
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [
            n for n, p in loss_fn.named_parameters() if p.requires_grad and id(p) not in owned
        ]
        if missing:
            raise ConfigError(
                f"the optimizer does not own the loss's learnable parameters {missing}; build it "
                "from common.training.trainable_parameters(student, loss_fn)"
            )
        self.accelerator = accelerator
        self.adapter = adapter
        self.callbacks = list(callbacks)
        self.state = LoopState()
        self.teacher = None
        if teacher is not None and loss_fn.needs_teacher:
            teacher = teacher.to(accelerator.device).eval()
            teacher.requires_grad_(False)
            self.teacher = teacher

        prepared = accelerator.prepare(
            _Distiller(student, loss_fn, adapter),
            optimizer,
            train_data,
            *([scheduler] if scheduler is not None else []),
        )
        self.module, self.optimizer, self.train_data = prepared[:3]
        self.scheduler = prepared[3] if scheduler is not None else None

    # Unwrapped views for callbacks (DDP wraps the module; checkpoints hold plain weights).
    @property
    def student(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.module).student

    @property
    def unwrapped_loss(self) -> CombinedLoss:
        return self.accelerator.unwrap_model(self.module).loss_fn

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def steps_per_epoch(self) -> int | None:
        try:
            return len(self.train_data)  # type: ignore[arg-type]
        except TypeError:
            return None

    def total_steps(self) -> int | None:
        per_epoch = self.steps_per_epoch()
        by_epochs = None
        if per_epoch is not None and self.config.epochs > 0:
            accum = self.accelerator.gradient_accumulation_steps
            by_epochs = self.config.epochs * math.ceil(per_epoch / accum)
        if self.config.max_steps is None:
            return by_epochs
        return self.config.max_steps if by_epochs is None else min(by_epochs, self.config.max_steps)

    def _epochs_left(self) -> bool:
        return self.config.epochs <= 0 or self.state.epoch < self.config.epochs

    def _done(self) -> bool:
        c = self.config
        return self.state.stop or (c.max_steps is not None and self.state.step >= c.max_steps)

    _WARMUP = 10
    """Steps whose mean loss is the reference a diverging loss is measured against."""

    def _check_divergence(self, loss: float) -> None:
        factor, st = self.config.divergence_factor, self.state
        if factor is None or not math.isfinite(loss):
            return
        if len(st.loss_start) < self._WARMUP:
            st.loss_start.append(loss)
            st.loss_ema = sum(st.loss_start) / len(st.loss_start)
            return
        st.loss_ema = 0.9 * st.loss_ema + 0.1 * loss
        start = sum(st.loss_start) / len(st.loss_start)
        if start > 0 and st.loss_ema > factor * start:
            raise DivergenceError(
                f"training diverged at epoch {st.epoch}, step {st.step}: the loss (smoothed) is "
                f"{st.loss_ema:.4g}, over {factor:g}x its start ({start:.4g}). Checkpoints written "
                "before this step are intact. Lower the learning rate (--lr) or check the inputs."
            )

    def _check_finite(self, out: Mapping[str, Tensor]) -> float:
        """Stop on a non-finite loss; returns the loss averaged over processes (what the
        divergence check follows, so every process decides alike)."""
        loss = out["loss"].detach().float()
        bad = ~torch.isfinite(loss)
        if self.accelerator.num_processes > 1:
            # Every process must stop together, or the others hang in the next all-reduce:
            # one all-reduce carries both the verdict and the loss.
            both = torch.stack([bad.float(), torch.nan_to_num(loss)])
            both = self.accelerator.reduce(both, reduction="sum")
            bad, loss = both[0] > 0, both[1] / self.accelerator.num_processes
        if bool(bad):
            terms = {k: float(v.detach()) for k, v in out.items()}
            raise NonFiniteLossError(
                f"loss is not finite at epoch {self.state.epoch}, step {self.state.step}: {terms}. "
                "Nothing was written for this step; the last checkpoint is intact. Try a lower "
                "learning rate, gradient clipping (max_grad_norm), or check the inputs for NaN."
            )
        return float(loss)

    def run(self) -> LoopState:
        self._call("on_train_begin")
        self.module.train()
        if self._done() and self._epoch_consumed():
            # Resumed from a checkpoint of the last step, written before its epoch ended.
            self._end_epoch()
        while self._epochs_left() and not self._done():
            data = self.train_data
            if hasattr(data, "set_epoch"):
                data.set_epoch(self.state.epoch)
            if self.state.batches_in_epoch:
                # Resumed mid-epoch: skip what the checkpointed run already consumed.
                data = (
                    self.accelerator.skip_first_batches(data, self.state.batches_in_epoch)
                    if isinstance(data, DataLoader)
                    else itertools.islice(data, self.state.batches_in_epoch, None)
                )
            self._call("on_epoch_begin")
            ended = True
            for batch in data:
                self._train_batch(batch)
                if self._done():
                    # max_steps may fall on the epoch's last batch: that epoch still ended.
                    ended = self._epoch_consumed()
                    break
            if ended:
                self._end_epoch()
        self._call("on_train_end")
        return self.state

    def _epoch_consumed(self) -> bool:
        """Every batch of the current epoch trained (its end not yet counted)."""
        n = self.state.batches_in_epoch
        return n > 0 and n == _length(self.train_data)

    def _end_epoch(self) -> None:
        self.state.epoch += 1
        self.state.batches_in_epoch = 0
        self._call("on_epoch_end")

    def _train_batch(self, batch: Batch) -> None:
        acc = self.accelerator
        with acc.accumulate(self.module):
            teacher_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_out = self.adapter.teacher(self.teacher, batch)
            out = self.module(batch, teacher_out)
            mean_loss = self._check_finite(out)
            acc.backward(out["loss"])
            if acc.sync_gradients and self.config.max_grad_norm is not None:
                acc.clip_grad_norm_(self.module.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.state.batches_in_epoch += 1
        if acc.sync_gradients:
            self.state.step += 1
            logs = {k: float(v.detach()) for k, v in out.items()}
            self._check_divergence(mean_loss)
            logs["lr"] = float(self.optimizer.param_groups[0]["lr"])
            self._call("on_step_end", logs)


def _length(data: Iterable[Any]) -> int | None:
    """Batches in one pass over ``data`` (this process's share), None when unsized."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def make_optimizer(
    params: Sequence[nn.Parameter], name: str, lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    """SGD (Nesterov momentum) or AdamW, under a one-cycle schedule over ``total_steps``."""
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adamw'")
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=lr,
        total_steps=max(total_steps, 1),
        pct_start=0.15,
        cycle_momentum=name == "sgd",
    )
    return opt, schedule


def training_budget(
    epochs: int, state: LoopState, batch_size: int, grad_accum: int = 1
) -> dict[str, int]:
    """What a run consumed, for results.json (examples summed over all processes and
    accumulated batches)."""
    per_step = batch_size * process_state().num_processes * grad_accum
    return {"epochs": epochs, "steps": state.step, "examples": state.step * per_step}
