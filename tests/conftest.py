"""Teachers every test module shares, trained once per session on small real subsets."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

IMAGE_SMALL = ["--max-train", "384", "--max-test", "200", "--val-size", "200", "--batch-size", "64"]
NLP_SMALL = ["--max-train", "128", "--max-test", "64", "--max-length", "32", "--batch-size", "32"]
RL_TINY = [
    "--rounds", "2", "--steps-per-round", "256", "--train-steps-per-round", "20",
    "--n-envs", "4", "--eval-episodes", "3", "--val-episodes", "1", "--batch-size", "64",
]  # fmt: skip
"""Small distillation budgets per domain (image and NLP also for their teachers)."""


SUITE_PEAK_TMP_GB = 1.5
"""The suite's peak use of the temp disk, measured: each passing test's ``tmp_path`` is removed
at its teardown (``tmp_path_retention_policy`` in pyproject.toml), the session's teachers stay."""


def pytest_report_header(config) -> str:
    """Free space where ``tmp_path`` lives, so a run that fails for a full disk says so up front."""
    # pytest's own order: --basetemp, then $PYTEST_DEBUG_TEMPROOT, then the system temp folder.
    temproot = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    root = Path(config.option.basetemp or temproot).absolute()
    while not root.exists():  # --basetemp may name a folder pytest has yet to make
        root = root.parent
    free = shutil.disk_usage(root).free / 1e9
    note = "" if free > 2 * SUITE_PEAK_TMP_GB else "  <- low: free space or pass --basetemp DIR"
    return f"temp disk: {free:.1f} GB free in {root} (the suite peaks near {SUITE_PEAK_TMP_GB} GB){note}"


def sb3_tmp_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("SB3-*")}


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """An empty data root for fetch tests (``$DISTILLERY_DATA_DIR``)."""
    from common import fetch

    root = tmp_path / "data"
    monkeypatch.setenv(fetch.ENV_VAR, str(root))
    return root


def train_image_teacher(out: Path) -> Path:
    """The session's image teacher, trained into ``out`` (also used by bad_input_table.py)."""
    from image_classification.scripts import train_teacher

    # AdamW at a modest rate learns more than SGD's one-cycle warm-up in a dozen steps.
    argv = [*IMAGE_SMALL, "--epochs", "2", "--optimizer", "adamw", "--lr", "0.002"]
    train_teacher.main([*argv, "--out-dir", str(out)])
    return out / "model"


def minilm_one_layer(out: Path) -> Path:
    """The packaged MiniLM cut to its first layer, saved as a local checkpoint folder."""
    from transformers import AutoModel

    from nlp.teacher_model.bert import load_tokenizer, resolve_checkpoint

    path, _ = resolve_checkpoint("minilm")
    AutoModel.from_pretrained(path, num_hidden_layers=1, local_files_only=True).save_pretrained(out)
    load_tokenizer("minilm").save_pretrained(out)
    return out


def train_nlp_teacher(base: Path, out: Path) -> Path:
    from nlp.scripts import train_teacher

    train_teacher.main(
        [*NLP_SMALL, "--teacher", str(base), "--epochs", "1", "--lr", "2e-4", "--out-dir", str(out)]
    )
    return out / "model"


def train_rl_teacher(out: Path) -> Path:
    from reinforcement_learning.scripts import train_teacher

    train_teacher.main(["--timesteps", "3072", "--eval-episodes", "3", "--out-dir", str(out)])
    return out / "model"


@pytest.fixture(scope="session")
def image_teacher(tmp_path_factory):
    return train_image_teacher(tmp_path_factory.mktemp("image-teacher"))


@pytest.fixture(scope="session")
def one_layer_base(tmp_path_factory):
    return minilm_one_layer(tmp_path_factory.mktemp("minilm-1layer"))


@pytest.fixture(scope="session")
def nlp_teacher(one_layer_base, tmp_path_factory):
    return train_nlp_teacher(one_layer_base, tmp_path_factory.mktemp("nlp-teacher"))


@pytest.fixture(scope="session")
def rl_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl-teacher")
    before = sb3_tmp_dirs()
    model = train_rl_teacher(out)
    # SB3 logs into the run directory, never into /tmp/SB3-* folders.
    assert sb3_tmp_dirs() == before
    assert (out / "sb3" / "progress.csv").is_file()
    return model
