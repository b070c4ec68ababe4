"""What a distillation run keeps beside its checkpoints so that a killed run resumes exactly.

The collector's environments cannot be saved mid-episode (a Gymnasium environment in general
has no state to write), and they live on across rounds on purpose. So after each round's
collection the run keeps the student weights that round collected with (a few KB) in
``<run>/checkpoints/rounds/round-<k>.safetensors``, with a fingerprint of the collection
state after the round (buffer, observations, random generators) in the file's metadata.

A resumed run rebuilds the collector from its seed and collects the rounds its checkpoint
had reached once more, each with that round's weights (the teacher is fixed): the same
actions, so the same environments, buffer and generators, checked against each round's
fingerprint. The shared loop's checkpoint (student, optimizer, loop state, global RNGs) then
carries on from there, so the run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model

from common.callbacks import Callback
from common.errors import CheckpointError
from common.io import save_model_atomic
from common.training import is_main_process
from reinforcement_learning.data.replay import RoundBatches

if TYPE_CHECKING:
    from torch import nn

    from common.training import DistillationLoop

ROUNDS_DIR = "rounds"
"""The folder, inside the run's checkpoint folder, of the per-round weights."""


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """Restore torch's CPU, numpy's and Python's global RNGs on exit: what runs inside does
    not move the random streams a resumed run restored from its checkpoint."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


class RoundCheckpoints(Callback):
    """Keep each round's collection weights (:meth:`record`, the ``on_collect`` of
    ``batches``), and on a resumed run collect the rounds its checkpoint reached again before
    training goes on. Give it after the loop's checkpoint callback: it reads the loop state
    that one restores."""

    def __init__(self, directory: Path, batches: RoundBatches) -> None:
        self.directory, self.batches = Path(directory), batches
        self.replayed = 0
        """Rounds collected again on resume (0 for a fresh run)."""

    def path(self, round_index: int) -> Path:
        return self.directory / f"round-{round_index:04d}.safetensors"

    def record(self, round_index: int) -> None:
        """Right after round ``round_index``'s collection: the weights it collected with and
        the fingerprint of the state it left."""
        if not is_main_process():
            return
        meta = {"round": str(round_index), "fingerprint": self.batches.fingerprint()}
        save_model_atomic(self.batches.collector.student, self.path(round_index), meta)

    def on_train_begin(self, loop: DistillationLoop) -> None:
        # A checkpoint mid-round was written after that round's collection: replay it too.
        state = loop.state
        rounds = state.epoch + (1 if state.batches_in_epoch else 0)
        if rounds > len(self.batches.history):
            self.replay(rounds)
            loop.accelerator.print(
                f"collected the {rounds} round(s) of the checkpoint again with their saved "
                "student weights: the same environments, buffer and random generators"
            )

    def replay(self, rounds: int) -> None:
        """Collect rounds up to ``rounds`` (exclusive) with their saved weights, on a copy of
        the student (the loop's keeps the checkpoint's weights), leaving the global RNGs as
        the checkpoint restored them."""
        collector = self.batches.collector
        live = collector.student
        collector.student = replica = copy.deepcopy(live)
        try:
            with global_rng_kept():
                for k in range(len(self.batches.history), rounds):
                    expected = self._load(k, replica)
                    self.batches.set_epoch(k)
                    self.batches.collect()
                    if self.batches.fingerprint() != expected:
                        raise CheckpointError(
                            f"collecting round {k} again did not reproduce the states it "
                            f"collected before ({self.path(k)}): the environment or a library "
                            "changed since the checkpoint was written. Resume where it was "
                            "written, or pass --no-resume to start this run afresh."
                        )
                    self.replayed += 1
        finally:
            collector.student = live

    def _load(self, round_index: int, into: nn.Module) -> str:
        """Load round ``round_index``'s weights into ``into``; returns its fingerprint."""
        path = self.path(round_index)
        fix = f"pass --no-resume (or delete {self.directory.parent}) to start this run afresh"
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: resuming needs the student weights of every round the "
                f"checkpoint collected; {fix}"
            )
        try:
            with safe_open(str(path), "pt") as f:
                fingerprint = (f.metadata() or {}).get("fingerprint")
            load_model(into, str(path))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"{path} is unreadable ({err}); {fix}") from None
        if not fingerprint:
            raise CheckpointError(f"{path} holds no fingerprint of its round; {fix}")
        return fingerprint
