"""Checkpoints: pickle-free, atomic, complete round trips, and clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from common import checkpoint as ckpt
from common.errors import CheckpointError
from common.io import atomic_write_json
from common.losses import build_loss


def _objects(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    loss = build_loss("hint", {"hint": {"student_dim": 8, "teacher_dim": 5, "kind": "linear"}})
    opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    return model, loss, opt, sched


def _train_a_bit(model, loss, opt, sched):
    for _ in range(3):
        x = torch.randn(5, 4)
        h = model[1](model[0](x))
        out = model[2](h).pow(2).mean() + loss({"hint": h}, {"hint": torch.randn(5, 5)}, {}).total
        out.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_round_trip_restores_everything(tmp_path):
    model, loss, opt, sched = _objects(0)
    _train_a_bit(model, loss, opt, sched)
    path = ckpt.save_checkpoint(
        tmp_path,
        3,
        model=model,
        loss_module=loss,
        optimizer=opt,
        scheduler=sched,
        loop_state={"step": 3, "best": {"v": 0.5}},
    )
    expected_next = torch.rand(3)  # RNG after the save; the load must replay it

    model2, loss2, opt2, sched2 = _objects(1)
    state = ckpt.load_checkpoint(
        path, model=model2, loss_module=loss2, optimizer=opt2, scheduler=sched2
    )
    assert state == {"step": 3, "best": {"v": 0.5}}
    torch.testing.assert_close(torch.rand(3), expected_next)
    for a, b in zip(
        [*model.parameters(), *loss.parameters()],
        [*model2.parameters(), *loss2.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sched2.state_dict() == sched.state_dict()
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd1["param_groups"] == sd2["param_groups"]
    for i, st in sd1["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(sd2["state"][i][k], v)
    # Training on from both gives the same result: nothing the optimizer needs was lost.
    torch.manual_seed(5)
    _train_a_bit(model, loss, opt, sched)
    torch.manual_seed(5)
    _train_a_bit(model2, loss2, opt2, sched2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_files_are_safetensors_and_json_only(tmp_path):
    model, loss, opt, sched = _objects()
    path = ckpt.save_checkpoint(
        tmp_path, 1, model=model, loss_module=loss, optimizer=opt, scheduler=sched, loop_state={}
    )
    names = sorted(p.name for p in path.iterdir())
    assert names == [
        "loss.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    json.loads((path / "state.json").read_text())


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, _loss, opt, _sched = _objects()
    first = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, loop_state={"step": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, model=model, optimizer=opt, loop_state={"step": 2})
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert ckpt.load_checkpoint(first, model=model) == {"step": 1}


def test_latest_pointer_and_pruning(tmp_path):
    model, *_ = _objects()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model=model, loop_state={"step": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"
    # A stale pointer (its folder gone) falls back to the newest complete checkpoint.
    (tmp_path / "latest").write_text("step-00000009\n")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"
    # An incomplete folder (no state.json) is never picked.
    (tmp_path / "step-00000010").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"


def test_loading_into_a_different_model_is_a_clear_error(tmp_path):
    model, *_ = _objects()
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, loop_state={})
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        ckpt.load_checkpoint(path, model=other)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "nowhere", model=model)


def test_atomic_write_text_leaves_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write_json(target, {"a": 1})

    def fail(*args):
        raise OSError("no space")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_resuming_under_other_settings_is_refused_with_the_difference(tmp_path):
    model, *_ = _objects()
    path = ckpt.save_checkpoint(
        tmp_path, 1, model=model, loop_state={}, config={"lr": 0.1, "epochs": 3}
    )
    assert ckpt.load_checkpoint(path, model=model, config={"epochs": 3, "lr": 0.1}) == {}
    with pytest.raises(CheckpointError, match=r"lr: 0.1 -> 0.2.*new run directory"):
        ckpt.load_checkpoint(path, model=model, config={"lr": 0.2, "epochs": 3})


def test_each_process_restores_its_own_generators(tmp_path):
    """Per-process generator states: process k gets its own back; in a checkpoint from before
    they were kept (process 0's alone), every process gets process 0's."""
    import random

    import numpy as np

    model = nn.Linear(2, 2)
    states, draws = [], []
    for seed in (10, 11):  # two "processes", told apart by their seeds
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        states.append(ckpt.rng_state())
        draws.append((torch.rand(2), np.random.rand(), random.random()))
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, loop_state={}, rng_states=states)

    def restored(index: int) -> tuple:
        torch.manual_seed(99), np.random.seed(99), random.seed(99)
        ckpt.load_checkpoint(path, model=model, process_index=index, processes=2)
        return torch.rand(2), np.random.rand(), random.random()

    for index in (0, 1):
        got = restored(index)
        torch.testing.assert_close(got[0], draws[index][0])
        assert got[1:] == draws[index][1:]
    meta = json.loads((path / "state.json").read_text())
    for key in ("processes", "rng_processes"):  # the older layout
        del meta[key]
    atomic_write_json(path / "state.json", meta)
    got = restored(1)
    torch.testing.assert_close(got[0], draws[0][0])
    assert got[1:] == draws[0][1:]


def test_a_checkpoint_of_other_process_count_is_refused(tmp_path):
    model = nn.Linear(2, 2)
    states = [ckpt.rng_state(), ckpt.rng_state()]
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, loop_state={}, rng_states=states)
    assert ckpt.load_checkpoint(path, model=model, processes=2, process_index=1) == {}
    with pytest.raises(
        CheckpointError, match=r"2 process\(es\), this run has 1.*--num_processes 2"
    ):
        ckpt.load_checkpoint(path, model=model)
