"""Multi-task policy distillation: one student with per-task input layers and heads around a
shared trunk, distilled from three tiny teachers (CartPole-v1, Acrobot-v1, Pendulum-v1),
saved, reloaded, and the script's errors for bad --tasks input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import RL_TINY

from common.errors import CheckpointError, ConfigError, DistilleryError, ShapeMismatchError
from common.losses import build_loss
from common.metrics import count_parameters
from reinforcement_learning import multitask
from reinforcement_learning.envs import TEST_SEED, VAL_SEED, EnvError, run_episodes
from reinforcement_learning.model_io import PolicyConfig, SB3Predictor, save_policy_dir
from reinforcement_learning.normalization import ObsNormalization
from reinforcement_learning.pipeline import evaluate_returns
from reinforcement_learning.scripts import distill_multitask, train_teacher
from reinforcement_learning.student_model.multitask import (
    MultiTaskConfig,
    MultiTaskPolicy,
    MultiTaskStudent,
    TaskConfig,
    load_multitask_dir,
    save_multitask_dir,
)
from reinforcement_learning.student_model.policy import CompactPolicy

TINY = RL_TINY  # 2 rounds of 256 steps per task, 20 optimizer steps per round

CARTPOLE_STATS = ObsNormalization(mean=(0.1, -0.2, 0.0, 0.3), var=(1.0, 4.0, 0.25, 2.0), clip=5.0)


def _tasks() -> list[TaskConfig]:
    """A discrete task with normalization and a continuous one with action bounds."""
    return [
        TaskConfig("CartPole-v1", 4, 2, False, CARTPOLE_STATS.to_dict()),
        TaskConfig(
            "Pendulum-v1", 3, 1, True, ObsNormalization.identity(3).to_dict(), [-2.0], [2.0]
        ),
    ]


@pytest.fixture(scope="module")
def teachers(rl_teacher, tmp_path_factory):
    """ENV_ID=TEACHER_DIR for three tiny teachers: the session's CartPole one, and Acrobot and
    Pendulum trained for one rollout each (4096 steps)."""
    out = {"CartPole-v1": rl_teacher}
    for env_id in ("Acrobot-v1", "Pendulum-v1"):
        run = tmp_path_factory.mktemp(env_id)
        out[env_id] = train_teacher.main(
            ["--env-id", env_id, "--timesteps", "2048", "--eval-episodes", "2",
             "--out-dir", str(run)]
        )  # fmt: skip
    return out


def _task_args(teachers) -> list[str]:
    return ["--tasks", *(f"{env}={path}" for env, path in teachers.items())]


def test_forward_shapes_per_task_and_the_losses_read_them():
    torch.manual_seed(0)
    policy = MultiTaskPolicy(_tasks(), (16, 8))
    discrete = policy(torch.randn(5, 4), "CartPole-v1")
    continuous = policy(torch.randn(7, 3), "Pendulum-v1")
    assert set(discrete) == {"logits"} and discrete["logits"].shape == (5, 2)
    assert set(continuous) == {"mean", "log_std"}
    assert continuous["mean"].shape == continuous["log_std"].shape == (7, 1)
    # The per-task view acts like a single-task student with the same outputs.
    obs = torch.randn(6, 4)
    view = policy.task_view("CartPole-v1")
    torch.testing.assert_close(view(obs)["logits"], policy(obs, "CartPole-v1")["logits"])
    # Each task's observation statistics are applied inside, as in the single-task student.
    single = CompactPolicy(4, 2, (8,), normalization=CARTPOLE_STATS)
    torch.testing.assert_close(policy.normalizers[0](obs), single.normalizer(obs))
    # Both tasks' losses (the registered terms, unchanged) reach the shared trunk.
    kl = build_loss("policy_kl=1")(
        {"logits": discrete["logits"]}, {"logits": torch.randn(5, 2)}, {}
    )
    gauss = build_loss("gaussian_kl=1")(
        continuous, {"mean": torch.randn(7, 1), "log_std": torch.zeros(7, 1)}, {}
    )
    grads = []
    for out in (kl, gauss):
        policy.zero_grad()
        out.total.backward()
        grads.append(policy.trunk[0].weight.grad.abs().sum().item())
    assert all(g > 0 for g in grads)
    # Parameters: per-task input layers and heads, one trunk, Pendulum's log-std.
    shared = 16 * 8 + 8
    inputs = (4 * 16 + 16) + (3 * 16 + 16)
    heads = (8 * 2 + 2) + (8 * 1 + 1) + 1
    assert count_parameters(policy) == shared + inputs + heads
    assert policy.task_parameters("CartPole-v1") == (4 * 16 + 16) + shared + (8 * 2 + 2)


def test_unknown_task_wrong_shape_and_bad_sizes_are_clear_errors():
    policy = MultiTaskPolicy(_tasks(), (8, 8))
    with pytest.raises(ConfigError, match=r"unknown task 'Acrobot-v1'.*CartPole-v1, Pendulum-v1"):
        policy(torch.zeros(1, 6), "Acrobot-v1")
    with pytest.raises(ShapeMismatchError, match="CartPole-v1, which takes 4-dim"):
        policy(torch.zeros(1, 3), "CartPole-v1")
    with pytest.raises(ConfigError, match="at least two sizes"):
        MultiTaskPolicy(_tasks(), (8,))
    with pytest.raises(ConfigError, match="appears twice"):
        MultiTaskPolicy([*_tasks(), _tasks()[0]], (8, 8))


def test_save_then_load_gives_identical_actions(tmp_path):
    torch.manual_seed(0)
    policy = MultiTaskPolicy(_tasks(), (16, 16)).eval()
    cfg = MultiTaskConfig(tasks=_tasks(), hidden=[16, 16], extra={"seed": 0})
    save_multitask_dir(policy, cfg, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors"]
    loaded, cfg2 = load_multitask_dir(tmp_path / "m")
    assert cfg2 == cfg
    student = MultiTaskStudent.load(tmp_path / "m")
    assert student.tasks == ["CartPole-v1", "Pendulum-v1"]
    for task, dim in (("CartPole-v1", 4), ("Pendulum-v1", 3)):
        obs = torch.randn(64, dim) * 3
        for key, value in policy(obs, task).items():
            torch.testing.assert_close(loaded(obs, task)[key], value, rtol=0, atol=0)
        batch = student.predict(obs.numpy(), task)
        if task == "CartPole-v1":
            expected = policy(obs, task)["logits"].argmax(-1).numpy()
            np.testing.assert_array_equal(batch, expected)
            assert isinstance(student.predict(obs[0].numpy(), task), int)
        else:
            assert batch.shape == (64, 1) and np.all(np.abs(batch) <= 2.0)  # clipped to bounds
        # One task's StudentPolicy plugs into SB3's evaluate_policy interface.
        actions, _ = SB3Predictor(student.for_task(task)).predict(obs.numpy())
        np.testing.assert_array_equal(actions, batch)
    with pytest.raises(ShapeMismatchError, match="takes 4-dim observations"):
        student.predict(np.zeros(3, np.float32), "CartPole-v1")


def test_loading_needs_no_stable_baselines3_and_refuses_other_folders(tmp_path):
    save_multitask_dir(
        MultiTaskPolicy(_tasks(), (8, 8)), MultiTaskConfig(_tasks(), [8, 8]), tmp_path / "m"
    )
    code = (
        "import sys, numpy as np\n"
        "from reinforcement_learning.student_model.multitask import MultiTaskStudent\n"
        f"s = MultiTaskStudent.load({str(tmp_path / 'm')!r})\n"
        "assert s.predict(np.zeros(4, np.float32), 'CartPole-v1') in (0, 1)\n"
        "assert s.predict(np.zeros(3, np.float32), 'Pendulum-v1').shape == (1,)\n"
        "bad = [m for m in sys.modules if m.startswith(('stable_baselines3', 'gymnasium'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    single = PolicyConfig("CartPole-v1", 4, 2, False, [8], ObsNormalization.identity(4).to_dict())
    save_policy_dir(CompactPolicy(4, 2, [8]), single, tmp_path / "single")
    with pytest.raises(CheckpointError, match=r"not a multi-task student.*StudentPolicy"):
        MultiTaskStudent.load(tmp_path / "single")
    with pytest.raises(CheckpointError, match="not a saved multi-task student"):
        MultiTaskStudent.load(tmp_path / "absent")


def test_three_teachers_into_one_student_end_to_end(teachers, tmp_path, capsys):
    argv = [*TINY, *_task_args(teachers), "--method", "dagger", "--seeds", "2",
            "--out-dir", str(tmp_path)]  # fmt: skip
    summary = distill_multitask.main(argv)
    actors = sum(
        json.loads((path / "config.json").read_text())["actor_params"] for path in teachers.values()
    )
    assert summary["n_seeds"] == 2 and set(summary["tasks"]) == set(teachers)
    # Fewer parameters than the three teachers' actors together (each task's path is a
    # 64x64 MLP like its teacher's actor; the trunk is shared).
    assert summary["fewer_params_than_teachers"]
    assert summary["student_params"] < actors == summary["teachers_actor_params"]
    for k in (0, 1):
        run = tmp_path / f"seed-{k}"
        res = json.loads((run / multitask.RESULTS).read_text())
        assert res["seed"] == k and res["student"]["params"] == summary["student_params"]
        assert res["budget"]["steps"] == 40 and res["budget"]["env_steps"] == 3 * 2 * 256
        for env_id, task in res["tasks"].items():
            assert {"test_return_mean", "teacher_return_mean", "random_return_mean", "kept"} <= set(
                task
            )
            assert len(task["test_returns"]) == 3
            gap = task["teacher_return_mean"] - task["random_return_mean"]
            if gap > 0:  # tiny teachers: some are no better than random (kept is NaN then)
                kept = (task["test_return_mean"] - task["random_return_mean"]) / gap
                assert task["kept"] == pytest.approx(kept)
            else:
                assert np.isnan(task["kept"])
            assert ("action_gap" if env_id == "Pendulum-v1" else "agreement") in task
            # dagger: round 0 all teacher, round 1 β = 0.5.
            fractions = [r["teacher_actions"] for r in res["rounds"][env_id]]
            assert fractions[0] == 1.0 and 0.3 < fractions[1] < 0.7
        assert res["loss"]["Pendulum-v1"]["weights"] == {"gaussian_kl": 1.0}
        assert res["loss"]["Acrobot-v1"]["weights"] == {"policy_kl": 1.0}
        # One loss term per task, summed each step; validation per task each round.
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [x for x in lines if x["event"] == "epoch"]
        assert len(epochs) == 2
        for env_id in teachers:  # the student learns every task: each loss falls
            first, last = (x[f"train/loss/{env_id}"] for x in epochs)
            assert np.isfinite(first) and last < first
            assert all(f"val/{env_id}/return" in x for x in epochs)
    task = summary["tasks"]["CartPole-v1"]
    a, b = task["return"]["values"]
    assert task["return"]["mean"] == pytest.approx((a + b) / 2)
    assert task["return"]["std"] == pytest.approx(abs(a - b) / 2**0.5)
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"].keys() == teachers.keys()
    out = capsys.readouterr().out
    assert "multi-task dagger, 3 tasks, 2 seed(s)" in out and "Acrobot-v1" in out
    # The saved student replays each task's test episodes action for action.
    student = MultiTaskStudent.load(tmp_path / "seed-1" / "model")
    res = json.loads((tmp_path / "seed-1" / multitask.RESULTS).read_text())
    for env_id in teachers:
        again = run_episodes(
            lambda o, t=env_id: np.asarray(student.predict(o, t)), env_id, 3, TEST_SEED
        )
        assert again.returns == res["tasks"][env_id]["test_returns"]
    # The same command again reuses both seeds.
    again = distill_multitask.main(argv)
    assert "seed 0: finished before with the same settings; reused" in capsys.readouterr().out
    assert again["tasks"]["CartPole-v1"]["return"] == task["return"]


def test_select_best_ends_with_the_round_whose_worst_task_kept_most(teachers, tmp_path):
    """--select-best: the saved student plays every task's validation episodes exactly as in
    the round with the best val/kept_min (the first of equals), not the last round."""
    argv = [*TINY, *_task_args(teachers), "--rounds", "4", "--val-episodes", "2",
            "--select-best", "--out-dir", str(tmp_path)]  # fmt: skip
    distill_multitask.main(argv)
    lines = (tmp_path / "seed-0" / "metrics.jsonl").read_text().splitlines()
    epochs = [x for x in map(json.loads, lines) if x["event"] == "epoch"]
    assert len(epochs) >= 4
    best = max(epochs, key=lambda x: x["val/kept_min"])  # max() keeps the first of equals
    student = MultiTaskStudent.load(tmp_path / "seed-0" / "model")
    for env_id in teachers:
        val = run_episodes(
            lambda o, t=env_id: np.asarray(student.predict(o, t)), env_id, 2, VAL_SEED
        )
        assert val.mean == pytest.approx(best[f"val/{env_id}/return"]), env_id


def test_task_view_evaluates_with_the_single_task_helpers(teachers):
    from reinforcement_learning.teacher_model.ppo import load_teacher

    teacher = load_teacher(teachers["CartPole-v1"])
    tasks = [TaskConfig("CartPole-v1", 4, 2, False, teacher.normalization.to_dict()), _tasks()[1]]
    view = MultiTaskPolicy(tasks, (8, 8)).task_view("CartPole-v1")
    metrics, stats = evaluate_returns(
        view, "CartPole-v1", teacher.spec, 2, TEST_SEED, "test", teacher.policy
    )
    assert len(stats.returns) == 2 and 0.0 <= metrics["test/agreement"] <= 1.0


@pytest.mark.parametrize(
    ("tasks", "error", "match"),
    [
        (["CartPole-v1"], ConfigError, "at least two tasks"),
        (["CartPole-v1=A", "Acrobot-v1"], ConfigError, r"'Acrobot-v1': write ENV_ID=TEACHER_DIR"),
        (["CartPole-v1=A", "=B"], ConfigError, "write ENV_ID=TEACHER_DIR"),
        (["CartPole-v1=A", "CartPole-v1=B"], ConfigError, "appears twice"),
        (
            ["CartPole-v1=A", "Acrobat-v1=B"],
            EnvError,
            "unknown environment id 'Acrobat-v1'.*Acrobot-v1",
        ),
    ],
)
def test_bad_tasks_input_is_one_clear_error(tmp_path, tasks, error, match):
    with pytest.raises(error, match=match) as err:
        distill_multitask.main(["--tasks", *tasks, "--out-dir", str(tmp_path)])
    assert isinstance(err.value, DistilleryError)


def test_teacher_of_another_env_and_an_oversized_student_are_refused(teachers, tmp_path):
    cartpole, pendulum = teachers["CartPole-v1"], teachers["Pendulum-v1"]
    with pytest.raises(
        ShapeMismatchError, match=r"trained on CartPole-v1\) has 4-dim.*Acrobot-v1 has 6-dim"
    ):
        distill_multitask.main(
            ["--tasks", f"Acrobot-v1={cartpole}", f"Pendulum-v1={pendulum}",
             "--out-dir", str(tmp_path)]
        )  # fmt: skip
    with pytest.raises(ConfigError, match="not fewer than the teachers' actors together"):
        distill_multitask.main(
            [*_task_args(teachers), "--hidden", "256", "256", "--out-dir", str(tmp_path)]
        )
    with pytest.raises(ConfigError, match="at least two sizes"):
        distill_multitask.main(
            [*_task_args(teachers), "--hidden", "64", "--out-dir", str(tmp_path)]
        )


def test_the_command_line_prints_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "reinforcement_learning.scripts.distill_multitask",
         "--tasks", "CartPole-v1", "Acrobot-v1=x", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --tasks 'CartPole-v1': write ENV_ID=TEACHER_DIR, e.g. --tasks "
        "CartPole-v1=runs/quick/reinforcement-learning/CartPole-v1/teacher/model"
    ]
