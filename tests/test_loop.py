"""The shared loop: training works, the teacher stays frozen, checkpoints resume exactly,
bad set-ups and NaN losses fail clearly, and callbacks write what they promise."""

from __future__ import annotations

import json

import pytest
import torch
from toy import Adapter, Crash, N, Net, ToyData, make_loop, make_teacher, trained_weights

from common.callbacks import Callback, EvaluateCallback, ProgressBar, TensorBoardLogger
from common.checkpoint import latest_checkpoint, list_checkpoints
from common.errors import ConfigError, NonFiniteLossError
from common.losses import build_loss
from common.training import DistillationLoop, make_accelerator


def test_loop_reduces_the_loss_and_leaves_the_teacher_untouched(tmp_path):
    before = {k: v.clone() for k, v in make_teacher().state_dict().items()}
    losses = []

    class Record(Callback):
        def on_step_end(self, loop, logs):
            losses.append(logs["loss"])

    loop = make_loop(tmp_path, callbacks=[Record()], epochs=4)
    state = loop.run()
    assert state.step == 4 * N // 8
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])
    assert loop.teacher is not None and not loop.teacher.training
    for k, v in loop.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in loop.teacher.parameters())
    assert state.best["metric"] == "val/accuracy" and 0.0 <= state.best["value"] <= 1.0


def test_seeded_runs_are_identical():
    a = trained_weights(_run(make_loop(None, seed=3, epochs=1)))
    b = trained_weights(_run(make_loop(None, seed=3, epochs=1)))
    c = trained_weights(_run(make_loop(None, seed=4, epochs=1)))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _run(loop: DistillationLoop) -> DistillationLoop:
    loop.run()
    return loop


# 8 steps per epoch: mid-epoch 1, at the boundary, mid-epoch 2 (checkpoint at 12), epoch 3.
@pytest.mark.parametrize("crash_at", [5, 8, 13, 19])
def test_killed_run_resumes_to_the_same_weights(tmp_path, crash_at):
    reference = trained_weights(_run(make_loop(tmp_path / "ref", checkpoint_every=4)))

    run_dir = tmp_path / "crashy"
    with pytest.raises(KeyboardInterrupt):
        # The crash callback goes before the checkpoint callback, so step `crash_at` itself
        # is never saved: the resume must redo it from the previous checkpoint.
        make_loop(run_dir, checkpoint_every=4, callbacks=[Crash(crash_at)]).run()
    saved = latest_checkpoint(run_dir / "checkpoints")
    assert saved is not None
    loop = make_loop(run_dir, checkpoint_every=4)
    loop.run()
    assert loop.callbacks[-2].resumed_from == saved
    for k, v in trained_weights(loop).items():
        torch.testing.assert_close(v, reference[k], rtol=1e-6, atol=1e-7)
    # The log describes one run: one line per epoch, steps increasing, no duplicates.
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [x["epoch"] for x in lines if x["event"] == "epoch"]
    assert epochs == [1, 2, 3]
    assert len(list_checkpoints(run_dir / "checkpoints")) <= 2


def test_nan_loss_stops_before_writing_and_keeps_the_last_checkpoint(tmp_path):
    class Poisonable(ToyData):
        poisoned = False

        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {**item, "x": item["x"] * float("nan")} if self.poisoned else item

    data = Poisonable()

    class PoisonAfter3(Callback):
        def on_step_end(self, loop, logs):
            data.poisoned = data.poisoned or loop.state.step == 3

    loop = make_loop(tmp_path, data=data, checkpoint_every=1, callbacks=[PoisonAfter3()])
    with pytest.raises(NonFiniteLossError, match="learning rate") as err:
        loop.run()
    assert "last checkpoint is intact" in str(err.value)
    # Accelerate's loader fetches one batch ahead, so the NaN batch is step 5 (or 4).
    assert loop.state.step in (3, 4)
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step-{loop.state.step:08d}"
    for p in loop.student.parameters():
        assert torch.isfinite(p).all()
    resumed = make_loop(tmp_path, epochs=1)  # the checkpoint left behind still loads
    resumed.callbacks[-2].on_train_begin(resumed)
    assert resumed.state.step == resumed.state.batches_in_epoch == loop.state.step


def test_student_alone_never_runs_the_teacher():
    calls = []

    class Spy(Adapter):
        def teacher(self, model, batch):
            calls.append(1)
            return super().teacher(model, batch)

    student = Net(16)
    loss = build_loss("ce")
    loop = DistillationLoop(
        student=student,
        loss_fn=loss,
        adapter=Spy(),
        teacher=make_teacher(),
        train_data=torch.utils.data.DataLoader(ToyData(), batch_size=8),
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
        accelerator=make_accelerator(cpu=True),
    )
    loop.run()
    assert loop.state.step == N // 8 and calls == []


def test_bad_setups_name_the_fix():
    student = Net(16)
    loader = torch.utils.data.DataLoader(ToyData(), batch_size=8)
    with pytest.raises(ConfigError, match="no teacher was given"):
        DistillationLoop(
            student=student,
            loss_fn=build_loss("kd"),
            adapter=Adapter(),
            train_data=loader,
            optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
            accelerator=make_accelerator(cpu=True),
        )
    hint = build_loss("hint", {"hint": {"student_dim": 16, "teacher_dim": 32, "kind": "linear"}})
    with pytest.raises(ConfigError, match="trainable_parameters"):
        DistillationLoop(
            student=student,
            loss_fn=hint,
            adapter=Adapter(),
            teacher=make_teacher(),
            train_data=loader,
            optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
            accelerator=make_accelerator(cpu=True),
        )


def test_max_steps_stops_mid_epoch_and_still_evaluates(tmp_path):
    loop = make_loop(tmp_path, max_steps=5)
    state = loop.run()
    assert state.step == 5 and state.epoch == 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "end" and "val/accuracy" in lines[-1]
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000005"


def test_max_steps_at_an_epochs_last_batch_ends_that_epoch(tmp_path):
    loop = make_loop(tmp_path, epochs=0, max_steps=2 * N // 8)  # exactly two epochs
    state = loop.run()
    assert state.step == 16 and state.epoch == 2 and state.batches_in_epoch == 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [(x["epoch"], x["step"]) for x in lines if x["event"] == "epoch"]
    assert epochs == [(1, 8), (2, 16)] and "val/accuracy" in lines[-2]
    assert lines[-1]["event"] == "end" and lines[-1]["epoch"] == 2

    # Killed at that epoch's end, after the last step's checkpoint (epoch 1, all 8 batches of
    # epoch 2 done): the resumed run ends epoch 2 as the uninterrupted one did.
    class CrashAtEpochEnd(Callback):
        def on_epoch_end(self, loop):
            if loop.state.epoch == 2:
                raise KeyboardInterrupt

    run_dir = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        make_loop(run_dir, epochs=0, max_steps=16, checkpoint_every=4,
                  callbacks=[CrashAtEpochEnd()]).run()  # fmt: skip
    resumed = make_loop(run_dir, epochs=0, max_steps=16, checkpoint_every=4)
    again = resumed.run()
    assert resumed.callbacks[-2].resumed_from.name == "step-00000016"
    assert again.epoch == 2 and again.batches_in_epoch == 0 and again.best == state.best
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(x["epoch"], x["step"]) for x in lines if x["event"] == "epoch"] == epochs


def test_tensorboard_and_best_weights_are_written(tmp_path):
    loop = make_loop(tmp_path, callbacks=[TensorBoardLogger(tmp_path / "tb", every_steps=2)])
    loop.run()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "best.safetensors").is_file()


def test_epochs_zero_with_max_steps_runs_to_the_step_budget():
    loop = make_loop(None, epochs=0, max_steps=20)
    assert loop.run().step == 20 and loop.state.epoch == 2


def test_no_resume_starts_afresh_and_drops_the_old_checkpoints(tmp_path):
    make_loop(tmp_path, epochs=2).run()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000016"
    fresh = make_loop(tmp_path, epochs=1, max_steps=3)
    fresh.callbacks[-2].resume = False
    fresh.run()
    assert fresh.state.step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000003"]


def test_progress_prints_an_evaluation_only_when_one_ran(capsys):
    val = ToyData(n=32, seed=99)
    evaluate = EvaluateCallback(
        lambda m: {"val/accuracy": float((m(val.x)["logits"].argmax(-1) == val.y).float().mean())},
        monitor="val/accuracy",
        every_epochs=2,
    )
    make_loop(None, epochs=4, callbacks=[evaluate, ProgressBar("toy")]).run()
    printed = [line for line in capsys.readouterr().out.splitlines() if "val/accuracy" in line]
    assert [line.split(":")[0] for line in printed] == ["toy epoch 2", "toy epoch 4"]


def test_keep_best_restores_the_weights_of_the_best_evaluation():
    """KeepBest (runs without checkpoints) copies the student at each new best evaluation;
    restore() gives back exactly the weights of the best epoch, not the last one's."""
    from common.callbacks import KeepBest

    scores = iter([0.2, 0.9, 0.5, 0.9])  # epoch 2 is the best; epoch 4 only ties it
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val/score": next(scores)}

    keep = KeepBest()
    loop = make_loop(
        None, epochs=4, callbacks=[EvaluateCallback(evaluate, monitor="val/score"), keep]
    )
    loop.run()
    assert len(seen) == 4 and keep.step == loop.state.best["step"]
    last = {k: v.clone() for k, v in loop.student.state_dict().items()}
    assert keep.restore(loop.student)
    restored = loop.student.state_dict()
    for k in restored:
        torch.testing.assert_close(restored[k], seen[1][k], rtol=0, atol=0)
    assert any(not torch.equal(restored[k], last[k]) for k in restored)
    assert not KeepBest().restore(loop.student)  # nothing kept: nothing loaded


def test_select_best_reports_the_evaluation_of_the_weights_it_ends_with(tmp_path):
    """With select_best, train() restores the best validation's weights, and the evaluation it
    hands back (``state.last_eval``, recorded beside the test score) is that one, not the last
    epoch's; without it, the last."""
    from torch.utils.data import DataLoader

    from common.recipe import Recipe, train

    scores = iter([0.5, 0.9, 0.7])  # the best comes second

    def evaluate(model):
        return {"val/accuracy": next(scores)}

    def run(select_best: bool, name: str):
        torch.manual_seed(0)
        recipe = Recipe(name=name, run_dir=tmp_path / name, epochs=3, lr=0.01,
                        weight_decay=0.0, select_best=select_best)  # fmt: skip
        loader = DataLoader(ToyData(), batch_size=16)
        return train(Net(hidden=8), build_loss("ce"), Adapter(), loader, evaluate, recipe)

    _, state = run(True, "best")
    assert state.best["metrics"] == {"val/accuracy": 0.9}
    assert state.last_eval == {"val/accuracy": 0.9}
    scores = iter([0.5, 0.9, 0.7])
    _, state = run(False, "last")
    assert state.last_eval == {"val/accuracy": 0.7}
