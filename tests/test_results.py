"""The results.json schema: written valid, read back, and bad files named clearly."""

from __future__ import annotations

import json

import pytest

from common.results import (
    SCHEMA_VERSION,
    ResultsError,
    RunResult,
    load_results,
    make_metrics,
    validate,
    write_results,
)


def _result(**overrides) -> RunResult:
    fields = dict(
        domain="image-classification",
        dataset="fashion-mnist",
        role="student",
        method="kd",
        seed=0,
        student={"name": "cnn-small", "params": 100_000},
        teacher={"name": "resnet18", "params": 11_000_000},
        metrics=make_metrics(
            {"test/accuracy": 0.9},
            primary="test/accuracy",
            best={"metrics": {"val/accuracy": 0.91}, "epoch": 3, "step": 300},
        ),
        loss={"weights": {"kd": 0.9, "ce": 0.1}, "options": {"kd": {"temperature": 4.0}}},
        budget={"epochs": 3, "steps": 300, "examples": 9600},
        wall_time_s=12.5,
    )
    fields.update(overrides)
    return RunResult(**fields)


def test_round_trip_has_every_documented_key(tmp_path):
    path = write_results(tmp_path, _result())
    data = load_results(tmp_path)
    assert path.name == "results.json"
    assert data["schema_version"] == SCHEMA_VERSION
    for key in (
        "domain",
        "dataset",
        "role",
        "method",
        "seed",
        "loss",
        "teacher",
        "student",
        "metrics",
        "budget",
        "wall_time_s",
        "command",
        "versions",
        "git_commit",
        "created_at",
        "extra",
    ):
        assert key in data
    assert data["metrics"]["best_at"] == {"epoch": 3, "step": 300}
    assert data["metrics"]["final"] == {"test/accuracy": 0.9}
    assert "torch" in data["versions"] and data["git_commit"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"domain": "vision"}, "domain 'vision'"),
        ({"role": "pupil"}, "role 'pupil'"),
        ({"seed": "0"}, "'seed' should be int"),
        ({"student": {"name": "x"}}, "student.params"),
        ({"metrics": make_metrics({"acc": 1.0}, primary="test/accuracy")}, "metrics.primary"),
    ],
)
def test_invalid_results_are_refused_with_the_reason(tmp_path, change, message):
    with pytest.raises(ResultsError, match=message):
        write_results(tmp_path, _result(**change))
    assert not (tmp_path / "results.json").exists()


def test_loading_missing_or_malformed_files_says_which_and_why(tmp_path):
    with pytest.raises(ResultsError, match="no results file"):
        load_results(tmp_path / "run-x")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(tmp_path)
    data = _result().to_dict()
    del data["metrics"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="missing key 'metrics'"):
        load_results(tmp_path)


def test_validate_accepts_a_teacher_run_without_teacher():
    data = _result(role="teacher", method="teacher", teacher=None).to_dict()
    assert validate(data) == []
