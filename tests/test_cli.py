"""Dataclass arguments: defaults, presets, overrides, help from field docstrings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from common.cli import field_docs, parse_args, run_main
from common.errors import ConfigError


@dataclass
class Args:
    """Train something."""

    epochs: int = 3
    """Passes over the data."""
    lr: float = 0.1
    """Learning rate."""
    method: Literal["none", "kd"] = "kd"
    """Distillation method."""
    out: Path = Path("runs/x")
    """Run directory."""
    resume: bool = True
    """Resume from the last checkpoint."""
    max_steps: int | None = None
    """Optional step budget."""
    layers: tuple[str, ...] = ("a", "b")
    """Tapped layers."""
    decay: bool | None = None
    """Optional switch: unset unless given (a table decides)."""


QUICK = Args(epochs=1, lr=0.5)


def test_defaults_presets_and_overrides():
    assert parse_args(Args, []) == Args()
    assert parse_args(Args, []).decay is None
    assert parse_args(Args, ["--decay"]).decay is True
    assert parse_args(Args, ["--no-decay"]).decay is False
    presets = {"quick": QUICK}
    assert parse_args(Args, ["--preset", "quick"], presets) == QUICK
    args = parse_args(
        Args,
        [
            "--preset",
            "quick",
            "--lr",
            "0.01",
            "--no-resume",
            "--method",
            "none",
            "--max-steps",
            "7",
            "--layers",
            "x",
            "y",
            "z",
        ],
        presets,
    )
    assert args == Args(
        epochs=1, lr=0.01, method="none", resume=False, max_steps=7, layers=("x", "y", "z")
    )
    assert parse_args(Args, ["--max-steps", "none"]).max_steps is None
    assert parse_args(Args, ["--out", "elsewhere"]).out == Path("elsewhere")


def test_bad_values_are_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit):
        parse_args(Args, ["--method", "dkd"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(Args, ["--epochs", "three"])


def test_help_shows_field_docstrings(capsys):
    assert field_docs(Args)["lr"] == "Learning rate."
    with pytest.raises(SystemExit):
        parse_args(Args, ["--help"], {"quick": QUICK})
    out = capsys.readouterr().out
    assert "Passes over the data." in out and "--preset {quick}" in out


def test_run_main_turns_user_errors_into_a_message(capsys):
    def bad():
        raise ConfigError("unknown loss 'kd2'; known: kd")

    with pytest.raises(SystemExit) as exit_info:
        run_main(bad)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: unknown loss 'kd2'; known: kd"


def test_args_dict_records_newer_options_only_when_set():
    """What a run records as its settings: paths as strings, ``exclude`` left out, and an
    ``only_when_set`` option only away from its field default (so runs finished before the
    option keep their record), whatever its value type."""
    from common.cli import args_dict

    @dataclass
    class Newer:
        lr: float = 0.1
        out: Path = Path("runs/x")
        best: bool = False
        base: str | None = None

    only = ("best", "base")
    assert args_dict(Newer(), ("lr",), only_when_set=only) == {"out": "runs/x"}
    assert args_dict(Newer(best=True, base="minilm"), only_when_set=only) == {
        "lr": 0.1, "out": "runs/x", "best": True, "base": "minilm"
    }  # fmt: skip
    assert args_dict(Newer()) == {"lr": 0.1, "out": "runs/x", "best": False, "base": None}
