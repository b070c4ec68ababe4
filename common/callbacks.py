"""Callbacks: everything the loop does besides training (progress, logs, evaluation,
checkpoints). Each is small and optional; a domain picks the ones it wants."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from torch import nn

from common.checkpoint import (
    CorruptCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from common.errors import CheckpointError
from common.io import save_model_atomic
from common.training import LoopState

if TYPE_CHECKING:
    from common.training import DistillationLoop


class Callback:
    """Hooks the loop calls, in the order the callbacks were given. All default to no-ops.

    ``logs`` passed to ``on_step_end`` hold the step's loss terms and learning rate.
    Epoch-level metrics live in ``loop.state.last_eval`` (set by :class:`EvaluateCallback`).
    """

    def on_train_begin(self, loop: DistillationLoop) -> None: ...

    def on_epoch_begin(self, loop: DistillationLoop) -> None: ...

    def on_step_end(self, loop: DistillationLoop, logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, loop: DistillationLoop) -> None: ...

    def on_train_end(self, loop: DistillationLoop) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar over optimizer steps with the live loss terms (main process only)."""

    def __init__(self, desc: str = "train") -> None:
        self.desc = desc
        self._shown: dict[str, float] | None = None
        self.bar: Any = None

    def _bar(self, loop: DistillationLoop) -> Any:
        # Created on first use, not in on_train_begin: a checkpoint callback later in the
        # list may still move the state forward (resume) when training begins.
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=loop.total_steps(),
                initial=loop.state.step,
                desc=self.desc,
                unit="step",
                disable=not loop.accelerator.is_main_process,
                mininterval=1.0,
                dynamic_ncols=True,
            )
        return self.bar

    def on_epoch_begin(self, loop: DistillationLoop) -> None:
        self._bar(loop)

    def on_step_end(self, loop: DistillationLoop, logs: dict[str, float]) -> None:
        bar = self._bar(loop)
        bar.update(1)
        bar.set_postfix(
            {k.removeprefix("loss/"): f"{v:.4g}" for k, v in logs.items() if k != "lr"},
            refresh=False,
        )

    def on_epoch_end(self, loop: DistillationLoop) -> None:
        # Only a fresh evaluation: with evaluation every few epochs, the epochs in between
        # would otherwise print the old figures as if measured again.
        fresh = loop.state.last_eval is not self._shown
        if loop.state.last_eval and fresh and loop.accelerator.is_main_process:
            self._shown = loop.state.last_eval
            shown = ", ".join(f"{k} {v:.4g}" for k, v in loop.state.last_eval.items())
            self._bar(loop).write(f"{self.desc} epoch {loop.state.epoch}: {shown}")

    def on_train_end(self, loop: DistillationLoop) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class KeepBest(Callback):
    """Keeps a copy of the student's weights (on the CPU) whenever the evaluation that just
    ran is the best so far (``loop.state.best`` names the current step): a run without
    checkpoints (no ``best.safetensors``) can end with its best validation weights. Put it
    after :class:`EvaluateCallback`; after the loop, :meth:`restore` loads them."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] | None = None
        self.step: int | None = None

    def _take(self, loop: DistillationLoop) -> None:
        step = loop.state.step
        if loop.state.best.get("step") == step and self.step != step:
            state = loop.student.state_dict()
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
            self.step = step

    def on_epoch_end(self, loop: DistillationLoop) -> None:
        self._take(loop)

    def on_train_end(self, loop: DistillationLoop) -> None:
        self._take(loop)

    def restore(self, model: nn.Module) -> bool:
        """Load the kept weights into ``model``; False when no evaluation was ever best."""
        if self.weights is None:
            return False
        model.load_state_dict(self.weights)
        return True


class EvaluateCallback(Callback):
    """Run ``evaluate(student)`` after every ``every_epochs`` epochs and at the end.

    ``evaluate`` returns named metrics (e.g. ``{"val/accuracy": 0.91}``); it runs on the main
    process with the unwrapped student in eval mode, and the result is sent to the others.
    The best value of ``monitor`` is kept in ``loop.state.best`` with its epoch and step.
    """

    def __init__(
        self,
        evaluate: Callable[[nn.Module], dict[str, float]],
        monitor: str,
        mode: str = "max",
        every_epochs: int = 1,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.evaluate, self.monitor, self.mode, self.every_epochs = (
            evaluate,
            monitor,
            mode,
            every_epochs,
        )
        self._evaluated_step = -1

    def _run(self, loop: DistillationLoop) -> None:
        acc = loop.accelerator
        student = loop.student
        was_training = student.training
        student.eval()
        try:
            # Process 0 evaluates and tells the others: after the last step each process's
            # BatchNorm statistics differ slightly, and every process must agree on `best`.
            metrics = None
            if acc.is_main_process:
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in self.evaluate(student).items()}
            if acc.num_processes > 1:
                metrics = broadcast_object_list([metrics], from_process=0)[0]
        finally:
            student.train(was_training)
        assert metrics is not None
        if self.monitor not in metrics:
            raise KeyError(
                f"evaluate() returned {sorted(metrics)}, not the monitored {self.monitor!r}"
            )
        state: LoopState = loop.state
        state.last_eval = metrics
        self._evaluated_step = state.step
        value = metrics[self.monitor]
        best = state.best.get("value")
        better = best is None or (value > best if self.mode == "max" else value < best)
        if better and math.isfinite(value):
            state.best = {
                "metric": self.monitor,
                "value": value,
                "epoch": state.epoch,
                "step": state.step,
                "metrics": metrics,
            }

    def on_epoch_end(self, loop: DistillationLoop) -> None:
        if loop.state.epoch % self.every_epochs == 0:
            self._run(loop)

    def on_train_end(self, loop: DistillationLoop) -> None:
        if self._evaluated_step != loop.state.step:  # stopped mid-epoch or off-schedule
            self._run(loop)


class JsonlLogger(Callback):
    """Append one JSON line per epoch (and one at the end) to ``path``: epoch, step, the
    mean of each step log over the epoch, and the evaluation metrics."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._sums: dict[str, float] = {}
        self._count = 0

    def on_train_begin(self, loop: DistillationLoop) -> None:
        if not loop.accelerator.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # A resumed run redoes the steps after its checkpoint: drop lines logged for them
            # so the file describes one consistent run.
            keep = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= loop.state.step
            ]
            self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def on_step_end(self, loop: DistillationLoop, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1

    def _write(self, loop: DistillationLoop, event: str) -> None:
        if not loop.accelerator.is_main_process:
            return
        record: dict[str, Any] = {
            "event": event,
            "epoch": loop.state.epoch,
            "step": loop.state.step,
        }
        if self._count:
            record.update({f"train/{k}": s / self._count for k, s in self._sums.items()})
        record.update(loop.state.last_eval)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._sums, self._count = {}, 0

    def on_epoch_end(self, loop: DistillationLoop) -> None:
        self._write(loop, "epoch")

    def on_train_end(self, loop: DistillationLoop) -> None:
        self._write(loop, "end")


class TensorBoardLogger(Callback):
    """Scalars to TensorBoard: step logs every ``every_steps`` steps, evaluations per epoch."""

    def __init__(self, log_dir: Path, every_steps: int = 10) -> None:
        self.log_dir, self.every_steps = Path(log_dir), every_steps
        self.writer: Any = None

    def on_train_begin(self, loop: DistillationLoop) -> None:
        if loop.accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                log_dir=str(self.log_dir), purge_step=loop.state.step or None
            )

    def on_step_end(self, loop: DistillationLoop, logs: dict[str, float]) -> None:
        if self.writer is not None and loop.state.step % self.every_steps == 0:
            for k, v in logs.items():
                self.writer.add_scalar(f"train/{k}", v, loop.state.step)

    def on_epoch_end(self, loop: DistillationLoop) -> None:
        if self.writer is not None:
            for k, v in loop.state.last_eval.items():
                self.writer.add_scalar(k, v, loop.state.step)

    def on_train_end(self, loop: DistillationLoop) -> None:
        if self.writer is not None:
            self.writer.close()


class CheckpointCallback(Callback):
    """Save an atomic checkpoint every ``every_steps`` steps (if set), after every epoch and
    at the end; on start, resume from the latest checkpoint in ``directory`` if there is one.

    With ``save_best``, also keeps ``best.safetensors`` (student weights at the best
    evaluation) beside the checkpoints. ``resume=False`` deletes the folder's old
    checkpoints and starts afresh. ``config`` (JSON-able settings of the run) is stored
    with each checkpoint; resuming under different settings is refused with the difference.
    """

    def __init__(
        self,
        directory: Path,
        every_steps: int | None = None,
        keep_last: int = 2,
        resume: bool = True,
        save_best: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.directory, self.every_steps = Path(directory), every_steps
        self.keep_last, self.resume, self.save_best = keep_last, resume, save_best
        self.config = config
        self.resumed_from: Path | None = None
        self._saved: dict[str, Any] | None = None  # loop state at the last save

    def on_train_begin(self, loop: DistillationLoop) -> None:
        if not self.resume:
            # Starting afresh: the old run's checkpoints would otherwise outrank the new
            # ones (higher steps) and be picked up by the next resume.
            if loop.accelerator.is_main_process and self.directory.exists():
                shutil.rmtree(self.directory)
            loop.accelerator.wait_for_everyone()
            return
        found, saved = self._load_newest_good(loop)
        if found is None:
            return
        loop.state = LoopState.from_dict(saved)
        self._saved = loop.state.to_dict()
        self.resumed_from = found
        loop.accelerator.print(
            f"resumed from {found} (epoch {loop.state.epoch}, step {loop.state.step})"
        )

    def _load_newest_good(self, loop: DistillationLoop) -> tuple[Path | None, dict[str, Any]]:
        """Load the newest checkpoint that reads; a corrupt one (truncated or garbled files)
        is skipped with a warning and the one before it is tried. Other settings still stop
        the run: falling back would not make them the same."""
        latest = latest_checkpoint(self.directory)
        candidates = list(reversed(list_checkpoints(self.directory)))
        if latest is not None and latest in candidates:
            candidates.remove(latest)
            candidates.insert(0, latest)
        for path in candidates:
            try:
                return path, load_checkpoint(
                    path,
                    model=loop.student,
                    loss_module=loop.unwrapped_loss,
                    optimizer=loop.optimizer,
                    scheduler=loop.scheduler,
                    config=self.config,
                    process_index=loop.accelerator.process_index,
                    processes=loop.accelerator.num_processes,
                )
            except CorruptCheckpointError as err:
                loop.accelerator.print(f"warning: skipping a corrupt checkpoint: {err}")
        if candidates:
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be read; delete the folder to start "
                "afresh (or pass --no-resume)"
            )
        return None, {}

    def _save(self, loop: DistillationLoop) -> None:
        # Compare the whole state, not the step: an epoch-end evaluation at an already
        # saved step changes `best`, and that must reach the checkpoint.
        if loop.state.to_dict() == self._saved:
            return
        acc = loop.accelerator
        acc.wait_for_everyone()
        # Every process's generators, not only the writer's: processes that drew different
        # amounts (batches of other lengths, per-process noise) resume their own streams.
        # Every process gets here together: the early return above compares loop states,
        # which are the same in every process (losses reduced, evaluations broadcast).
        states = gather_object([rng_state()]) if acc.num_processes > 1 else None
        if acc.is_main_process:
            # The best weights first: a checkpoint whose state names this step as the best
            # must never exist without them (a kill between the two writes would otherwise
            # resume with a best that has no weights, and end on other ones).
            if self.save_best and loop.state.best.get("step") == loop.state.step:
                save_model_atomic(loop.student, self.directory / "best.safetensors")
            save_checkpoint(
                self.directory,
                loop.state.step,
                model=loop.student,
                loss_module=loop.unwrapped_loss,
                optimizer=loop.optimizer,
                scheduler=loop.scheduler,
                loop_state=loop.state.to_dict(),
                keep_last=self.keep_last,
                config=self.config,
                rng_states=states,
            )
        acc.wait_for_everyone()
        self._saved = loop.state.to_dict()

    def on_step_end(self, loop: DistillationLoop, logs: dict[str, float]) -> None:
        if self.every_steps and loop.state.step % self.every_steps == 0:
            self._save(loop)

    def on_epoch_end(self, loop: DistillationLoop) -> None:
        self._save(loop)

    def on_train_end(self, loop: DistillationLoop) -> None:
        self._save(loop)
