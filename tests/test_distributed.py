"""The shared loop under `accelerate launch` with 2 CPU processes (gloo) gives the same
student, regressor included, as 1 process: the multi-GPU/multi-node path is the real one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TOY = Path(__file__).with_name("toy.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(*args: str) -> list[str]:
    # `--cpu --num_processes 2` starts a single process; `--multi_gpu` with
    # Accelerator(cpu=True) is what starts two gloo processes on a CPU-only machine.
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), *args,
    ]  # fmt: skip


def _launch(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # Keep both processes to one thread each: 2 processes x N threads on 2 cores thrash.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _run(cmd: list[str], cwd: Path) -> str:
    proc = _launch(cmd, cwd)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = tmp_path / "one.safetensors"
    two = tmp_path / "two.safetensors"
    out1 = _run([sys.executable, str(TOY), "--out", str(one)], tmp_path)
    out2 = _run(_launch_two(str(TOY), "--out", str(two)), tmp_path)
    assert "processes=1 steps=24" in out1
    assert "processes=2 steps=24" in out2
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys() and any(k.startswith("loss.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_resume_each_its_own_generators(tmp_path):
    """A killed 2-process run whose processes drew different amounts of randomness resumes
    to the weights of an uninterrupted one: each process restores its own generator states.
    (Restoring the writer's states everywhere, as before, gave process 1 process 0's noise.)"""
    whole, resumed = tmp_path / "whole.safetensors", tmp_path / "resumed.safetensors"
    common = [str(TOY), "--noise", "--out"]
    _run(_launch_two(*common, str(whole), "--run-dir", str(tmp_path / "a")), tmp_path)
    crashed = _launch(
        _launch_two(*common, str(resumed), "--run-dir", str(tmp_path / "b"), "--crash-at", "10"),
        tmp_path,
    )
    assert crashed.returncode != 0 and not resumed.exists()
    out = _run(_launch_two(*common, str(resumed), "--run-dir", str(tmp_path / "b")), tmp_path)
    assert "resumed from" in out and "step 8" in out
    assert "processes=2 steps=24" in out
    a, b = load_file(str(whole)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


@pytest.mark.slow
def test_image_distill_runs_under_two_processes(tmp_path):
    """The domain script, not only the loop: data, teacher, evaluation broadcast, checkpoints
    and the single writer of results all work with 2 gloo processes."""
    small = ["--max-train", "256", "--max-test", "128", "--batch-size", "64", "--epochs", "1"]
    _run(
        [
            sys.executable,
            "-m",
            "image_classification.scripts.train_teacher",
            *small,
            "--val-size",
            "128",
            "--stem",
            "imagenet",
            "--out-dir",
            str(tmp_path / "t"),
        ],
        tmp_path,
    )
    out = _run(
        _launch_two(
            "-m",
            "image_classification.scripts.distill",
            *small,
            "--teacher",
            str(tmp_path / "t" / "model"),
            "--methods",
            "kd",
            "--student",
            "tiny",
            "--out-dir",
            str(tmp_path / "d"),
        ),
        tmp_path,
    )
    assert out.count("summary:") == 1  # one process reports
    res = json.loads((tmp_path / "d" / "kd" / "seed-0" / "results.json").read_text())
    # 256 images, 2 processes x 64 per process = 128 per step: 2 steps, 256 examples.
    assert res["budget"] == {"epochs": 1, "steps": 2, "examples": 256}


def test_shutdown_distributed_tears_the_group_down(tmp_path):
    """run_main ends every script with this: a gloo group left alive at interpreter exit can
    abort one rank (seen once in CI: "terminate called without an active exception")."""
    import torch.distributed as dist

    from common.training import shutdown_distributed

    shutdown_distributed()  # single process, no group: nothing to do, no error
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        shutdown_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
