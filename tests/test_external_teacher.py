"""Bring your own teacher: a torchvision classifier or a user's own nn.Module, described by a
teacher spec (``distill.py --teacher spec.json``), converted to the student's data, keyed by
its identity in the caches, and every way such a teacher can be wrong refused clearly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import IMAGE_SMALL
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18

from common.cache import key_digest
from common.errors import CheckpointError, ConfigError, DistilleryError, ShapeMismatchError
from common.results import load_results
from image_classification import task as image_task
from image_classification.data.images import ViewRecipe, load_dataset
from image_classification.scripts import distill
from image_classification.teacher_model.external import (
    ExternalTeacher,
    load_external_teacher,
    load_teacher_spec,
    state_sha256,
)

SHAPE = (1, 28, 28)
DATA_MEAN, DATA_STD = [0.286], [0.353]
CLASSES = [str(i) for i in range(10)]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def resnet(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return resnet18(num_classes=num_classes).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """resnet18 state_dicts with random weights: 10 classes (safetensors and torch.save), an
    other 10-class draw, and a 5-class head."""
    out = tmp_path_factory.mktemp("external-weights")
    save_file(resnet().state_dict(), str(out / "r10.safetensors"))
    torch.save(resnet().state_dict(), out / "r10.pt")
    save_file(resnet(seed=1).state_dict(), str(out / "r10-other.safetensors"))
    save_file(resnet(5).state_dict(), str(out / "r5.safetensors"))
    names = ("r10.safetensors", "r10.pt", "r10-other.safetensors", "r5.safetensors")
    return dict(zip(("r10", "r10-pt", "r10-other", "r5"), (out / n for n in names), strict=True))


def write_spec(folder: Path, name: str = "teacher.json", **spec) -> Path:
    path = folder / name
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def tv_spec(folder: Path, weights: Path, name: str = "teacher.json", **more) -> Path:
    base = {"arch": "torchvision:resnet18", "weights": str(weights), "input_size": 32}
    return write_spec(folder, name, **{**base, **IMAGENET, **more})


def load(spec: Path, shape=SHAPE, classes=CLASSES):
    return load_external_teacher(load_teacher_spec(spec), shape, DATA_MEAN, DATA_STD, classes)


def by_hand(x: torch.Tensor, size, mean, std, mode="bilinear") -> torch.Tensor:
    """What the teacher must see: pixels back in [0, 1], grey to RGB, resized, its norm."""
    raw = (x * DATA_STD[0] + DATA_MEAN[0]).expand(-1, len(mean), -1, -1)
    smooth = mode != "nearest"
    raw = F.interpolate(
        raw, size=size, mode=mode, align_corners=False if smooth else None, antialias=smooth
    )
    return (raw - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.mark.parametrize(
    "file, input_size, interpolation",
    [
        ("r10", 32, "bilinear"),
        ("r10-pt", [40, 36], "bicubic"),
        ("r10", 24, "nearest"),
    ],
)
def test_torchvision_teacher_gives_the_models_logits_on_the_preprocessed_input(
    weights, tmp_path, file, input_size, interpolation
):
    spec = tv_spec(tmp_path, weights[file], input_size=input_size, interpolation=interpolation)
    loaded = load(spec)
    teacher = loaded.model
    assert isinstance(teacher, ExternalTeacher) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(4, *SHAPE)
    size = [input_size] * 2 if isinstance(input_size, int) else input_size
    with torch.no_grad():
        out = teacher(x)
        want = resnet()(by_hand(x, size, IMAGENET["mean"], IMAGENET["std"], interpolation))
    torch.testing.assert_close(out["logits"], want, rtol=1e-5, atol=1e-5)
    # torchvision ResNet layer names are the teacher's taps (for fitnet and at).
    assert set(out) == {"logits", "layer1", "layer2", "layer3", "layer4"}
    assert out["layer1"].shape[:2] == (4, 64)
    # A deep copy (describe_model, speed_report) taps its own modules.
    with torch.no_grad():
        copied = copy.deepcopy(teacher)(x)
    torch.testing.assert_close(copied["layer2"], out["layer2"])
    assert loaded.identity["weights_sha256"] and loaded.identity["num_classes"] == 10


FACTORY_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return {"logits": self.head(self.body(x).mean((2, 3)))}


def make(width=8, classes=10):
    torch.manual_seed(3)
    return Net(width, classes)


def not_a_model():
    return "a string"
"""


@pytest.fixture
def factory_module(tmp_path, monkeypatch, request) -> str:
    """A module the user wrote, importable through sys.path (a name unique to the test)."""
    name = f"user_teacher_{abs(hash(request.node.nodeid)) % 10**8}"
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / f"{name}.py").write_text(FACTORY_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    return name


def test_factory_teacher_by_import_path(factory_module, tmp_path):
    grey = {"input_size": [20, 20], "mean": [0.5], "std": [0.25]}
    spec = write_spec(tmp_path, arch=f"{factory_module}:make", kwargs={"width": 6},
                      taps={"body": "body.1"}, **grey)  # fmt: skip
    loaded = load(spec)
    x = torch.randn(3, *SHAPE)
    import importlib

    model = importlib.import_module(factory_module).make(width=6).eval()
    with torch.no_grad():
        out = loaded.model(x)
        want = model(by_hand(x, [20, 20], [0.5], [0.25]))["logits"]
    torch.testing.assert_close(out["logits"], want)
    assert out["body"].shape == (3, 6, 20, 20)
    # No weights file: the built model's own state and the factory's source name the teacher.
    assert loaded.identity["state_sha256"] and loaded.identity["factory_source_sha256"]
    # With a weights file the factory's model is loaded from it (strictly).
    other = importlib.import_module(factory_module).make(width=6)
    torch.nn.init.constant_(other.head.bias, 1.0)
    save_file(other.state_dict(), str(tmp_path / "net.safetensors"))
    spec = write_spec(tmp_path, "w.json", arch=f"{factory_module}:make", kwargs={"width": 6},
                      weights="net.safetensors", **grey)  # fmt: skip
    loaded = load(spec)
    torch.testing.assert_close(loaded.model.model.head.bias, torch.ones(10))
    assert loaded.identity["weights_sha256"] and "state_sha256" not in loaded.identity


def test_a_factory_teacher_with_batchnorm_and_no_weights_file_is_named_by_its_state(tmp_path):
    """A factory that builds its own weights (here torchvision's resnet18 by import path, with
    BatchNorm's 0-dim num_batches_tracked) is named by a hash of its whole state."""
    spec = write_spec(tmp_path, arch="torchvision.models:resnet18",
                      kwargs={"num_classes": 10}, input_size=32, **IMAGENET)  # fmt: skip
    loaded = load(spec)
    assert loaded.identity["state_sha256"] == state_sha256(loaded.model.model)
    bn = nn.BatchNorm2d(4)
    before = state_sha256(bn)
    bn.num_batches_tracked += 1
    assert state_sha256(bn) != before


def test_teacher_identity_names_weights_arch_and_preprocessing(weights, tmp_path, factory_module):
    """Any change to the teacher is another cache file (single-view and view caches) and other
    run settings; the same spec twice is the same key."""
    data = load_dataset("fashion-mnist", val_size=200, max_train=64, max_test=10)
    base = {"weights": str(weights["r10"]), "input_size": 32}
    variants = {
        "base": base,
        "other weights": {**base, "weights": str(weights["r10-other"])},
        "input size": {**base, "input_size": 40},
        "mean": {**base, "mean": [0.5, 0.5, 0.5]},
        "std": {**base, "std": [0.5, 0.5, 0.5]},
        "interpolation": {**base, "interpolation": "bicubic"},
    }
    digests = {}
    for name, change in variants.items():
        digests[name] = load(tv_spec(tmp_path, name=f"{name}.json", **change)).digest
    factory = write_spec(tmp_path, "f.json", arch=f"{factory_module}:make", input_size=32,
                         mean=[0.5], std=[0.25])  # fmt: skip
    digests["other arch"] = load(factory).digest
    assert load(tv_spec(tmp_path, name="again.json", **base)).digest == digests["base"]
    keys = {
        key_digest(image_task.train_cache_key(d, data, False, frozenset({"logits"})))
        for d in digests.values()
    }
    views = {
        key_digest(image_task.view_cache_key(d, data, ViewRecipe(("crop",)), 2, 0, False))
        for d in digests.values()
    }
    assert len(keys) == len(views) == len(digests) == 7


def test_distill_with_a_torchvision_teacher_end_to_end(weights, tmp_path):
    spec = tv_spec(tmp_path, weights["r10"], dataset="fashion-mnist")
    args = [*IMAGE_SMALL, "--epochs", "1", "--student", "tiny", "--augment", "none"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    summary = distill.main(
        [
            *args,
            "--teacher",
            str(spec),
            "--methods",
            "kd",
            "kd+at",
            "--out-dir",
            str(tmp_path / "a"),
        ]
    )
    assert set(summary["methods"]) == {"kd", "kd+at"}
    kd = load_results(tmp_path / "a" / "kd" / "seed-0")
    teacher = kd["teacher"]
    assert teacher["name"] == "torchvision:resnet18@32x32" and teacher["checkpoint"] == str(spec)
    assert teacher["spec"]["arch"] == "torchvision:resnet18" and teacher["params"] > 11_000_000
    assert 0.0 <= teacher["test_accuracy"] <= 1.0  # random weights: about chance
    info = kd["extra"]["teacher_cache"]
    assert info["mode"] == "cache" and not info["hit"] and info["examples"] == 384
    at = load_results(tmp_path / "a" / "kd+at" / "seed-0")
    assert at["loss"]["options"]["at"]["teacher_keys"] == ["layer1", "layer2", "layer3"]
    # The same weights with another declared normalisation: another teacher, so another cache
    # file; the finished kd run is not taken for its run (its settings name the old teacher).
    other = tv_spec(tmp_path, weights["r10"], "other.json", dataset="fashion-mnist",
                    mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])  # fmt: skip
    again = [*args, "--teacher", str(other), "--methods", "kd", "--out-dir"]
    with pytest.raises(CheckpointError, match=r"other settings .*teacher_sha256"):
        distill.main([*again, str(tmp_path / "a")])
    distill.main([*again, str(tmp_path / "b")])
    second = load_results(tmp_path / "b" / "kd" / "seed-0")
    assert second["teacher"]["sha256"] != teacher["sha256"]
    assert second["extra"]["teacher_cache"]["examples"] == 384
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


# --------------------------------------------------------------------------- errors


def _pickled_model(folder: Path) -> Path:
    torch.save(nn.Linear(2, 2), folder / "full.pt")
    return folder / "full.pt"


def _truncated(folder: Path, weights: dict[str, Path]) -> Path:
    data = weights["r10"].read_bytes()
    (folder / "cut.safetensors").write_bytes(data[:5000])
    return folder / "cut.safetensors"


def _garbage(folder: Path) -> Path:
    (folder / "junk.pt").write_bytes(b"not a torch file")
    return folder / "junk.pt"


def _wrong_keys(folder: Path) -> Path:
    save_file({"conv.weight": torch.zeros(2, 2)}, str(folder / "other.safetensors"))
    return folder / "other.safetensors"


# (id, spec from (tmp_path, weights, factory module), error type, message pattern)
ERRORS = [
    ("unknown torchvision name", lambda t, w, f: {"arch": "torchvision:resnet19", "weights": str(w["r10"])},
     ConfigError, r"no classification model 'resnet19'; did you mean resnet18"),
    ("weights file missing", lambda t, w, f: {"weights": str(t / "absent.safetensors")},
     CheckpointError, r"absent\.safetensors do not exist"),
    ("weights truncated", lambda t, w, f: {"weights": str(_truncated(t, w))},
     CheckpointError, r"cut\.safetensors are unreadable .*truncated"),
    ("weights not a torch file", lambda t, w, f: {"weights": str(_garbage(t))},
     CheckpointError, r"junk\.pt are unreadable with torch\.load\(weights_only=True\)"),
    ("pickled full model", lambda t, w, f: {"weights": str(_pickled_model(t))},
     CheckpointError, r"pickled object \(torch\.nn\.modules\.linear\.Linear\).*refusing to unpickle"),
    ("state_dict of another model", lambda t, w, f: {"weights": str(_wrong_keys(t))},
     CheckpointError, r"do not fit torchvision:resnet18: .*key\(s\) missing .*unexpected key\(s\) \(conv\.weight\)"),
    ("head of another size", lambda t, w, f: {"weights": str(w["r5"])},
     CheckpointError, r"fc\.weight \[5, 512\] in the file, \[10, 512\] in the model.*set \"num_classes\""),
    ("class count differs from the data", lambda t, w, f: {"weights": str(w["r5"]), "num_classes": 5},
     ShapeMismatchError, r"predicts 5 classes, the dataset has 10"),
    ("channels the model refuses", lambda t, w, f: {"weights": str(w["r10"]), "mean": [0.5], "std": [0.5]},
     ShapeMismatchError, r"refused its declared input: .*converted to 1x32x32 raised RuntimeError.*3 channels"),
    ("size the model refuses", lambda t, w, f: {"arch": "torch.nn:Linear", "kwargs": {"in_features": 5, "out_features": 10}},
     ShapeMismatchError, r"refused its declared input: .*1x28x28 converted to 3x32x32"),
    ("factory does not import", lambda t, w, f: {"arch": "no_such_package_xyz.models:make"},
     ConfigError, r"cannot import 'no_such_package_xyz\.models'.*PYTHONPATH"),
    ("factory not in the module", lambda t, w, f: {"arch": f"{f}:mkae"},
     ConfigError, r"has no callable 'mkae'; did you mean make"),
    ("factory returns no module", lambda t, w, f: {"arch": f"{f}:not_a_model"},
     ConfigError, r"returned str, not a torch\.nn\.Module"),
    ("bad factory arguments", lambda t, w, f: {"arch": f"{f}:make", "kwargs": {"depth": 3}},
     ConfigError, r"raised TypeError: .*'depth'.*fix \"kwargs\""),
    ("unknown spec key", lambda t, w, f: {"weights": str(w["r10"]), "input-size": 32},
     ConfigError, r"unknown key 'input-size' \(did you mean 'input_size'\?\)"),
    ("tap that is no module", lambda t, w, f: {"weights": str(w["r10"]), "taps": ["layer5"]},
     ConfigError, r"tap 'layer5' names module 'layer5'.*did you mean layer4"),
    ("classes of another dataset", lambda t, w, f: {"weights": str(w["r10"]), "classes": list("abcdefghij")},
     ShapeMismatchError, r"trained on classes \['a', 'b', 'c', 'd'\]"),
]  # fmt: skip


@pytest.mark.parametrize(
    "make, error, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_a_bad_teacher_is_refused_naming_the_fix(
    weights, tmp_path, factory_module, make, error, message
):
    base = {"arch": "torchvision:resnet18", "input_size": 32, **IMAGENET}
    spec = write_spec(tmp_path, **{**base, **make(tmp_path, weights, factory_module)})
    with pytest.raises(error, match=message) as caught:
        load(spec)
    assert isinstance(caught.value, DistilleryError) and "\n" not in str(caught.value)


def test_feature_methods_with_a_teacher_without_taps_are_refused(factory_module, tmp_path):
    spec = write_spec(tmp_path, arch=f"{factory_module}:make", input_size=16, mean=[0.5],
                      std=[0.25], dataset="fashion-mnist")  # fmt: skip
    args = [*IMAGE_SMALL, "--teacher", str(spec), "--out-dir", str(tmp_path / "o")]
    for method in ("at", "fitnet", "kd+at"):
        with pytest.raises(ConfigError, match=r"reads the teacher's feature maps.*logit method"):
            distill.main([*args, "--methods", method])
    assert not list(tmp_path.rglob("results.json"))


def test_a_spec_without_a_dataset_asks_for_one(weights, tmp_path):
    spec = tv_spec(tmp_path, weights["r10"])
    with pytest.raises(ConfigError, match=r"--dataset NAME, or add \"dataset\""):
        distill.main([*IMAGE_SMALL, "--teacher", str(spec)])
    with pytest.raises(ConfigError, match=r"teacher spec .*nope\.json does not exist"):
        distill.main(["--teacher", str(tmp_path / "nope.json")])
