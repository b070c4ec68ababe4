"""Image classification end to end on small real subsets of Fashion-MNIST, plus the data
paths (idx folder, CIFAR files, image folder) and the errors a user can run into."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from conftest import IMAGE_SMALL
from PIL import Image

from common.cache import TeacherOutputCache, compute_outputs, key_digest, load_or_build_views
from common.errors import CheckpointError, ConfigError, ShapeMismatchError
from common.fetch import MissingDataError
from common.metrics import count_parameters
from common.results import load_results
from common.training import make_accelerator
from image_classification import task as image_task
from image_classification.data.images import (
    BatchBuilder,
    DataError,
    ImageData,
    ViewRecipe,
    load_dataset,
    make_loader,
    read_idx,
    view_schedule,
)
from image_classification.model_io import ModelConfig, build_model, load_model_dir, save_model_dir
from image_classification.pipeline import ImageAdapter, MirroredCacheAdapter, view_logits
from image_classification.scripts import distill, export_onnx, predict, train_teacher
from image_classification.student_model.cnn import SmallCNN
from image_classification.teacher_model.resnet import FlipAveraged, TappedResNet

SMALL = IMAGE_SMALL


@pytest.fixture(scope="module")
def teacher_dir(image_teacher):
    return image_teacher


def test_fashion_mnist_splits_are_fixed_disjoint_and_normalised():
    data = load_dataset("fashion-mnist", val_size=1000, max_train=2000, max_test=500)
    again = load_dataset("fashion-mnist", val_size=1000, max_train=2000, max_test=500)
    assert data.shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (2000, 1000, 500)
    assert torch.equal(data.val.images, again.val.images)  # same split every run
    # No validation image is also a training image (compare raw bytes).
    train_rows = {bytes(x.numpy()) for x in data.train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in data.val.images)
    batch = next(iter(make_loader(data.train, data, 256, shuffle=False)))
    assert abs(batch["images"].mean().item()) < 0.15 and 0.8 < batch["images"].std().item() < 1.2
    assert set(batch) == {"images", "labels", "index"}


def test_augmentation_is_a_shift_or_flip_and_ignores_the_global_rng():
    data = load_dataset("fashion-mnist", val_size=100, max_train=64, max_test=10)
    loader = lambda seed: make_loader(data.train, data, 64, False, ("crop", "flip"), seed)  # noqa: E731
    plain = next(iter(make_loader(data.train, data, 64, shuffle=False)))["images"]
    torch.manual_seed(0)
    aug = next(iter(loader(0)))
    torch.manual_seed(123)  # other global RNG state: same batch, same augmentation
    assert torch.equal(next(iter(loader(0)))["images"], aug["images"])
    assert not torch.equal(next(iter(loader(1)))["images"], aug["images"])
    assert aug["images"].shape == plain.shape and torch.equal(aug["labels"], data.train.labels[:64])
    # Each augmented image is the original, flipped or not, shifted by at most 2 pixels with
    # zero fill: some such transform of the raw image reproduces it exactly.
    raw = data.train.images[:64].float()
    got = torch.round((aug["images"] * data.std[0] + data.mean[0]) * 255)
    pad = torch.nn.functional.pad(raw, (2, 2, 2, 2))
    for i in range(64):
        options = [
            (img if not flip else img.flip(-1))
            for img in [pad[i, :, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
            for flip in (False, True)
        ]
        assert any(torch.equal(o, got[i]) for o in options), f"image {i} is not a crop/flip"


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_in_torchvision_raw_layout(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    data = load_dataset("mnist", data_dir=tmp_path, val_size=5)
    assert (len(data.train), len(data.val), len(data.test)) == (25, 5, 10)
    assert torch.equal(data.test.labels, torch.arange(10))
    assert read_idx(raw / "t10k-images-idx3-ubyte.gz").shape == (10, 28, 28)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "absent")


def test_mnist_pickle_from_the_fetched_wheel():
    data = load_dataset("mnist", max_train=100, max_test=100, val_size=300)
    assert data.train.images.dtype == torch.uint8 and data.shape == (1, 28, 28)
    assert len(data.val) == 300  # from the pickle's own validation split
    assert data.train.images.max() > 200


def test_cifar10_files_in_cifar_format_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, _ in [*CIFAR10.train_list, *CIFAR10.test_list]:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / CIFAR10.meta["filename"], "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # torchvision checks each file's md5 against the real CIFAR release, which a tiny file
    # written here cannot match; everything after that check is the real code path.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    data = load_dataset("cifar10", data_dir=tmp_path, val_size=4)
    assert data.shape == (3, 32, 32) and data.classes[:2] == ["c0", "c1"]
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 4)


def test_cifar_without_files_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_image_folder_dataset_and_wrong_sizes(tmp_path):
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(
                    tmp_path / part / cls / f"{i}.png"
                )
    data = load_dataset("folder", data_dir=tmp_path, val_size=2)
    assert data.classes == ["cat", "dog"] and data.shape == (1, 12, 12)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "train" / "cat" / "odd.png")
    with pytest.raises(DataError, match="differ in size"):
        load_dataset("folder", data_dir=tmp_path, val_size=2)


def test_missing_fetched_data_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path))
    with pytest.raises(MissingDataError, match=r"dataset-fashion-mnist.*make data"):
        load_dataset("fashion-mnist")


def test_models_taps_and_size_ratio():
    teacher = TappedResNet("resnet18", 10, 1, "imagenet")
    student = SmallCNN("small", 10, 1)
    x = torch.zeros(2, 1, 28, 28)
    t, s = teacher(x), student(x)
    assert t["logits"].shape == s["logits"].shape == (2, 10)
    assert t["layer1"].shape[-1] == s["stage3"].shape[-1] == 7
    assert count_parameters(student) * 20 <= count_parameters(teacher)
    assert count_parameters(SmallCNN("tiny")) < count_parameters(student)


def _tiny_cnn_config() -> ModelConfig:
    return ModelConfig(
        family="cnn",
        arch="tiny",
        num_classes=10,
        in_channels=1,
        image_size=(28, 28),
        classes=[str(i) for i in range(10)],
        mean=[0.3],
        std=[0.3],
        dataset="fashion-mnist",
    )


def test_student_checkpoint_round_trip(tmp_path):
    cfg = _tiny_cnn_config()
    model = build_model(cfg).eval()
    save_model_dir(model, cfg, tmp_path / "m")
    loaded, cfg2 = load_model_dir(tmp_path / "m")
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"], rtol=0, atol=0)
    assert cfg2 == cfg
    with pytest.raises(CheckpointError, match="Train one first"):
        load_model_dir(tmp_path / "absent")


def test_teacher_trains_and_writes_results(teacher_dir):
    results = load_results(teacher_dir.parent)
    assert results["role"] == "teacher" and results["dataset"] == "fashion-mnist"
    assert 0.2 < results["metrics"]["final"]["test/accuracy"] <= 1.0  # 384 images: > 2x chance
    assert results["student"]["params"] > 11_000_000
    # Trained with flips: the mirror-averaged teacher distill.py --teacher-flip uses is scored too.
    assert 0.2 < results["metrics"]["final"]["test_flip_average/accuracy"] <= 1.0
    assert (teacher_dir / "config.json").is_file()


def test_a_finished_teacher_is_reused_only_for_the_same_settings_and_data(
    teacher_dir, tmp_path, capsys
):
    out = tmp_path / "teacher"
    shutil.copytree(teacher_dir.parent, out)
    args = [*SMALL, "--epochs", "2", "--out-dir", str(out), "--optimizer", "adamw", "--lr", "0.002"]
    before = (out / "results.json").read_text()
    assert train_teacher.main(args) == out / "model"
    assert "teacher reused" in capsys.readouterr().out
    assert (out / "results.json").read_text() == before  # nothing retrained or rewritten
    # Other data (a smaller subset) is another teacher: trained, not reused.
    other = [*args[:1], "320", *args[2:], "--epochs", "1", "--no-resume"]
    train_teacher.main(other)
    assert "teacher reused" not in capsys.readouterr().out
    assert load_results(out)["extra"]["train_size"] == 320


def test_flip_averaged_teacher_is_mirror_invariant_and_distils(teacher_dir, tmp_path):
    teacher, _ = load_model_dir(teacher_dir)
    wrapped = FlipAveraged(teacher).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        direct, mirrored = wrapped(x), wrapped(x.flip(-1))
        single = teacher(x)["logits"], teacher(x.flip(-1))["logits"]
    torch.testing.assert_close(direct["logits"], (single[0] + single[1]) / 2)
    torch.testing.assert_close(mirrored["logits"], direct["logits"])
    torch.testing.assert_close(mirrored["layer1"], direct["layer1"].flip(-1))
    assert not torch.allclose(single[0], single[1])  # the two views do differ

    args = [*SMALL, "--teacher", str(teacher_dir), "--epochs", "1", "--student", "tiny"]
    distill.main([*args, "--methods", "kd+at", "--teacher-flip", "--out-dir", str(tmp_path)])
    res = load_results(tmp_path / "kd+at" / "seed-0")
    assert res["teacher"]["name"].endswith("+flip-average")
    with pytest.raises(ConfigError, match="mirrored digit"):
        distill.main([*args, "--dataset", "mnist", "--teacher-flip", "--out-dir", str(tmp_path)])


def test_teacher_flip_warns_about_a_teacher_trained_without_flips(teacher_dir, tmp_path, capsys):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher_dir, copy / "model")
    results = json.loads((teacher_dir.parent / "results.json").read_text())
    results["extra"]["augment"] = ["crop"]
    (copy / "results.json").write_text(json.dumps(results))
    args = [*SMALL, "--teacher", str(copy / "model"), "--epochs", "1", "--student", "tiny"]
    distill.main([*args, "--methods", "none", "--teacher-flip", "--out-dir", str(tmp_path / "r")])
    assert "trained without flips" in capsys.readouterr().out


@pytest.mark.parametrize(
    "method",
    ["none", "kd", "fitnet", "at", "dkd", "kd+at", "kd+rkd", "kd+pkt", "kd+sp", "kd+crd", "fm"],
)
def test_each_method_runs_end_to_end(teacher_dir, tmp_path, method):
    summary = distill.main(
        [
            *SMALL,
            "--teacher",
            str(teacher_dir),
            "--methods",
            method,
            "--epochs",
            "1",
            "--student",
            "tiny",
            "--out-dir",
            str(tmp_path),
        ]
    )
    row = summary["methods"][method]
    assert 0.0 < row["mean"] <= 1.0 and row["n_seeds"] == 1
    res = load_results(tmp_path / method / "seed-0")
    assert res["method"] == method and res["role"] == "student"
    options = res["loss"]["options"]
    if "fitnet" in method:
        assert (
            options["hint"]["student_key"] == "stage2"
            and options["hint"]["teacher_key"] == "layer2"
        )
    if "at" in method.split("+"):
        assert options["at"]["teacher_keys"] == ["layer1", "layer2", "layer3"]
    expected_terms = {
        "none": {"ce"},
        "kd": {"kd", "ce"},
        "fitnet": {"ce", "hint"},
        "at": {"ce", "at"},
        "dkd": {"ce", "dkd"},
        "kd+at": {"kd", "ce", "at"},
        "kd+rkd": {"kd", "ce", "rkd"},
        "kd+pkt": {"kd", "ce", "pkt"},
        "kd+sp": {"kd", "ce", "sp"},
        "kd+crd": {"kd", "ce", "crd"},
        "fm": {"kd"},
    }
    assert set(res["loss"]["weights"]) == expected_terms[method]
    for term in {"rkd", "pkt", "sp"} & set(res["loss"]["weights"]):
        # Relational terms relate the deepest features, as in their papers, not the logits.
        assert (options[term]["student_key"], options[term]["teacher_key"]) == ("stage3", "layer4")
    if method == "kd+crd":  # keys, widths and bank size filled in from the models and data
        crd = options["crd"]
        assert crd["num_data"] == 384 and crd["student_dim"] > 0 and crd["teacher_dim"] > 0
    assert res["teacher"]["params"] > 50 * res["student"]["params"]
    lines = (tmp_path / method / "seed-0" / "metrics.jsonl").read_text().splitlines()
    assert "val/accuracy" in json.loads(lines[-1])


def test_keys_given_as_loss_options_win_over_the_deepest_taps(teacher_dir, tmp_path):
    args = [*SMALL, "--teacher", str(teacher_dir), "--epochs", "1", "--student", "tiny"]
    keys = ["--loss-option", "rkd.student_key=stage2", "rkd.teacher_key=layer3"]
    distill.main([*args, "--methods", "kd+rkd", *keys, "--out-dir", str(tmp_path)])
    rkd = load_results(tmp_path / "kd+rkd" / "seed-0")["loss"]["options"]["rkd"]
    assert (rkd["student_key"], rkd["teacher_key"]) == ("stage2", "layer3")


def test_seeds_give_mean_std_and_gap_closure(teacher_dir, tmp_path):
    summary = distill.main(
        [
            *SMALL,
            "--teacher",
            str(teacher_dir),
            "--methods",
            "none",
            "kd",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--student",
            "tiny",
            "--out-dir",
            str(tmp_path),
        ]
    )
    kd, none = summary["methods"]["kd"], summary["methods"]["none"]
    assert kd["n_seeds"] == none["n_seeds"] == 2
    a, b = none["scores"]
    assert none["mean"] == pytest.approx((a + b) / 2)
    assert none["std"] == pytest.approx(abs(a - b) / 2**0.5)  # sample std of two
    assert kd["gain_over_none"] == pytest.approx(kd["mean"] - none["mean"])
    seeds = {load_results(tmp_path / "kd" / f"seed-{k}")["seed"] for k in (0, 1)}
    assert seeds == {0, 1}
    assert "gap_closure" in kd and summary["speed"]["student"]["latency_b1_ms"] > 0
    assert (tmp_path / "summary.json").is_file()


def test_cached_teacher_outputs_train_the_same_student_as_the_live_teacher(teacher_dir, tmp_path):
    def run(name: str, *extra: str) -> dict:
        distill.main(
            [
                *SMALL,
                "--teacher",
                str(teacher_dir),
                "--methods",
                "kd",
                "--epochs",
                "2",
                "--student",
                "tiny",
                "--augment",
                "none",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--out-dir",
                str(tmp_path / name),
                *extra,
            ]
        )
        return load_results(tmp_path / name / "kd" / "seed-0")

    live = run("live", "--no-cache")
    first = run("first")
    second = run("second")
    assert live["extra"]["teacher_cache"]["enabled"] is False
    info = first["extra"]["teacher_cache"]
    assert info["enabled"] and not info["hit"] and info["examples"] == 384
    assert info["batches_served"] == first["budget"]["steps"] == 12  # 384 / 64 x 2 epochs
    assert second["extra"]["teacher_cache"]["hit"]
    weights = [
        load_model_dir(tmp_path / name / "kd" / "seed-0" / "model")[0].state_dict()
        for name in ("live", "first", "second")
    ]
    for key, value in weights[0].items():
        # Teacher logits from a batch of 512 vs 64 differ in the last float bits only.
        assert torch.allclose(value, weights[1][key], atol=1e-5), key
        assert torch.equal(weights[1][key], weights[2][key]), key


def test_flips_read_mirrored_cached_outputs_of_a_flip_averaged_teacher(teacher_dir, tmp_path):
    teacher = FlipAveraged(load_model_dir(teacher_dir)[0]).eval()
    data = load_dataset("fashion-mnist", val_size=200, max_train=64, max_test=10)
    plain = make_loader(data.train, data, 32, shuffle=False)
    cache = TeacherOutputCache(
        compute_outputs(teacher, ImageAdapter().teacher, plain, 64, ["logits", "layer1"])
    )
    batch = next(iter(make_loader(data.train, data, 64, shuffle=True, augment=["flip"], seed=3)))
    assert batch["flipped"].any() and not batch["flipped"].all()
    got = MirroredCacheAdapter(ImageAdapter()).teacher(cache, batch)
    with torch.no_grad():
        want = teacher(batch["images"])
    torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["layer1"], want["layer1"], rtol=1e-4, atol=1e-4)

    # End to end: a student trained with flips on cached outputs (logits and attention maps)
    # is the live-teacher student, up to the cache's float16 maps.
    def run(name: str, *extra: str) -> dict:
        distill.main(
            [
                *SMALL,
                *("--teacher", str(teacher_dir), "--teacher-flip", "--augment", "flip"),
                *("--methods", "kd+at", "--epochs", "2", "--student", "tiny"),
                *("--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / name)),
                *extra,
            ]
        )
        return load_results(tmp_path / name / "kd+at" / "seed-0")

    assert run("live", "--no-cache")["extra"]["teacher_cache"]["enabled"] is False
    assert run("cached")["extra"]["teacher_cache"]["enabled"] is True
    live, cached = (
        load_model_dir(tmp_path / name / "kd+at" / "seed-0" / "model")[0].state_dict()
        for name in ("live", "cached")
    )
    for key, value in live.items():
        assert torch.allclose(value, cached[key], atol=1e-3), key


def test_labelled_subset_student_alone_sees_only_those_same_steps(
    teacher_dir, tmp_path, monkeypatch
):
    seen = {}
    train = image_task.run_training

    def spy(student, loss, data, recipe, **kw):
        seen[recipe.name] = data.train
        return train(student, loss, data, recipe, **kw)

    monkeypatch.setattr(image_task, "run_training", spy)
    args = [*SMALL, "--teacher", str(teacher_dir), "--methods", "none", "kd", "--epochs", "1"]
    args += ["--student", "tiny", "--augment", "none", "--labelled", "100"]
    summary = distill.main([*args, "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path)])
    none = load_results(tmp_path / "none" / "seed-0")
    kd = load_results(tmp_path / "kd" / "seed-0")
    # 384 images / 64 per batch: 6 steps for both; the student alone loops over its 100.
    assert none["budget"]["steps"] == kd["budget"]["steps"] == 6
    assert none["budget"]["epochs"] == 3 and kd["budget"]["epochs"] == 1
    assert none["extra"]["train_size"] == 100 and kd["extra"]["train_size"] == 384
    assert none["extra"]["labelled_train_size"] == kd["extra"]["labelled_train_size"] == 100
    assert summary["labelled"] == {"labelled": 100, "train_size": 384, "steps": 6}
    alone, taught = seen["none seed 0"], seen["kd seed 0"]
    full = load_dataset(max_train=384, max_test=200, val_size=200).train
    labelled = image_task.labelled_subset(384, 100)
    assert torch.equal(alone.labels, full.labels[labelled])  # true labels, those 100 only
    assert torch.equal(taught.labels[labelled], full.labels[labelled])
    assert not torch.equal(taught.labels, full.labels)  # the rest: the teacher's argmax


def test_steps_fix_the_budget_of_every_method(teacher_dir, tmp_path):
    args = [*SMALL, "--teacher", str(teacher_dir), "--methods", "none", "kd", "--epochs", "1"]
    args += ["--student", "tiny", "--augment", "none", "--labelled", "100", "--steps", "9"]
    distill.main([*args, "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path)])
    none = load_results(tmp_path / "none" / "seed-0")
    kd = load_results(tmp_path / "kd" / "seed-0")
    # 9 steps of 64: 2 passes over the 384 images (6 batches each, the second cut short),
    # 5 over the 100 (2 batches each).
    assert none["budget"]["steps"] == kd["budget"]["steps"] == 9
    assert none["budget"]["epochs"] == 5 and kd["budget"]["epochs"] == 2
    assert kd["extra"]["settings"]["steps"] == 9
    # Steps, not passes: with 2 batches accumulated a step, still 9 of them (passes would
    # stop at 6 and 5); without --steps the settings have no such key (older records hold).
    cache = ["--cache-dir", str(tmp_path / "c")]
    distill.main([*args, *cache, "--grad-accum", "2", "--out-dir", str(tmp_path / "accum")])
    for method in ("none", "kd"):
        assert load_results(tmp_path / "accum" / method / "seed-0")["budget"]["steps"] == 9
    plain = [a for a in args if a not in ("--steps", "9")]
    distill.main([*plain, *cache, "--out-dir", str(tmp_path / "plain")])
    assert "steps" not in load_results(tmp_path / "plain" / "kd" / "seed-0")["extra"]["settings"]


def test_teacher_labels_the_transfer_images_cached_or_live(teacher_dir):
    teacher, cfg = load_model_dir(teacher_dir)
    data = load_dataset(max_train=384, max_test=200, val_size=200)
    data.mean, data.std = list(cfg.mean), list(cfg.std)
    labelled = image_task.labelled_subset(len(data.train), 50)
    assert labelled is not None and len(labelled) == len(set(labelled.tolist())) == 50
    assert torch.equal(labelled, image_task.labelled_subset(len(data.train), 50))  # fixed
    loader = make_loader(data.train, data, 100, shuffle=False)
    predicted = torch.cat([teacher.eval()(b["images"])["logits"].argmax(-1) for b in loader])
    live = image_task.teacher_labelled(data, labelled, teacher, None)
    cache = TeacherOutputCache(
        compute_outputs(teacher, ImageAdapter().teacher, loader, 384, ["logits"])
    )
    cached = image_task.teacher_labelled(data, labelled, teacher, cache)
    expected = predicted.clone()
    expected[labelled] = data.train.labels[labelled]
    assert not torch.equal(expected, data.train.labels)  # the teacher is not always right
    assert torch.equal(live.labels, expected) and torch.equal(cached.labels, expected)
    assert torch.equal(live.images, data.train.images)
    assert image_task.labelled_subset(384, None) is None
    for bad in (0, 384):
        with pytest.raises(ConfigError, match="--labelled"):
            image_task.labelled_subset(384, bad)


def test_augmentation_turns_the_cache_off_and_says_why(teacher_dir, tmp_path, capsys):
    distill.main(
        [
            *SMALL,
            "--teacher",
            str(teacher_dir),
            "--methods",
            "kd",
            "--epochs",
            "1",
            "--student",
            "tiny",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out-dir",
            str(tmp_path / "o"),
        ]
    )
    assert "teacher cache off: augmentation" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()
    note = load_results(tmp_path / "o" / "kd" / "seed-0")["extra"]["teacher_cache"]
    assert note["enabled"] is False and "augmentation" in note["reason"]


def test_teacher_with_other_class_count_is_refused(tmp_path):
    cfg = ModelConfig(
        family="resnet",
        arch="resnet18",
        num_classes=5,
        in_channels=1,
        image_size=(28, 28),
        classes=list("abcde"),
        mean=[0.3],
        std=[0.3],
        dataset="fashion-mnist",
        stem="imagenet",
    )
    save_model_dir(build_model(cfg), cfg, tmp_path / "t5")
    with pytest.raises(ShapeMismatchError, match=r"predicts 5 classes.*has 10"):
        distill.main([*SMALL, "--teacher", str(tmp_path / "t5"), "--out-dir", str(tmp_path / "o")])


def test_missing_teacher_says_how_to_train_one(tmp_path):
    with pytest.raises(CheckpointError, match="train_teacher"):
        distill.main(["--teacher", str(tmp_path / "nope")])


def test_predict_on_png_and_bad_images(teacher_dir, tmp_path):
    png = tmp_path / "shirt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(png)
    out = predict.main(["--model", str(teacher_dir), "--images", str(png), "--top-k", "3"])
    top = out[0]["top"]
    assert (
        len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] and sum(p for _, p in top) <= 1.0001
    )
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(big)
    with pytest.raises(DataError, match=r"64x64.*expects 28x28.*--resize"):
        predict.predict(teacher_dir, [big])
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match="3 channel"):
        predict.predict(teacher_dir, [rgb])
    assert len(predict.predict(teacher_dir, [big, rgb], resize=True)) == 2
    # Averaged over an image and its mirror image, the two files get the same answer.
    mirror = tmp_path / "mirror.png"
    Image.fromarray(np.asarray(Image.open(png))[:, ::-1].copy()).save(mirror)

    def probs(row: dict) -> list[float]:
        return [p for _, p in sorted(row["top"])]  # by class name

    a, b = predict.predict(teacher_dir, [png, mirror], top_k=10)
    assert not np.allclose(probs(a), probs(b), atol=1e-4)  # one view: they differ
    a, b = predict.predict(teacher_dir, [png, mirror], top_k=10, flip_average=True)
    assert np.allclose(probs(a), probs(b), atol=1e-6)


def test_onnx_export_matches_pytorch(tmp_path):
    cfg = _tiny_cnn_config()
    save_model_dir(build_model(cfg), cfg, tmp_path)
    path, diff = export_onnx.export(tmp_path)
    assert path.is_file() and diff < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.onnx",
        "model.safetensors",
    ]


def test_benchmark_measures_every_configuration(teacher_dir, tmp_path, capsys):
    from common.benchmark import CONFIGS
    from image_classification.scripts import benchmark

    out = benchmark.main(
        [
            "--teacher", str(teacher_dir), "--images", "256", "--batch-size", "64",
            "--warmup-steps", "1", "--steps", "3", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "b.json"),
            "--main-job", str(tmp_path / "absent.json"), "--teacher-flip",
        ]
    )  # fmt: skip
    assert set(out["steps"]) == {*CONFIGS, "kd, view cache"}
    for r in out["steps"].values():
        assert r["timed_steps"] == 3 and r["step_ms_median"] > 0 and r["peak_rss_mib"] > 100
    assert out["steps"]["kd, warm cache"]["cache"]["examples"] == 256
    assert out["steps"]["student alone"]["cache"] is None
    views = out["steps"]["kd, view cache"]["cache"]
    assert views["examples"] == 256 and views["views"] == 4 and views["peak_rss_mib"] > 0
    assert out["ratios"]["kd_view_cache_over_alone"] > 0
    assert out["ratios"]["throughput_student_over_teacher"] > 0  # measured, not asserted
    flip = out["inference"]["teacher_flip_average"]
    assert flip["throughput"] > 0 and flip["latency_b1_ms"] > 0 and flip["batch"] == 256
    assert json.loads((tmp_path / "b.json").read_text())["ratios"] == out["ratios"]
    printed = capsys.readouterr().out
    assert "kd, warm cache" in printed and "Flip-averaged teacher" in printed


# --------------------------------------------------------------------------- seeded views

ALL_VIEWS = ("crop", "flip", "erase", "mixup", "cutmix")


def _view_data(teacher_dir=None, n: int = 64) -> ImageData:
    data = load_dataset("fashion-mnist", val_size=200, max_train=n, max_test=10)
    if teacher_dir is not None:  # the teacher's normalisation, as distill.py uses it
        cfg = load_model_dir(teacher_dir)[1]
        data.mean, data.std = list(cfg.mean), list(cfg.std)
    return data


def _expected_base(data: ImageData, p, v: int, i: int) -> torch.Tensor:
    """View v of image i before mixing, rebuilt from its parameters by hand."""
    dy, dx = int(p.dy[v, i]), int(p.dx[v, i])
    img = torch.nn.functional.pad(data.train.images[i].float(), (2, 2, 2, 2))
    img = img[:, dy : dy + 28, dx : dx + 28]
    if p.flip[v, i]:
        img = img.flip(-1)
    x = (img / 255.0 - data.mean[0]) / data.std[0]
    if p.erase[v, i]:
        ey, ex, eh, ew = (int(t[v, i]) for t in (p.ey, p.ex, p.eh, p.ew))
        x[:, ey : ey + eh, ex : ex + ew] = 0.0
    return x


def test_cached_view_logits_are_the_live_teacher_on_that_exact_view(teacher_dir, tmp_path):
    teacher = load_model_dir(teacher_dir)[0].eval()
    data = _view_data(teacher_dir)
    builder = BatchBuilder(
        data.train, data.mean, data.std, ALL_VIEWS, views=3, view_seed=0, num_classes=10
    )
    cache, stats = load_or_build_views(
        tmp_path,
        {"test": "views"},
        examples=64,
        views=3,
        specs={"logits": ((10,), torch.float32)},
        compute=lambda start, stop: view_logits(teacher, builder, start, stop),
        chunk=16,
        progress=False,
    )
    assert not stats.hit and stats.examples == 64 and stats.views == 3
    p = builder.params
    (v_mix, i_mix), (v_cut, i_cut) = (torch.nonzero(p.mix == k)[0].tolist() for k in (1, 2))
    erased = torch.nonzero(p.erase)[0].tolist()
    view = torch.tensor([v_mix, v_cut, erased[0], 2])
    index = torch.tensor([i_mix, i_cut, erased[1], 5])
    batch = builder.view_batch(index, view)
    with torch.no_grad():
        live = teacher(batch["images"])["logits"]
    torch.testing.assert_close(cache.lookup(index, view)["logits"], live, rtol=1e-4, atol=1e-4)

    # The same view in another batch is the same image, bit for bit.
    alone = builder.view_batch(index[1:2], view[1:2])
    assert torch.equal(alone["images"][0], batch["images"][1])
    # Each view is what its parameters say, rebuilt by hand: mixup blends two base views...
    y = data.train.labels
    j, w = int(p.partner[v_mix, i_mix]), float(p.weight[v_mix, i_mix])
    a, b = _expected_base(data, p, v_mix, i_mix), _expected_base(data, p, v_mix, j)
    torch.testing.assert_close(batch["images"][0], w * a + (1 - w) * b)
    soft = w * torch.nn.functional.one_hot(y[i_mix], 10) + (1 - w) * (
        torch.nn.functional.one_hot(y[j], 10)
    )
    torch.testing.assert_close(batch["labels"][0], soft.float())
    # ... cutmix pastes the partner's box, and the label weight is the area kept.
    j, w = int(p.partner[v_cut, i_cut]), float(p.weight[v_cut, i_cut])
    y0, y1, x0, x1 = (int(t[v_cut, i_cut]) for t in (p.by0, p.by1, p.bx0, p.bx1))
    want = _expected_base(data, p, v_cut, i_cut)
    want[:, y0:y1, x0:x1] = _expected_base(data, p, v_cut, j)[:, y0:y1, x0:x1]
    torch.testing.assert_close(batch["images"][1], want)
    assert w == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 784) and 0 < w < 1
    assert batch["labels"][1, y[i_cut]] >= w - 1e-6
    torch.testing.assert_close(batch["labels"].sum(1), torch.ones(4))
    # Without mixing, the same seed gives the same crops, flips and erasures (hard labels).
    unmixed = BatchBuilder(data.train, data.mean, data.std, ALL_VIEWS[:3], views=3)
    plain = unmixed.view_batch(index[2:3], view[2:3])
    torch.testing.assert_close(plain["images"][0], _expected_base(data, p, *erased))
    assert plain["images"][0].eq(0).any()  # the erased rectangle: the mean pixel
    assert torch.equal(plain["labels"], y[index[2:3]])


def test_view_cache_key_names_teacher_data_recipe_views_and_seed():
    data = _view_data()
    base = dict(
        teacher_sha256="a",
        data=data,
        recipe=ViewRecipe(("crop", "flip", "mixup")),
        views=4,
        view_seed=0,
        teacher_flip=False,
    )
    digests = {key_digest(image_task.view_cache_key(**base))}
    for change in (
        {"views": 8},
        {"view_seed": 1},
        {"recipe": ViewRecipe(("crop", "flip"))},
        {"recipe": ViewRecipe(("crop", "flip", "mixup"), mixup_alpha=0.4)},
        {"teacher_sha256": "b"},
        {"teacher_flip": True},
        {"data": _view_data(n=65)},
    ):
        digests.add(key_digest(image_task.view_cache_key(**{**base, **change})))
    assert len(digests) == 8
    reordered = {**base, "recipe": ViewRecipe(("mixup", "flip", "crop"))}
    assert image_task.view_cache_key(**reordered) == image_task.view_cache_key(**base)


def test_view_schedule_is_deterministic_and_spreads_every_view():
    idx = torch.arange(500)
    for views in (2, 3, 4):
        for first in (0, 5):  # any V consecutive epochs show every image each view once
            seen = torch.stack(
                [view_schedule(0, e, idx, views) for e in range(first, first + views)]
            )
            assert torch.equal(seen.sort(0).values, torch.arange(views)[:, None].expand(-1, 500))
        starts = torch.bincount(view_schedule(0, 0, idx, views), minlength=views)
        assert starts.min() > 0.7 * 500 / views  # images start at different views
        assert torch.equal(view_schedule(0, 3, idx, views), view_schedule(0, 3, idx, views))
    assert not torch.equal(view_schedule(0, 0, idx, 4), view_schedule(1, 0, idx, 4))

    data = _view_data()
    builder = BatchBuilder(data.train, data.mean, data.std, ALL_VIEWS, views=4, num_classes=10)

    def epoch(e: int, global_seed: int) -> list[dict]:
        torch.manual_seed(global_seed)  # the global RNG changes nothing
        loader = make_loader(data.train, data, 32, True, ALL_VIEWS, seed=5, views=4)
        loader.sampler.set_epoch(e)
        return list(loader)

    for e in range(2):
        batches, again = epoch(e, 0), epoch(e, 123)
        index = torch.cat([b["index"] for b in batches])
        assert sorted(index.tolist()) == list(range(64))
        for b, b2 in zip(batches, again, strict=True):
            assert torch.equal(b["images"], b2["images"]) and torch.equal(b["labels"], b2["labels"])
            assert torch.equal(b["view"], view_schedule(5, e, b["index"], 4))
            assert torch.equal(b["images"], builder.view_batch(b["index"], b["view"])["images"])
    # Prepared by Accelerate, as the loop runs it, and resumed mid-epoch: the same batches.
    accelerator = make_accelerator()
    prepared = accelerator.prepare(make_loader(data.train, data, 32, True, ALL_VIEWS, 5, views=4))
    prepared.set_epoch(1)
    (resumed,) = accelerator.skip_first_batches(prepared, 1)
    assert torch.equal(resumed["images"], batches[1]["images"])  # batches: epoch 1's
    # A plain loader without set_epoch moves on to the next epoch's views by itself.
    loader = make_loader(data.train, data, 64, True, ALL_VIEWS, seed=5, views=4)
    (first,), (second,) = list(loader), list(loader)
    assert torch.equal(first["view"], view_schedule(5, 0, first["index"], 4))
    assert torch.equal(second["view"], view_schedule(5, 1, second["index"], 4))


def test_views_end_to_end_every_method_on_the_same_views(teacher_dir, tmp_path, monkeypatch):
    seen: dict[str, dict] = {}
    train = image_task.run_training

    def spy(student, loss, data, recipe, **kw):
        # The first batch of the loader run_training builds from these arguments.
        loader = make_loader(
            data.train, data, kw["batch_size"], True, kw["augment"], kw["seed"],
            views=kw["views"], view_seed=kw["view_seed"],
        )  # fmt: skip
        seen[recipe.name] = {"batch": next(iter(loader)), **kw}
        return train(student, loss, data, recipe, **kw)

    monkeypatch.setattr(image_task, "run_training", spy)
    args = [*SMALL, "--teacher", str(teacher_dir), "--epochs", "2", "--student", "tiny"]
    args += ["--augment", *ALL_VIEWS, "--cache-dir", str(tmp_path / "cache")]
    distill.main(
        [*args, "--views", "2", "--methods", "none", "kd", "fm", "--out-dir", str(tmp_path / "c")]
    )
    none, kd = (load_results(tmp_path / "c" / m / "seed-0") for m in ("none", "kd"))
    info = kd["extra"]["teacher_cache"]
    assert info["mode"] == "cache" and info["enabled"] and not info["hit"]
    assert info["views"] == 2 and info["examples"] == 384 and info["size_bytes"] > 384 * 2 * 40
    assert info["batches_served"] == kd["budget"]["steps"] == none["budget"]["steps"] == 12
    assert info["peak_rss_mib"] > 0 and info["seconds"] > 0
    assert none["extra"]["teacher_cache"]["mode"] == "none"
    assert none["extra"]["views"] == kd["extra"]["views"] == 2
    assert kd["extra"]["settings"]["views"] == 2

    # The student alone trains on exactly the distilled student's views, with soft labels.
    alone, taught = seen["none seed 0"], seen["kd seed 0"]
    for k in ("views", "view_seed", "augment", "seed", "batch_size"):
        assert alone[k] == taught[k], k
    for k in ("images", "labels", "index", "view"):
        assert torch.equal(alone["batch"][k], taught["batch"][k]), k
        assert torch.equal(seen["fm seed 0"]["batch"][k], taught["batch"][k]), k
    fm = load_results(tmp_path / "c" / "fm" / "seed-0")
    assert fm["loss"]["weights"] == {"kd": 1.0} and fm["loss"]["options"]["kd"]["temperature"] == 1
    fm_cache = fm["extra"]["teacher_cache"]  # the one view cache serves kd and fm
    assert fm_cache["mode"] == "cache" and fm_cache["path"] == info["path"]
    assert fm_cache["batches_served"] == 12
    labels = alone["batch"]["labels"]
    assert labels.dtype == torch.float32 and labels.shape == (64, 10)
    assert (labels > 0).sum(1).max() == 2  # mixed views: two labels with their weights

    # The live teacher on the same views trains the same student as the cached logits.
    distill.main(
        [*args, "--views", "2", "--methods", "kd", "--no-cache", "--out-dir", str(tmp_path / "l")]
    )
    assert (
        load_results(tmp_path / "l" / "kd" / "seed-0")["extra"]["teacher_cache"]["mode"] == "live"
    )
    cached, live = (
        load_model_dir(tmp_path / d / "kd" / "seed-0" / "model")[0].state_dict() for d in "cl"
    )
    for key, value in live.items():
        assert torch.allclose(value, cached[key], atol=1e-5), key
    # Other views, another cache file; dkd cannot use mixed labels.
    distill.main(
        [
            *args,
            "--views",
            "3",
            "--epochs",
            "1",
            "--methods",
            "kd",
            "--out-dir",
            str(tmp_path / "v3"),
        ]
    )
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    with pytest.raises(ConfigError, match="dkd needs one class label"):
        distill.main([*args, "--views", "2", "--methods", "dkd", "--out-dir", str(tmp_path / "d")])
