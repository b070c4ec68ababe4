"""What keeps a run safe: the output-folder lock, the divergence stop, the fallback from a
corrupt checkpoint to the one before, and Ctrl-C's one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from toy import make_loop, trained_weights

from common.callbacks import Callback
from common.checkpoint import list_checkpoints
from common.cli import run_main
from common.errors import ConfigError, DivergenceError
from common.io import LOCK_FILE, claim_folder
from common.losses import LOSSES, LossTerm, Reads


def test_the_output_folder_lock(tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file; pass a folder"):
        claim_folder(a_file)

    live = tmp_path / "live"
    live.mkdir()
    owner = {"pid": os.getppid(), "host": socket.gethostname()}  # a process that is alive
    (live / LOCK_FILE).write_text(json.dumps(owner))
    with pytest.raises(ConfigError, match=rf"in use by another run \(process {owner['pid']}"):
        claim_folder(live)

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": owner["host"]}))
    assert claim_folder(stale) == stale
    assert "taking over" in capsys.readouterr().out
    assert json.loads((stale / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert claim_folder(stale) == stale  # the same process claims again freely


class _Level(LossTerm):
    """A loss of a set level (plus a zero that keeps the graph): a finite loss that explodes
    when the test raises the level."""

    level = 1.0

    def reads(self) -> Reads:
        return Reads(student=frozenset({"logits"}))

    def forward(self, student, teacher, batch):
        return student["logits"].mean() * 0 + _Level.level


def test_a_diverging_loss_stops_the_run():
    class Explode(Callback):
        def on_step_end(self, loop, logs):
            _Level.level = 1e4 if loop.state.step >= 12 else 1.0

    LOSSES.add("level", _Level)
    try:
        loop = make_loop(None, epochs=50, loss_spec="level=1", callbacks=[Explode()])
        with pytest.raises(DivergenceError, match=r"diverged at epoch \d+, step 1[3-9]"):
            loop.run()
    finally:
        LOSSES.remove("level")
    assert loop.state.loss_start == [1.0] * 10


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    reference = trained_weights(_finish(make_loop(tmp_path / "ref", checkpoint_every=4)))

    class Crash(Callback):
        def on_step_end(self, loop, logs):
            if loop.state.step == 13:
                raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_loop(run_dir, checkpoint_every=4, callbacks=[Crash()]).run()
    older, newest = list_checkpoints(run_dir / "checkpoints")[-2:]
    assert (older.name, newest.name) == ("step-00000008", "step-00000012")
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk
    loop = make_loop(run_dir, checkpoint_every=4)
    loop.run()
    assert loop.callbacks[-2].resumed_from == older
    assert "skipping a corrupt checkpoint" in capsys.readouterr().out
    for k, v in trained_weights(loop).items():
        torch.testing.assert_close(v, reference[k], rtol=1e-6, atol=1e-7)


def _finish(loop):
    loop.run()
    return loop


def test_ctrl_c_is_one_line_and_status_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_main(interrupted)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 130 and len(err.splitlines()) == 1
    assert "run the same command to resume" in err and "Traceback" not in err


def _image_loader():
    from image_classification.data.images import ImageData, Split, make_loader

    split = Split(torch.zeros(40, 1, 8, 8, dtype=torch.uint8), torch.zeros(40, dtype=torch.long))
    data = ImageData("toy", ["a"], split, split, split, [0.5], [0.5])
    return make_loader(split, data, 8, shuffle=True, augment=("flip",))


def _text_loader():
    from datasets import Dataset

    from nlp.data.text import make_loader

    rows = {"input_ids": [[1, 2, 3]] * 40, "attention_mask": [[1, 1, 1]] * 40}
    split = Dataset.from_dict({**rows, "token_type_ids": [[0, 0, 0]] * 40, "label": [0] * 40})
    return make_loader(split, 8, shuffle=True)


@pytest.mark.parametrize("build", [_image_loader, _text_loader], ids=["image", "nlp"])
def test_training_loaders_leave_the_global_rng_alone(build):
    """A new epoch's iterator (or a resumed run's, skipping the batches its checkpoint had
    consumed) draws nothing from the global torch RNG: otherwise a run resumed mid-epoch
    would get other dropout masks than the uninterrupted run (found by the NLP soak)."""
    from common.training import make_accelerator

    accelerator = make_accelerator()
    loader = accelerator.prepare(build())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    next(iter(loader))
    next(iter(accelerator.skip_first_batches(loader, 2)))
    assert torch.equal(before, torch.get_rng_state())
