"""Reinforcement learning end to end on CartPole (and Pendulum for Gaussian policies) with tiny
budgets: PPO teacher, each distillation method, saved students, normalization, the errors a
user can run into, and GIF playback."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RL_TINY
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.callbacks import CheckpointCallback
from common.checkpoint import latest_checkpoint
from common.errors import CheckpointError, ConfigError, DistilleryError, ShapeMismatchError
from common.results import load_results
from reinforcement_learning.data import replay
from reinforcement_learning.data.replay import Collector, StateBuffer, beta_schedule
from reinforcement_learning.envs import (
    TEST_SEED,
    VAL_SEED,
    EnvError,
    env_space_spec,
    run_episodes,
    teacher_return_kept,
)
from reinforcement_learning.model_io import (
    PolicyConfig,
    SB3Predictor,
    StudentPolicy,
    load_policy_dir,
    save_policy_dir,
)
from reinforcement_learning.normalization import ObsNormalization
from reinforcement_learning.pipeline import evaluate_returns, greedy
from reinforcement_learning.scripts import distill, play, train_teacher
from reinforcement_learning.student_model.policy import CompactPolicy
from reinforcement_learning.task import PolicyDistillTask
from reinforcement_learning.teacher_model import ppo
from reinforcement_learning.teacher_model.hyperparams import env_settings
from reinforcement_learning.teacher_model.ppo import TeacherError, load_teacher

TINY = RL_TINY


@pytest.fixture(scope="module")
def teacher_dir(rl_teacher):
    return rl_teacher


def _student_config(continuous: bool, stats: ObsNormalization) -> PolicyConfig:
    return PolicyConfig(
        env_id="Pendulum-v1" if continuous else "CartPole-v1",
        obs_dim=stats.obs_dim,
        action_dim=1 if continuous else 2,
        continuous=continuous,
        hidden=[8],
        normalization=stats.to_dict(),
        action_low=[-2.0] if continuous else None,
        action_high=[2.0] if continuous else None,
    )


def test_teacher_trains_saves_and_writes_results(teacher_dir):
    res = load_results(teacher_dir.parent)
    assert res["domain"] == "reinforcement-learning" and res["role"] == "teacher"
    assert res["dataset"] == "CartPole-v1" and res["metrics"]["primary"] == "test/return_mean"
    assert res["budget"]["env_steps"] == 3072  # 12 rollouts of 8 envs x 32 steps
    final = res["metrics"]["final"]
    # Even 3k steps of PPO beat a random policy on the same seeded episodes.
    assert final["test/return_mean"] > final["test/random_return_mean"] + 10
    # SB3's default MlpPolicy actor: 4->64->64->2.
    assert res["student"]["params"] == 4 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2
    assert res["student"]["params_with_critic"] > res["student"]["params"]
    stats = json.loads((teacher_dir / "normalization.json").read_text())
    assert stats["enabled"] and stats["count"] > 3000 and len(stats["mean"]) == 4
    config = json.loads((teacher_dir / "config.json").read_text())
    assert config["env_id"] == "CartPole-v1" and config["hyperparams"]["n_steps"] == 32
    # Checkpoints (every 307 steps here) are gone once the model is saved.
    assert not (teacher_dir.parent / "checkpoints").exists()


def test_a_finished_teacher_is_reused_only_for_the_same_settings(teacher_dir, capsys):
    run = teacher_dir.parent
    before = (run / "results.json").read_text()
    argv = ["--timesteps", "3072", "--eval-episodes", "3", "--out-dir", str(run)]
    train_teacher.main(argv)
    assert "teacher reused" in capsys.readouterr().out
    assert (run / "results.json").read_text() == before
    # Any other setting is another teacher (the next call would train): not reused.
    from common.results import finished_run

    stored = json.loads(before)["extra"]["settings"]
    other = {**stored, "args": {**stored["args"], "seed": 1}}
    assert finished_run(run, stored) is not None and finished_run(run, other) is None


def test_a_crashed_teacher_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    hp = env_settings("CartPole-v1").ppo  # 8 envs x 32 steps: 256-step rollouts
    run = lambda **kw: ppo.train_ppo(  # noqa: E731
        "CartPole-v1", hp, 1024, 0, tmp_path / "sb3", progress=False, **kw
    )
    kw = {"checkpoint_dir": tmp_path / "ck", "checkpoint_every": 256, "settings": {"a": 1}}
    save = ppo.RolloutCheckpoint.save

    def save_then_crash(self):
        out = save(self)
        if self.num_timesteps >= 512:
            raise KeyboardInterrupt  # killed right after the 512-step checkpoint
        return out

    monkeypatch.setattr(ppo.RolloutCheckpoint, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(**kw)
    monkeypatch.setattr(ppo.RolloutCheckpoint, "save", save)
    found = latest_checkpoint(tmp_path / "ck")
    assert found is not None and found.name == "step-000000512"
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-000000512"]  # older removed
    saved_count = json.loads((found / "vecnormalize.json").read_text())["obs_rms"]["count"]
    with pytest.raises(CheckpointError, match="other settings"):
        run(**{**kw, "settings": {"a": 2}})
    resumed = run(**kw)
    assert "resumed from" in capsys.readouterr().out
    assert resumed.model.num_timesteps == 1024  # the same total, not 512 + 1024
    assert resumed.model._n_updates == 4 * hp.n_epochs  # two updates saved, two after
    # CartPole's linear learning-rate schedule went on from where it was: the first update
    # after resuming (at 768 of 1024 steps) ran at a quarter of the peak rate.
    # (SB3 logs an update's figures in the next iteration's row.)
    with open(tmp_path / "sb3" / "resumed-at-512" / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first = next(r for r in rows if r["train/learning_rate"])
    assert float(first["train/learning_rate"]) == pytest.approx(hp.learning_rate * 0.25)
    assert int(first["train/n_updates"]) == 3 * hp.n_epochs
    # The normalization statistics carried on from the checkpoint's, not from scratch.
    assert resumed.venv.obs_rms.count >= saved_count + 512
    # The log of the first part survives; the resumed part logs beside it.
    assert len((tmp_path / "sb3" / "progress.csv").read_text().splitlines()) >= 2
    assert (tmp_path / "sb3" / "resumed-at-512" / "progress.csv").is_file()


def test_teacher_wrapper_acts_like_sb3_predict_on_normalized_obs(teacher_dir):
    teacher = load_teacher(teacher_dir)
    obs = np.random.default_rng(0).normal(0, 1, (256, 4)).astype(np.float32)
    ours = greedy(teacher.policy, teacher.spec)(obs)
    sb3, _ = teacher.model.predict(teacher.normalization.apply(obs), deterministic=True)
    np.testing.assert_array_equal(ours, sb3)


def test_student_normalization_equals_vecnormalize():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0), clip_obs=3.0)
    venv.reset()
    for _ in range(200):  # move the running statistics away from their start
        venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
    stats = ObsNormalization.from_vecnormalize(venv)
    assert stats.clip == 3.0 and abs(stats.mean[0]) > 0
    raw = np.random.default_rng(1).normal(0, 2, (500, 4)).astype(np.float32)
    raw[0] = [100.0, -100.0, 50.0, -50.0]  # far outside: exercises the clipping
    expected = venv.normalize_obs(raw)
    np.testing.assert_array_equal(stats.apply(raw), expected)
    student = CompactPolicy(4, 2, (8,), normalization=stats)
    got = student.normalizer(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.abs(got).max() == pytest.approx(3.0)


@pytest.mark.parametrize("continuous", [False, True])
def test_saved_student_reloads_with_identical_actions(tmp_path, continuous):
    stats = ObsNormalization(mean=(0.5, -1.0, 2.0), var=(4.0, 0.25, 1.0), clip=5.0)
    cfg = _student_config(continuous, stats)
    torch.manual_seed(0)
    model = CompactPolicy(3, cfg.action_dim, [8], continuous, stats).eval()
    save_policy_dir(model, cfg, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded, cfg2 = load_policy_dir(tmp_path / "m")
    assert cfg2 == cfg
    obs = torch.randn(64, 3) * 3
    for key, value in model(obs).items():
        torch.testing.assert_close(loaded(obs)[key], value, rtol=0, atol=0)
    policy = StudentPolicy.load(tmp_path / "m")
    batch = policy.predict(obs.numpy())
    assert batch.shape == ((64, 1) if continuous else (64,))
    if continuous:
        assert np.all(np.abs(batch) <= 2.0)  # clipped to the action bounds
    else:
        np.testing.assert_array_equal(batch, model(obs)["logits"].argmax(-1).numpy())
        assert isinstance(policy.predict(obs[0].numpy()), int)
    actions, state = SB3Predictor(policy).predict(obs.numpy())
    np.testing.assert_array_equal(actions, batch)
    assert state is None
    with pytest.raises(ShapeMismatchError, match="3-dim observations"):
        policy.predict(np.zeros(5, np.float32))


def test_sb3_evaluate_policy_runs_a_student(tmp_path):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    stats = ObsNormalization.identity(4)
    save_policy_dir(CompactPolicy(4, 2, [8]), _student_config(False, stats), tmp_path)
    policy = StudentPolicy.load(tmp_path)
    env = make_vec_env("CartPole-v1", n_envs=2, seed=TEST_SEED)
    returns, lengths = evaluate_policy(
        SB3Predictor(policy), env, n_eval_episodes=2, return_episode_rewards=True
    )
    assert all(r == n for r, n in zip(returns, lengths, strict=True))  # CartPole: +1 per step
    # Env i's first episode is reset with seed TEST_SEED + i: our evaluation of the same seeded
    # episodes gives the same returns.
    ours = run_episodes(lambda o: np.asarray(policy.predict(o)), "CartPole-v1", 2, TEST_SEED)
    assert sorted(ours.returns) == sorted(returns)


def test_predict_needs_no_stable_baselines3(tmp_path):
    save_policy_dir(
        CompactPolicy(4, 2, [8]), _student_config(False, ObsNormalization.identity(4)), tmp_path
    )
    code = (
        "import sys, numpy as np\n"
        "from reinforcement_learning.model_io import StudentPolicy\n"
        f"a = StudentPolicy.load({str(tmp_path)!r}).predict(np.zeros(4, np.float32))\n"
        "assert a in (0, 1), a\n"
        "bad = [m for m in sys.modules if m.startswith(('stable_baselines3', 'gymnasium'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_replay_buffer_is_fifo_and_beta_schedules():
    buf = StateBuffer(5, 2)
    buf.add(np.arange(6).reshape(3, 2))
    buf.add(np.arange(6, 14).reshape(4, 2))
    assert len(buf) == 5 and buf.added == 7
    assert sorted(buf.states[:, 0].tolist()) == [4, 6, 8, 10, 12]  # states 0 and 1 dropped
    buf.add(np.arange(100, 120).reshape(10, 2))  # more than fit at once
    assert sorted(buf.states[:, 0].tolist()) == [110, 112, 114, 116, 118]
    assert buf.sample(7, torch.Generator().manual_seed(0)).shape == (7, 2)
    dagger = beta_schedule("dagger", 0.5)
    assert [dagger(r) for r in range(3)] == [1.0, 0.5, 0.25]
    assert beta_schedule("distill", 0.5)(7) == 1.0
    with pytest.raises(ConfigError):
        beta_schedule("dagger", 1.5)


def test_collector_beta_zero_lets_only_the_student_act(teacher_dir):
    teacher = load_teacher(teacher_dir)
    student = CompactPolicy(4, 2, [8])
    spec = env_space_spec("CartPole-v1")
    collector = Collector("CartPole-v1", spec, teacher.policy, student, n_envs=2, seed=0)
    buf = StateBuffer(1000, 4)
    stats = collector.collect(101, 0.0, buf, 0)
    assert stats.env_steps == 102 and len(buf) == 102 and stats.teacher_actions == 0.0
    stats = collector.collect(100, 1.0, buf, 1)
    assert stats.teacher_actions == 1.0 and collector.env_steps == 202
    collector.close()


@pytest.mark.parametrize("method", ["none", "distill", "dagger"])
def test_each_method_runs_end_to_end(teacher_dir, tmp_path, method):
    summary = distill.main(
        [*TINY, "--teacher", str(teacher_dir), "--methods", method, "--out-dir", str(tmp_path)]
    )
    row = summary["methods"][method]
    run = tmp_path / method / "seed-0"
    res = load_results(run)
    assert row["n_seeds"] == 1 and row["mean"] == res["metrics"]["final"]["test/return_mean"]
    assert row["std"] is None  # one seed: no spread measured
    assert row["budget"]["env_steps"] == res["budget"]["env_steps"]
    assert res["method"] == method and res["role"] == "student" and res["seed"] == 0
    assert res["student"]["params"] * 20 <= res["teacher"]["params"]
    final = res["metrics"]["final"]
    assert {"test/return_mean", "test/agreement", "test/teacher_return_kept"} <= set(final)
    if method == "none":
        # PPO gets at least the distillation budget (whole rollouts of 8 x 32 steps).
        assert res["budget"]["env_steps"] == 512 and set(res["loss"]["weights"]) == {"ppo"}
    else:
        assert res["budget"]["env_steps"] == 512 and res["budget"]["steps"] == 40
        assert res["loss"] == {
            "weights": {"policy_kl": 1.0},
            "options": {"policy_kl": {"temperature": 1.0}},
        }
        rounds = res["extra"]["rounds"]
        fractions = [r["teacher_actions"] for r in rounds]
        if method == "distill":
            assert fractions == [1.0, 1.0]
        else:  # round 0 all teacher, round 1 β = 0.5
            assert fractions[0] == 1.0 and 0.3 < fractions[1] < 0.7
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [x for x in lines if x["event"] == "epoch"]
        assert len(epochs) == 2 and all(np.isfinite(x["train/loss/policy_kl"]) for x in epochs)
        assert all("val/return" in x for x in epochs)
        # The student was distilled with the teacher's observation statistics.
        cfg = json.loads((run / "model" / "config.json").read_text())
        teacher_stats = json.loads((teacher_dir / "normalization.json").read_text())
        assert cfg["normalization"] == teacher_stats
    # The saved student reloads and replays the test episodes action for action.
    policy = StudentPolicy.load(run / "model")
    again = run_episodes(lambda o: np.asarray(policy.predict(o)), "CartPole-v1", 3, TEST_SEED)
    assert again.returns == res["extra"]["test_returns"]
    assert again.mean == pytest.approx(final["test/return_mean"])
    assert (tmp_path / "summary.json").is_file()


@pytest.mark.parametrize("method", ["none", "dagger"])
@pytest.mark.parametrize("select_best", [True, False])
def test_select_best_ends_with_the_best_validation_round(
    teacher_dir, tmp_path, method, select_best
):
    """--select-best: the saved student plays the validation episodes exactly as well as the
    best point of its learning curve (dagger's best round, the PPO baseline's best curve
    point); without it, as well as the last point."""
    argv = [*TINY, "--rounds", "4", "--val-episodes", "2", "--teacher", str(teacher_dir),
            "--methods", method, "--out-dir", str(tmp_path)]  # fmt: skip
    distill.main([*argv, "--select-best"] if select_best else argv)
    run = tmp_path / method / "seed-0"
    curve = [
        x["val/return"]
        for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if x["event"] == "epoch"
    ]
    assert len(curve) >= 4
    policy = StudentPolicy.load(run / "model")
    val = run_episodes(lambda o: np.asarray(policy.predict(o)), "CartPole-v1", 2, VAL_SEED)
    assert val.mean == pytest.approx(max(curve) if select_best else curve[-1])


def test_unset_distillation_options_come_from_the_environments_table():
    from common.cli import parse_args
    from reinforcement_learning.task import with_table_defaults

    def resolved(*argv: str) -> tuple:
        args = with_table_defaults(parse_args(distill.Args, list(argv), distill.PRESETS))
        return args.train_steps_per_round, args.val_episodes, args.lr_decay

    walker = ("--preset", "full", "--env-id", "Walker2d-v5")
    assert resolved(*walker) == (2000, 10, True)
    args = with_table_defaults(
        parse_args(distill.Args, [*walker, "--rounds", "3"], distill.PRESETS)
    )
    assert (args.rounds, args.steps_per_round) == (3, 5000)  # the flag, and the table's
    assert resolved(*walker, "--no-lr-decay", "--val-episodes", "3") == (2000, 3, False)
    assert resolved("--preset", "full") == (500, 5, False)  # LunarLander-v3
    assert resolved("--preset", "full", "--env-id", "Hopper-v5", "--lr-decay") == (500, 5, True)
    assert resolved("--preset", "quick") == (250, 5, False)  # the quick preset's own 250
    assert resolved("--env-id", "MountainCar-v0") == (500, 5, False)  # not in the table


def test_lr_decay_follows_a_cosine_to_zero(teacher_dir, tmp_path):
    """--lr-decay: the learning rate falls along a cosine from --lr to 0 over all rounds'
    optimizer steps; without it, it stays at --lr."""
    from reinforcement_learning.pipeline import CosineToZero

    cosine = CosineToZero(80)
    assert [cosine(s) for s in (0, 40, 80, 120)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    argv = [*TINY, "--rounds", "4", "--teacher", str(teacher_dir), "--methods", "dagger"]
    for flag, out in (([], "constant"), (["--lr-decay"], "decay")):
        distill.main([*argv, *flag, "--out-dir", str(tmp_path / out)])
    rates = {}
    for out in ("constant", "decay"):
        lines = (tmp_path / out / "dagger" / "seed-0" / "metrics.jsonl").read_text().splitlines()
        rates[out] = [x["train/lr"] for x in map(json.loads, lines) if x["event"] == "epoch"]
    assert rates["constant"] == pytest.approx([3e-3] * len(rates["constant"]))
    decay = rates["decay"][:4]  # one point per round (80 steps of 20)
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert decay[0] > 0.8 * 3e-3 and decay[-1] < 0.1 * 3e-3


def test_distillation_copies_the_teacher(teacher_dir, tmp_path):
    """With a real (if small) budget the student must act like the teacher almost everywhere,
    far above what an untrained student does."""
    summary = distill.main(
        [
            "--teacher", str(teacher_dir), "--methods", "distill", "--rounds", "2",
            "--steps-per-round", "1000", "--train-steps-per-round", "300", "--eval-episodes", "5",
            "--val-episodes", "1", "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert summary["methods"]["distill"]["metric_means"]["test/agreement"] > 0.9
    teacher = load_teacher(teacher_dir)
    torch.manual_seed(0)
    untrained = CompactPolicy(4, 2, [16], normalization=teacher.normalization)
    before, _ = evaluate_returns(
        untrained, "CartPole-v1", teacher.spec, 5, TEST_SEED, "test", teacher.policy
    )
    assert before["test/agreement"] < 0.9


def test_seeds_give_mean_and_std(teacher_dir, tmp_path):
    summary = distill.main(
        [*TINY, "--teacher", str(teacher_dir), "--methods", "none", "distill", "--seeds", "2",
         "--out-dir", str(tmp_path)]
    )  # fmt: skip
    row, base = summary["methods"]["distill"], summary["methods"]["none"]
    a, b = row["scores"]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx((a + b) / 2)
    assert row["std"] == pytest.approx(abs(a - b) / 2**0.5)
    assert row["gain_over_none"] == pytest.approx(row["mean"] - base["mean"])
    assert {load_results(tmp_path / "distill" / f"seed-{k}")["seed"] for k in (0, 1)} == {0, 1}


RESUMABLE = [*TINY, "--rounds", "3", "--checkpoint-every", "7"]
"""Three rounds of 20 steps, checkpoints every 7 steps (some mid-round) and after each round."""


def _distill_argv(teacher_dir: Path, out: Path, *methods: str) -> list[str]:
    return [*RESUMABLE, "--teacher", str(teacher_dir), "--methods", *methods, "--out-dir", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(teacher_dir, tmp_path_factory) -> Path:
    """distill and dagger runs of RESUMABLE that nothing interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted")
    distill.main(_distill_argv(teacher_dir, out, "distill", "dagger"))
    return out


def _crash(monkeypatch, where: str) -> None:
    """Make the next run die as a killed one would (KeyboardInterrupt): "mid-round" at step 52,
    its last checkpoint at step 49 (9 batches into round 2); "round-start" as round 2 starts
    collecting, its last checkpoint the end of round 1; "after-training" once the student is
    trained and tested, before anything is saved."""

    def interrupt(*_):
        raise KeyboardInterrupt

    if where == "mid-round":
        step_end = CheckpointCallback.on_step_end

        def killed(self, loop, logs):
            step_end(self, loop, logs)
            if loop.state.step == 52:
                interrupt()

        monkeypatch.setattr(CheckpointCallback, "on_step_end", killed)
    elif where == "round-start":
        collect = Collector.collect

        def killed(self, steps, beta, buffer, round_index):
            if round_index == 2:
                interrupt()
            return collect(self, steps, beta, buffer, round_index)

        monkeypatch.setattr(Collector, "collect", killed)
    else:
        monkeypatch.setattr(PolicyDistillTask, "_save", interrupt)


def _assert_same_run(run: Path, reference: Path) -> dict:
    """The same student, bit for bit, and the same results (all but wall times); returns them."""
    model = "model/model.safetensors"
    assert (run / model).read_bytes() == (reference / model).read_bytes()
    got, want = load_results(run), load_results(reference)
    as_json = lambda x: json.dumps(x, sort_keys=True)  # noqa: E731 (NaN equals NaN)
    for key in ("metrics", "budget", "loss"):
        assert as_json(got[key]) == as_json(want[key]), key
    for key in ("rounds", "test_returns", "settings"):
        assert as_json(got["extra"][key]) == as_json(want["extra"][key]), key
    return want


@pytest.mark.parametrize(
    "method, where",
    [
        ("dagger", "mid-round"),
        ("dagger", "round-start"),
        ("dagger", "after-training"),
        ("distill", "mid-round"),
    ],
)
def test_a_killed_distillation_resumes_to_the_same_student(
    teacher_dir, uninterrupted, tmp_path, monkeypatch, capsys, method, where
):
    argv = _distill_argv(teacher_dir, tmp_path, method)
    run = tmp_path / method / "seed-0"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _crash(m, where)
        distill.main(argv)
    assert latest_checkpoint(run / "checkpoints") and not (run / "results.json").exists()
    # The weights of every round collected so far (round 2 not yet when killed as it starts).
    rounds = {"mid-round": 3, "round-start": 2, "after-training": 3}[where]
    assert len(list((run / "checkpoints" / "rounds").iterdir())) == rounds
    # Other settings in the same folder: refused, naming what differs.
    with pytest.raises(CheckpointError, match=r"other settings \(lr: 0\.003 -> 0\.001\)"):
        distill.main([*argv, "--lr", "0.001"])
    capsys.readouterr()
    distill.main(argv)  # the same command again
    out = capsys.readouterr().out
    assert "resumed from" in out and f"collected the {rounds} round(s)" in out
    want = _assert_same_run(run, uninterrupted / method / "seed-0")
    score = want["metrics"]["final"]["test/return_mean"]
    assert f"{method} seed 0: test/return_mean {score:.4g}" in out


def test_a_killed_run_with_lr_decay_and_select_best_resumes_to_the_same_student(
    teacher_dir, tmp_path, monkeypatch
):
    """The learning-rate schedule and the best round's weights survive a kill too."""
    flags = ["--lr-decay", "--select-best"]
    reference = tmp_path / "reference"
    distill.main([*_distill_argv(teacher_dir, reference, "dagger"), *flags])
    argv = [*_distill_argv(teacher_dir, tmp_path / "killed", "dagger"), *flags]
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _crash(m, "mid-round")
        distill.main(argv)
    distill.main(argv)
    _assert_same_run(tmp_path / "killed" / "dagger" / "seed-0", reference / "dagger" / "seed-0")


def test_a_resume_whose_rounds_do_not_replay_is_refused(
    teacher_dir, uninterrupted, tmp_path, monkeypatch
):
    argv = _distill_argv(teacher_dir, tmp_path, "dagger")
    run = tmp_path / "dagger" / "seed-0"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _crash(m, "round-start")
        distill.main(argv)
    rounds = run / "checkpoints" / "rounds"
    record, first = rounds / "round-0001.safetensors", rounds / "round-0000.safetensors"
    kept = record.read_bytes()
    # Round 1 (β = 0.5) replayed with other student weights acts otherwise: other states.
    with safe_open(str(record), "pt") as f:
        meta = f.metadata()
    flipped = {k: -v if k.startswith("head.") else v for k, v in load_file(record).items()}
    save_file(flipped, str(record), metadata=meta)
    with pytest.raises(CheckpointError, match=r"round 1 again did not reproduce.*--no-resume"):
        distill.main(argv)
    record.write_bytes(kept)
    first.unlink()
    with pytest.raises(CheckpointError, match=r"round-0000\.safetensors is missing.*--no-resume"):
        distill.main(argv)
    distill.main([*argv, "--no-resume"])  # starts afresh: the uninterrupted run's student
    _assert_same_run(run, uninterrupted / "dagger" / "seed-0")


def test_subprocess_environments_collect_the_same_states(teacher_dir, tmp_path, monkeypatch):
    made, make = [], replay.make_collection_env

    def spy(*args):
        venv = make(*args)
        made.append(type(venv).__name__)
        return venv

    monkeypatch.setattr(replay, "make_collection_env", spy)
    argv = [*TINY, "--n-envs", "2", "--teacher", str(teacher_dir), "--methods", "dagger"]
    distill.main([*argv, "--out-dir", str(tmp_path / "dummy")])
    distill.main([*argv, "--vec-env", "subproc", "--out-dir", str(tmp_path / "subproc")])
    assert made == ["DummyVecEnv", "SubprocVecEnv"]  # two worker processes in the second
    subproc, dummy = (tmp_path / kind / "dagger" / "seed-0" for kind in ("subproc", "dummy"))
    res = _assert_same_run(subproc, dummy)
    assert res["budget"]["env_steps"] == 512 and "vec_env" not in res["extra"]["settings"]


def test_gaussian_teacher_and_student_on_pendulum(tmp_path):
    teacher_dir = train_teacher.main(
        ["--env-id", "Pendulum-v1", "--timesteps", "4096", "--eval-episodes", "2",
         "--out-dir", str(tmp_path / "teacher")]
    )  # fmt: skip
    teacher = load_teacher(teacher_dir)
    out = teacher.policy(torch.zeros(5, 3))
    assert set(out) == {"mean", "log_std"} and out["log_std"].shape == (5, 1)  # gSDE: per state
    summary = distill.main(
        ["--env-id", "Pendulum-v1", "--teacher", str(teacher_dir), "--methods", "dagger",
         "--rounds", "1", "--steps-per-round", "400", "--train-steps-per-round", "10",
         "--eval-episodes", "2", "--val-episodes", "1", "--out-dir", str(tmp_path / "d")]
    )  # fmt: skip
    res = load_results(tmp_path / "d" / "dagger" / "seed-0")
    assert res["loss"]["weights"] == {"gaussian_kl": 1.0}
    assert "test/action_gap" in res["metrics"]["final"]
    assert summary["methods"]["dagger"]["student_params"] * 10 <= summary["teacher"]["params"]
    policy = StudentPolicy.load(tmp_path / "d" / "dagger" / "seed-0" / "model")
    action = policy.predict(np.array([1.0, 0.0, 0.0], np.float32))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0


def test_mujoco_teacher_keeps_the_zoo_policy_settings_through_the_safe_loader(
    tmp_path, monkeypatch
):
    """A teacher with the zoo's HalfCheetah policy (ReLU 256x256, no orthogonal init,
    log-std -2; the table now uses the PPO paper's settings, which train 4x faster here): the
    safe loader (which unpickles nothing) rebuilds that policy, acting exactly as SB3's own."""
    from reinforcement_learning.teacher_model import hyperparams

    zoo = hyperparams.PPOHyperparams(
        n_steps=512, n_epochs=20, gamma=0.98, gae_lambda=0.92, learning_rate=2.0633e-05,
        clip_range=0.1, net_arch=(256, 256), activation="relu", ortho_init=False,
        log_std_init=-2.0, normalize_reward=True,
    )  # fmt: skip
    monkeypatch.setitem(hyperparams.ENV_TABLE, "HalfCheetah-v5", hyperparams.EnvSettings(ppo=zoo))
    hp = env_settings("HalfCheetah-v5").ppo
    assert (hp.activation, hp.net_arch, hp.log_std_init) == ("relu", (256, 256), -2.0)
    teacher_dir = train_teacher.main(
        ["--env-id", "HalfCheetah-v5", "--timesteps", "1024", "--eval-episodes", "1",
         "--out-dir", str(tmp_path / "teacher")]
    )  # fmt: skip
    teacher = load_teacher(teacher_dir)
    policy = teacher.model.policy
    assert isinstance(policy.mlp_extractor.policy_net[1], torch.nn.ReLU)
    assert [m.out_features for m in policy.mlp_extractor.policy_net[::2]] == [256, 256]
    obs = np.random.default_rng(0).normal(0, 1, (64, 17)).astype(np.float32)
    out = teacher.policy(torch.as_tensor(obs))
    # 1024 steps of lr 2e-5 move log-std only slightly away from its start at -2.
    assert out["log_std"].shape == (64, 6) and torch.allclose(
        out["log_std"], torch.full((64, 6), -2.0), atol=0.05
    )
    sb3, _ = teacher.model.predict(teacher.normalization.apply(obs), deterministic=True)
    ours = greedy(teacher.policy, teacher.spec)(obs)
    np.testing.assert_allclose(ours, sb3, rtol=1e-5, atol=1e-6)


def test_baseline_learning_curve_does_not_change_the_baseline(tmp_path):
    """The PPO baseline logs val returns at the points distillation evaluates; evaluating the
    actor mid-run leaves the global RNGs, and so the trained policy, as they were."""
    from reinforcement_learning.pipeline import train_baseline

    spec, hp = env_space_spec("CartPole-v1"), env_settings("CartPole-v1").ppo
    args = ("CartPole-v1", hp, 1024, (8,), spec, 0)
    plain, _, _, _ = train_baseline(*args, tmp_path / "plain", "plain")
    watched, _, _, _ = train_baseline(
        *args, tmp_path / "curve", "curve", curve_every=256, val_episodes=1
    )
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    events = [json.loads(line) for line in (tmp_path / "curve" / "metrics.jsonl").open()]
    steps = [e["env_steps"] for e in events]
    assert steps == sorted(steps) and steps[0] >= 256 and steps[-1] >= 1024 and len(steps) >= 4
    assert all(e["event"] == "epoch" and e["val/return"] > 0 for e in events)
    assert not (tmp_path / "plain" / "metrics.jsonl").exists()


def test_baseline_select_best_returns_the_best_curve_point(tmp_path, monkeypatch):
    """With select_best the PPO baseline ends with the actor of its best curve point (scripted
    validation returns put it at the second point), its statistics, and says where it was."""
    from reinforcement_learning import pipeline
    from reinforcement_learning.pipeline import train_baseline

    returns, seen = iter([10.0, 50.0, 20.0, 50.0, 30.0, 5.0, 40.0, 1.0]), []

    def scripted(model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val/return_mean": next(returns)}, None

    monkeypatch.setattr(pipeline, "evaluate_returns", scripted)
    spec, hp = env_space_spec("CartPole-v1"), env_settings("CartPole-v1").ppo
    student, run, normalization, best = train_baseline(
        "CartPole-v1", hp, 1024, (8,), spec, 0, tmp_path, "b", curve_every=256,
        val_episodes=1, select_best=True,
    )  # fmt: skip
    assert len(seen) >= 4 and best["epoch"] == 2 and best["value"] == 50.0
    assert best["candidates"] == len(seen) and best["step"] < run.model.num_timesteps
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, seen[1][k], rtol=0, atol=0)
    assert any(not torch.equal(student.state_dict()[k], seen[-1][k]) for k in seen[-1])
    assert normalization != run.normalization  # the statistics of then, not of the end


def test_teacher_return_kept_is_relative_to_random():
    assert teacher_return_kept(500, 500, 20) == 1.0
    assert teacher_return_kept(-200, -150, -1250) == pytest.approx(1050 / 1100)
    assert np.isnan(teacher_return_kept(10, 5, 5))


def test_unknown_env_id_is_refused_with_suggestions(tmp_path):
    with pytest.raises(EnvError, match=r"unknown environment id 'CartPol-v1'.*CartPole-v1") as err:
        train_teacher.main(["--env-id", "CartPol-v1", "--out-dir", str(tmp_path)])
    assert isinstance(err.value, DistilleryError)
    assert not (tmp_path / "model").exists()


def test_space_mismatch_between_teacher_and_env(teacher_dir, tmp_path):
    with pytest.raises(
        ShapeMismatchError, match=r"trained on CartPole-v1\) has 4-dim.*Acrobot-v1 has 6-dim"
    ):
        distill.main(["--env-id", "Acrobot-v1", "--teacher", str(teacher_dir),
                      "--out-dir", str(tmp_path)])  # fmt: skip
    stats = ObsNormalization.identity(4)
    save_policy_dir(CompactPolicy(4, 2, [8]), _student_config(False, stats), tmp_path / "s")
    with pytest.raises(ShapeMismatchError, match="observation/action spaces differ"):
        play.main(["--model", str(tmp_path / "s"), "--env-id", "Pendulum-v1", "--episodes", "1"])


def test_teacher_that_is_not_a_ppo_model(tmp_path):
    from stable_baselines3 import A2C

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "ppo.zip").write_text("not a model")
    with pytest.raises(TeacherError, match=r"not a zip archive.*train_teacher"):
        load_teacher(tmp_path / "text")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(TeacherError, match="not a stable-baselines3 model"):
        load_teacher(tmp_path / "other.zip")
    A2C("MlpPolicy", "CartPole-v1", device="cpu").save(tmp_path / "a2c.zip")
    with pytest.raises(TeacherError, match="not PPO") as err:
        distill.main(["--teacher", str(tmp_path / "a2c.zip"), "--out-dir", str(tmp_path / "o")])
    assert isinstance(err.value, CheckpointError)
    with pytest.raises(TeacherError, match="Train one first"):
        distill.main(["--teacher", str(tmp_path / "absent"), "--out-dir", str(tmp_path / "o")])


def test_bad_method_and_missing_student(tmp_path):
    with pytest.raises(ConfigError, match="unknown method"):
        distill.main(["--methods", "kd", "--out-dir", str(tmp_path)])
    with pytest.raises(CheckpointError, match="not a saved student"):
        StudentPolicy.load(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="neither a student"):
        play.main(["--model", str(tmp_path)])


def test_play_writes_a_gif_for_teacher_and_student(teacher_dir, tmp_path):
    out = play.main(
        ["--model", str(teacher_dir), "--episodes", "2", "--gif", str(tmp_path / "t.gif"),
         "--gif-frames", "6", "--width", "160"]
    )  # fmt: skip
    assert out["env_id"] == "CartPole-v1" and len(out["returns"]) == 2
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 6 and gif.size[0] == 160
    stats = ObsNormalization.identity(4)
    save_policy_dir(CompactPolicy(4, 2, [8]), _student_config(False, stats), tmp_path / "s")
    out = play.main(["--model", str(tmp_path / "s"), "--gif", str(tmp_path / "s.gif")])
    assert Path(out["gif"]).is_file() and len(out["returns"]) == 3
