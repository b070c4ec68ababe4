"""Loading an RL teacher or a training checkpoint never unpickles anything.

SB3's ``PPO.load`` decodes every ``:serialized:`` (base64 cloudpickle) entry of a zip's
``data`` JSON, and checkpoints used to hold a pickled ``VecNormalize``: a planted object there
ran code on load. Each test plants objects whose unpickling creates a marker file (a stand-in
for an attacker's command) and checks that every way in -- ``load_teacher``, ``play``,
``distill``, train_teacher's reuse and resume -- works without creating it. A control test
shows the planted payload does run under SB3's own loader.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.checkpoint import latest_checkpoint
from common.errors import DistilleryError
from reinforcement_learning.normalization import restore_vecnormalize, vecnormalize_state
from reinforcement_learning.pipeline import greedy
from reinforcement_learning.scripts import distill, play, train_teacher
from reinforcement_learning.teacher_model import ppo
from reinforcement_learning.teacher_model.hyperparams import env_settings
from reinforcement_learning.teacher_model.ppo import TeacherError, UnsafeFileError, load_teacher

TEACHER_ARGS = ["--timesteps", "256", "--eval-episodes", "1"]  # one rollout of 8 x 32 steps


class Touch:
    """Unpickling this creates ``marker``: what a malicious file would do with a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def payload(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(Touch(marker))).decode()


def plant_zip(src: Path, dst: Path, marker: Path) -> Path:
    """Copy SB3 zip ``src`` to ``dst`` with every ``:serialized:`` entry of ``data``, and a
    new entry, replaced by the payload."""
    with zipfile.ZipFile(src) as z:
        members = {name: z.read(name) for name in z.namelist()}
    data = json.loads(members["data"])
    pickled = [k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v]
    assert "policy_class" in pickled and "observation_space" in pickled
    for key in pickled:
        data[key][":serialized:"] = payload(marker)
    data["planted"] = {":type:": "<class 'object'>", ":serialized:": payload(marker)}
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny CartPole teacher run, and a copy of it whose ppo.zip is planted."""
    root = tmp_path_factory.mktemp("safe")
    clean = root / "clean"
    train_teacher.main([*TEACHER_ARGS, "--out-dir", str(clean)])
    planted = root / "planted"
    shutil.copytree(clean, planted)
    marker = root / "PWNED"
    plant_zip(clean / "model" / "ppo.zip", planted / "model" / "ppo.zip", marker)
    return clean, planted, marker


def _observations(dim: int) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1, (256, dim)).astype(np.float32)


def test_the_planted_payload_runs_under_sb3s_own_loader(runs, tmp_path):
    """The control: the planting is live, so the tests below are not vacuous."""
    from stable_baselines3 import PPO

    clean, _, _ = runs
    marker = tmp_path / "ran"
    planted = plant_zip(clean / "model" / "ppo.zip", tmp_path / "ppo.zip", marker)
    with contextlib.suppress(Exception):
        PPO.load(planted, device="cpu")
    assert marker.exists()


def test_load_teacher_unpickles_nothing_and_acts_as_before(runs):
    clean, planted, marker = runs
    before, after = load_teacher(clean / "model"), load_teacher(planted / "model")
    obs = _observations(4)
    np.testing.assert_array_equal(
        greedy(after.policy, after.spec)(obs), greedy(before.policy, before.spec)(obs)
    )
    assert after.env_id == "CartPole-v1" and after.config == before.config
    assert after.model.env is None  # nothing kept open: acting needs only the spaces
    assert not marker.exists()


def test_play_runs_a_planted_teacher(runs):
    clean, planted, marker = runs
    out = play.main(["--model", str(planted / "model"), "--episodes", "2"])
    assert out["env_id"] == "CartPole-v1" and out["gif"] is None
    assert (
        out["returns"] == play.main(["--model", str(clean / "model"), "--episodes", "2"])["returns"]
    )
    assert not marker.exists()


def test_distill_runs_on_a_planted_teacher(runs, tmp_path):
    _, planted, marker = runs
    flags = {f.name for f in dataclasses.fields(distill.Args)}
    needed = {"teacher", "methods", "rounds", "steps_per_round", "train_steps_per_round"}
    if not needed | {"eval_episodes", "val_episodes", "out_dir"} <= flags:
        pytest.skip("distill.py's flags changed; load_teacher is covered above")
    summary = distill.main(
        ["--teacher", str(planted / "model"), "--rounds", "1", "--steps-per-round", "64",
         "--train-steps-per-round", "2", "--eval-episodes", "1", "--val-episodes", "1",
         "--methods", "distill", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    assert "distill" in summary["methods"]
    assert not marker.exists()


def test_train_teacher_reuses_a_planted_run(runs, capsys):
    _, planted, marker = runs
    model = train_teacher.main([*TEACHER_ARGS, "--out-dir", str(planted)])
    assert "teacher reused" in capsys.readouterr().out and model == planted / "model"
    assert not marker.exists()


def test_pickled_weights_are_refused(runs, tmp_path):
    """``policy.pth`` is read with ``weights_only=True``: an object in it is refused."""
    clean, _, _ = runs
    marker = tmp_path / "ran"
    with zipfile.ZipFile(clean / "model" / "ppo.zip") as z:
        members = {name: z.read(name) for name in z.namelist()}
    torch.save({"weight": Touch(marker)}, tmp_path / "evil.pth")
    members["policy.pth"] = (tmp_path / "evil.pth").read_bytes()
    with zipfile.ZipFile(tmp_path / "ppo.zip", "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    with pytest.raises(TeacherError, match=r"policy\.pth is not a plain torch state dict"):
        load_teacher(tmp_path / "ppo.zip")
    assert not marker.exists()


def test_damaged_zips_are_one_clear_error(runs, tmp_path):
    clean, _, _ = runs
    good = (clean / "model" / "ppo.zip").read_bytes()
    truncated = tmp_path / "truncated" / "ppo.zip"
    truncated.parent.mkdir()
    truncated.write_bytes(good[: len(good) // 2])
    # Flip bytes inside policy.pth (SB3 stores members uncompressed): its CRC no longer matches.
    with zipfile.ZipFile(clean / "model" / "ppo.zip") as z:
        info = z.getinfo("policy.pth")
    header = info.header_offset  # local header: 30 bytes, then name and extra field
    name_len, extra_len = struct.unpack("<HH", good[header + 26 : header + 30])
    start = header + 30 + name_len + extra_len + info.compress_size // 2
    garbled = tmp_path / "garbled.zip"
    garbled.write_bytes(
        good[:start] + bytes(b ^ 0xFF for b in good[start : start + 64]) + good[start + 64 :]
    )
    with (
        zipfile.ZipFile(clean / "model" / "ppo.zip") as z,
        zipfile.ZipFile(tmp_path / "json.zip", "w") as out,
    ):
        for name in z.namelist():
            out.writestr(name, b"{not json" if name == "data" else z.read(name))
    cases = {truncated: "truncated", garbled: "damaged", tmp_path / "json.zip": "not SB3's JSON"}
    for path, what in cases.items():
        with pytest.raises(DistilleryError) as err:
            load_teacher(path)
        message = str(err.value)
        assert str(path) in message and what in message and "\n" not in message, message
    # Through the script too (it names the folder's zip).
    with pytest.raises(TeacherError, match="truncated"):
        play.main(["--model", str(truncated.parent), "--episodes", "1"])


def test_pickle_files_are_refused_unread(runs, tmp_path):
    clean, _, _ = runs
    marker = tmp_path / "ran"
    pkl = tmp_path / "vecnormalize.pkl"
    pkl.write_bytes(base64.b64decode(payload(marker)))
    with pytest.raises(UnsafeFileError, match=r"vecnormalize\.pkl is a pickle.*model/ folder"):
        load_teacher(pkl)
    with pytest.raises(UnsafeFileError):
        play.main(["--model", str(pkl), "--env-id", "CartPole-v1"])
    # A zip from elsewhere whose statistics are only in a pickle beside it: refused, naming it.
    shutil.copy(clean / "model" / "ppo.zip", tmp_path / "ppo.zip")
    with pytest.raises(UnsafeFileError, match=r"vecnormalize\.pkl.*normalization\.json") as err:
        load_teacher(tmp_path, env_id="CartPole-v1")
    assert str(pkl) in str(err.value) and "\n" not in str(err.value)
    # Beside our own normalization.json it is not needed, so it is ignored.
    shutil.copy(pkl, clean / "model" / "vecnormalize.pkl")
    try:
        load_teacher(clean / "model")
    finally:
        (clean / "model" / "vecnormalize.pkl").unlink()
    assert not marker.exists()


def test_a_zip_from_elsewhere_is_rebuilt_from_json_and_shapes(tmp_path):
    """Without our config.json: the env id is required, the hidden sizes come from the weights
    and the activation from SB3's JSON description of the pickled policy_kwargs."""
    from stable_baselines3 import PPO

    arch = {"activation_fn": nn.ReLU, "net_arch": {"pi": [32], "vf": [16, 8]}}
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=arch, device="cpu", seed=0)
    model.save(tmp_path / "theirs.zip")
    marker = tmp_path / "ran"
    zip_path = plant_zip(tmp_path / "theirs.zip", tmp_path / "planted.zip", marker)
    teacher = load_teacher(zip_path, env_id="CartPole-v1")
    assert isinstance(teacher.model.policy.mlp_extractor.policy_net[1], nn.ReLU)
    obs = _observations(4)
    np.testing.assert_array_equal(
        greedy(teacher.policy, teacher.spec)(obs), model.predict(obs, deterministic=True)[0]
    )
    assert teacher.env_id == "CartPole-v1" and teacher.config == {}
    with pytest.raises(TeacherError, match=r"no config\.json.*--env-id"):
        load_teacher(zip_path)
    with pytest.raises(TeacherError, match=r"planted\.zip:policy\.pth does not fit.*Acrobot-v1"):
        load_teacher(zip_path, env_id="Acrobot-v1")
    out = play.main(["--model", str(zip_path), "--env-id", "CartPole-v1", "--episodes", "1"])
    assert len(out["returns"]) == 1
    # What the JSON cannot describe is refused, not guessed.
    PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"activation_fn": nn.Hardtanh}).save(
        tmp_path / "odd.zip"
    )
    with pytest.raises(TeacherError, match="cannot be rebuilt without unpickling"):
        load_teacher(tmp_path / "odd.zip", env_id="CartPole-v1")
    assert not marker.exists()


def test_vecnormalize_state_round_trips_through_json():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0), clip_obs=5.0, gamma=0.9)
    venv.reset()
    for _ in range(50):
        venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
    state = json.loads(json.dumps(vecnormalize_state(venv)))
    fresh = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=1))
    restore_vecnormalize(fresh, state, "test")
    for name in ("obs_rms", "ret_rms"):
        old, new = getattr(venv, name), getattr(fresh, name)
        np.testing.assert_array_equal(new.mean, old.mean)
        np.testing.assert_array_equal(new.var, old.var)
        assert new.count == old.count
    assert (fresh.clip_obs, fresh.gamma, fresh.training) == (5.0, 0.9, True)
    assert not fresh.returns.any()  # the episodes in progress start over on resume
    with pytest.raises(DistilleryError, match="not a usable VecNormalize state"):
        restore_vecnormalize(VecNormalize(make_vec_env("Acrobot-v1", n_envs=1)), state, "test")


def test_resume_unpickles_nothing_and_refuses_old_checkpoints(tmp_path):
    hp = env_settings("CartPole-v1").ppo  # 8 envs x 32 steps: 256-step rollouts
    ck = tmp_path / "ck"
    kw = {"checkpoint_dir": ck, "checkpoint_every": 256, "settings": {"a": 1}, "progress": False}
    ppo.train_ppo("CartPole-v1", hp, 512, 0, tmp_path / "sb3", **kw)
    found = latest_checkpoint(ck)
    assert found is not None and found.name == "step-000000256"
    assert sorted(p.name for p in found.iterdir()) == ["ppo.zip", "state.json", "vecnormalize.json"]
    saved = json.loads((found / "vecnormalize.json").read_text())["obs_rms"]["count"]
    # Plant the checkpoint's zip and a pickle beside it: neither is unpickled.
    marker = tmp_path / "ran"
    plant_zip(found / "ppo.zip", found / "ppo.zip", marker)
    (found / "vecnormalize.pkl").write_bytes(base64.b64decode(payload(marker)))
    run = ppo.train_ppo("CartPole-v1", hp, 768, 0, tmp_path / "sb3", **kw)
    assert run.model.num_timesteps == 768 and run.model._n_updates == 3 * hp.n_epochs
    assert run.venv.obs_rms.count >= saved + 512
    assert not marker.exists()
    # A checkpoint of the old format (statistics only pickled) is refused without reading it.
    found = latest_checkpoint(ck)
    assert found is not None and found.name == "step-000000512"
    (found / "vecnormalize.json").unlink()
    (found / "vecnormalize.pkl").write_bytes(base64.b64decode(payload(marker)))
    with pytest.raises(UnsafeFileError, match=r"vecnormalize\.pkl.*--retrain") as err:
        ppo.train_ppo("CartPole-v1", hp, 1024, 0, tmp_path / "sb3", **kw)
    assert "\n" not in str(err.value)
    assert not marker.exists()
