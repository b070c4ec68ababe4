"""Bad input, the way a user types it: every case ends with exit status 2 (1 for a report with
nothing to report) and one line on stderr that names the problem and the fix, no traceback,
and nothing written as if it were a result."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import IMAGE_SMALL, NLP_SMALL, RL_TINY

from common.cli import run_main

IMG_D, IMG_T = "image_classification.scripts.distill", "image_classification.scripts.train_teacher"
NLP_D, NLP_T = "nlp.scripts.distill", "nlp.scripts.train_teacher"
RL_D, RL_T = (
    "reinforcement_learning.scripts.distill",
    "reinforcement_learning.scripts.train_teacher",
)

# (case, module, argv, what the one line must say). "{image}", "{nlp}", "{rl}" are the session
# teachers; "{tmp}" is this test's folder, with the damaged files made by _damaged().
CASES = [
    ("zero epochs", IMG_D, ["--epochs", "0"], r"--epochs 0: must be >= 1, e\.g\. --epochs 3"),
    ("negative batch", IMG_D, ["--batch-size", "-1"], r"--batch-size -1: must be >= 1"),
    ("zero seeds", IMG_D, ["--seeds", "0"], r"--seeds 0: must be >= 1"),
    ("zero learning rate", IMG_D, ["--lr", "0"], r"--lr 0\.0: must be > 0, e\.g\. --lr 0\.001"),
    ("negative weight decay", IMG_D, ["--weight-decay", "-1"], r"--weight-decay -1\.0: must be >= 0"),
    ("unknown student", IMG_D, ["--student", "huge"], r"--student: invalid choice: 'huge'"),
    ("unknown dataset", IMG_D, ["--dataset", "imagenet"], r"--dataset: invalid choice"),
    ("unknown method", IMG_D, ["--methods", "nope"], r"unknown method 'nope'; this domain's methods: none, kd"),
    ("unknown loss term", IMG_D, ["--loss", "nope=1"], r"unknown loss 'nope'; known: at, attention_kl, ce"),
    ("bad loss weight", IMG_D, ["--loss", "kd=abc"], r"bad weight 'abc' for loss 'kd'"),
    ("unknown term option", IMG_D, ["--methods", "kd", "--loss-option", "kd.temp=2"], r"'kd' has no option 'temp'; its options: temperature"),
    ("malformed option", IMG_D, ["--methods", "kd", "--loss-option", "kd=2"], r"write term\.key=value"),
    ("zero temperature", IMG_D, [*IMAGE_SMALL, "--teacher", "{image}", "--methods", "kd", "--loss-option", "kd.temperature=0"], r"kd: temperature must be a number > 0"),
    ("zero labelled", IMG_D, ["--labelled", "0"], r"--labelled 0: must be >= 1"),
    ("zero max-train", IMG_D, ["--max-train", "0"], r"--max-train 0: must be >= 1"),
    ("unknown precision", IMG_D, ["--mixed-precision", "fp8"], r"--mixed-precision: invalid choice: 'fp8'"),
    ("zero grad accumulation", IMG_D, ["--grad-accum", "0"], r"--grad-accum 0: must be >= 1"),
    ("negative workers", IMG_D, ["--num-workers", "-1"], r"--num-workers -1: must be >= 0"),
    ("unknown preset", IMG_D, ["--preset", "huge"], r"--preset: invalid choice: 'huge'"),
    ("not a number", IMG_D, ["--epochs", "three"], r"--epochs: invalid int value: 'three'"),
    ("missing teacher", IMG_D, ["--teacher", "{tmp}/nope"], r"is not a saved model .*train_teacher"),
    ("RL teacher to the image script", IMG_D, ["--teacher", "{rl}"], r"holds a model of the reinforcement-learning domain"),
    ("NLP teacher to the image script", IMG_D, ["--teacher", "{nlp}"], r"holds a model of the nlp domain"),
    ("truncated weights", IMG_D, ["--teacher", "{tmp}/truncated"], r"model\.safetensors is unreadable .*truncated or damaged"),
    ("garbled config", IMG_D, ["--teacher", "{tmp}/garbled"], r"config\.json is not a valid model config"),
    ("other validation split", IMG_D, [*IMAGE_SMALL[:4], "--val-size", "300", "--teacher", "{image}"], r"--val-size 300 differs from the teacher's validation split"),
    ("out-dir is a file", IMG_D, [*IMAGE_SMALL, "--teacher", "{image}", "--methods", "none", "--out-dir", "{tmp}/file.txt"], r"file\.txt is a file; pass a folder"),
    ("negative views", IMG_D, ["--views", "-1"], r"--views -1: must be >= 0, e\.g\. --views 4"),
    ("mixup without views", IMG_D, ["--augment", "crop", "mixup"], r"--augment mixup needs seeded views: add --views V"),
    ("views without augmentation", IMG_D, ["--views", "2", "--augment", "none"], r"--views 2 without augmentation: every view would be the same image"),
    ("unknown view augmentation", IMG_D, ["--views", "2", "--augment", "blur"], r"unknown augmentation 'blur'; use crop, flip \(and with --views V also erase, mixup, cutmix\)"),
    ("dkd on mixed views", IMG_D, [*IMAGE_SMALL, "--teacher", "{image}", "--methods", "dkd", "--views", "2", "--augment", "mixup", "--out-dir", "{tmp}/o"], r"dkd needs one class label per image"),
    ("teacher spec: unknown torchvision model", IMG_D, ["--teacher", "{tmp}/spec-unknown.json"], r"torchvision has no classification model 'resnet19'; did you mean resnet18"),
    ("teacher spec: weights missing", IMG_D, ["--teacher", "{tmp}/spec-noweights.json"], r"absent\.safetensors do not exist; fix \"weights\""),
    ("teacher spec: pickled full model", IMG_D, ["--teacher", "{tmp}/spec-pickled.json"], r"full\.pt are a pickled object .*refusing to unpickle"),
    ("teacher spec: factory does not import", IMG_D, ["--teacher", "{tmp}/spec-noimport.json"], r"cannot import 'no_such_package_xyz\.models'"),
    ("teacher spec: factory returns no module", IMG_D, [*IMAGE_SMALL, "--teacher", "{tmp}/spec-dict.json"], r"returned dict, not a torch\.nn\.Module"),
    ("teacher spec: input the model refuses", IMG_D, [*IMAGE_SMALL, "--teacher", "{tmp}/spec-linear.json"], r"refused its declared input: .*mat1 and mat2"),
    ("teacher spec: other class count", IMG_D, [*IMAGE_SMALL, "--teacher", "{tmp}/spec-5.json"], r"predicts 5 classes, the dataset has 10"),
    ("teacher spec: at without taps", IMG_D, [*IMAGE_SMALL, "--teacher", "{tmp}/spec-squeezenet.json", "--methods", "at"], r"reads the teacher's feature maps.*Use a logit method"),
    ("teacher: zero epochs", IMG_T, ["--epochs", "0"], r"--epochs 0: must be >= 1"),
    ("teacher: unknown architecture", IMG_T, ["--arch", "resnet9"], r"--arch: invalid choice: 'resnet9'"),
    ("teacher: zero validation", IMG_T, ["--val-size", "0"], r"--val-size 0: must be >= 1"),
    ("folder: file that is no image", IMG_T, ["--dataset", "folder", "--data-dir", "{tmp}/notimage"], r"bad\.png is not a readable image"),
    ("folder: empty class folder", IMG_T, ["--dataset", "folder", "--data-dir", "{tmp}/emptyclass"], r"class folder\(s\) boot hold no images"),
    ("NLP: too short", NLP_D, ["--max-length", "2"], r"--max-length 2: must be >= 8"),
    ("NLP: unknown student", NLP_D, ["--student", "huge"], r"--student: invalid choice"),
    ("NLP: unknown dataset", NLP_D, ["--dataset", "imdb"], r"--dataset: invalid choice: 'imdb'"),
    ("NLP: image teacher", NLP_D, ["--teacher", "{image}"], r"holds a model of the image-classification domain"),
    ("NLP: bad layer pair", NLP_D, [*NLP_SMALL, "--teacher", "{nlp}", "--methods", "hidden", "--hidden-layers", "9:1", "--transfer", "none"], r"bad layer pair '9:1'"),
    ("NLP teacher: validation fraction", NLP_T, ["--val-frac", "1.5"], r"--val-frac 1\.5: must be between 0 and 1"),
    ("NLP teacher: zero test fraction", NLP_T, ["--test-frac", "0"], r"--test-frac 0\.0: must be between 0 and 1"),
    ("NLP teacher: file not UTF-8", NLP_T, ["--dataset", "file", "--data-file", "{tmp}/latin1.csv"], r"latin1\.csv is not UTF-8 text"),
    ("NLP teacher: missing file", NLP_T, ["--dataset", "file", "--data-file", "{tmp}/none.csv"], r"none\.csv does not exist"),
    ("RL: zero rounds", RL_D, ["--rounds", "0"], r"--rounds 0: must be >= 1"),
    ("RL: unknown environment", RL_D, ["--env-id", "NoSuchEnv-v0"], r"NoSuchEnv-v0"),
    ("RL: beta above 1", RL_D, ["--beta-decay", "2"], r"--beta-decay 2\.0: must be between 0 and 1"),
    ("RL: zero envs", RL_D, ["--n-envs", "0"], r"--n-envs 0: must be >= 1"),
    ("RL: unknown vec env", RL_D, ["--vec-env", "threads"], r"--vec-env: invalid choice: 'threads'"),
    ("RL: image teacher", RL_D, ["--teacher", "{image}"], r"holds a model of the image-classification domain"),
    ("RL: a term reading labels", RL_D, [*RL_TINY, "--teacher", "{rl}", "--methods", "--loss", "ce=1", "--out-dir", "{tmp}/o"], r"'ce' reads batch output 'labels'.*they give: obs"),
    ("RL teacher: zero steps", RL_T, ["--timesteps", "0"], r"--timesteps 0: must be >= 1"),
    ("RL teacher: zero episodes", RL_T, ["--eval-episodes", "0"], r"--eval-episodes 0: must be >= 1"),
    ("main job: unknown domain", "common.main_job", ["--domains", "audio"], r"unknown domain\(s\) \['audio'\]; choose from"),
    ("main job: zero seeds", "common.main_job", ["--seeds", "0"], r"--seeds 0: must be >= 1"),
    ("soak: unknown domain", "common.soak", ["--domain", "audio"], r"the soak knows image-classification, nlp"),
]  # fmt: skip


def _damaged(tmp: Path, image: Path) -> None:
    """Damaged copies of a teacher, data folders and files a user could hand in."""
    for name in ("truncated", "garbled"):
        shutil.copytree(image, tmp / name)
    weights = tmp / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp / "garbled" / "config.json").write_text("{not json", encoding="utf-8")
    (tmp / "file.txt").write_text("a file, not a folder", encoding="utf-8")
    for part in ("train", "test"):
        (tmp / "notimage" / part / "shirt").mkdir(parents=True)
        (tmp / "notimage" / part / "shirt" / "bad.png").write_bytes(b"not a png at all")
        (tmp / "emptyclass" / part / "boot").mkdir(parents=True)
    (tmp / "latin1.csv").write_bytes("text,label\ncaf\xe9 cr\xe8me,positive\n".encode("latin-1"))
    _teacher_specs(tmp)


def _teacher_specs(tmp: Path) -> None:
    """Teacher specs (distill.py --teacher spec.json) that fail cheaply: torch.nn classes
    stand in for a user's factory (nn.Flatten on a 1x5 image predicts 5 classes)."""
    import torch

    torch.save(torch.nn.Linear(2, 2), tmp / "full.pt")  # a pickled model, not a state_dict
    grey = {"mean": [0.5], "std": [0.5], "dataset": "fashion-mnist"}
    specs = {
        "unknown": {"arch": "torchvision:resnet19", "weights": "full.pt", "input_size": 32},
        "noweights": {"arch": "torchvision:resnet18", "weights": "absent.safetensors"},
        "pickled": {"arch": "torchvision:resnet18", "weights": "full.pt"},
        "noimport": {"arch": "no_such_package_xyz.models:make"},
        "dict": {"arch": "builtins:dict"},
        "linear": {"arch": "torch.nn:Linear", "kwargs": {"in_features": 5, "out_features": 10}},
        "5": {"arch": "torch.nn:Flatten", "input_size": [1, 5]},
        "squeezenet": {
            "arch": "torchvision.models:squeezenet1_1",  # a factory: random weights will do
            "kwargs": {"num_classes": 10},
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
    }
    for name, spec in specs.items():
        spec = {"input_size": 32, **grey, **spec}
        (tmp / f"spec-{name}.json").write_text(json.dumps(spec), encoding="utf-8")


def _run(module: str, argv: list[str], capsys) -> tuple[int, str]:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: main(argv))
    return int(stop.value.code), capsys.readouterr().err.strip()


@pytest.mark.parametrize("case, module, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(
    case, module, argv, expected, tmp_path, capsys, image_teacher, nlp_teacher, rl_teacher
):
    _damaged(tmp_path, image_teacher)
    paths = {"image": image_teacher, "nlp": nlp_teacher, "rl": rl_teacher, "tmp": tmp_path}
    argv = [a.format(**paths) for a in argv]
    code, err = _run(module, argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and re.search(expected, err), err
    assert not list(tmp_path.rglob("results.json")), "a failed run must not leave a result"


def test_report_on_folders_without_results_exits_non_zero(tmp_path, capsys):
    from common import report

    assert report.main([str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "no student results" in capsys.readouterr().err
