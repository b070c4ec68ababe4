"""The main job's plumbing with a tiny budget: steps, teacher reuse, failures, the report."""

from __future__ import annotations

import json
import sys
import types

from common import main_job
from common.domains import Domain
from common.errors import ConfigError

TINY_IMAGES = {
    "image-classification": [
        "--max-train", "384", "--max-test", "200", "--val-size", "200",
        "--batch-size", "64", "--epochs", "1",
    ],
    # The quick preset keeps 1000 labels: more than this tiny training split has.
    "image-classification:distill": ["--labelled", "100"],
}  # fmt: skip


def _fake_domain(monkeypatch, name: str, fail: bool) -> None:
    """A stand-in domain whose teacher script fails (or succeeds) without training."""
    mod = types.ModuleType(name)

    def run(argv):
        if fail:
            raise ConfigError("fake teacher: no data (run `make data`)")

    mod.main = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, mod)
    real = main_job.get_domain
    fake = Domain("nlp", name, name)
    monkeypatch.setattr(main_job, "get_domain", lambda d: fake if d == "nlp" else real(d))


def test_plan_wires_teacher_output_into_distill(tmp_path):
    args = main_job.Args(domains=("image-classification",), out_dir=tmp_path, seeds=2)
    extra = {"image-classification": ["--epochs", "1"], "image-classification:distill": ["-x"]}
    teacher, distill = main_job.plan(args, extra)
    assert distill.argv[-3:] == ["--epochs", "1", "-x"] and "-x" not in teacher.argv
    assert teacher.argv[-4:] == ["--out-dir", str(tmp_path / "image-classification" / "teacher"), "--epochs", "1"]  # fmt: skip
    i = distill.argv.index("--teacher")
    assert distill.argv[i + 1] == str(tmp_path / "image-classification" / "teacher" / "model")
    assert distill.argv[distill.argv.index("--seeds") + 1] == "2"


def test_tiny_main_job_runs_reports_and_reuses_the_teacher(tmp_path, monkeypatch, capsys):
    _fake_domain(monkeypatch, "fake_nlp_scripts", fail=True)
    argv = ["--domains", "image-classification", "nlp", "--out-dir", str(tmp_path), "--seeds", "1"]
    status = main_job.main(argv, TINY_IMAGES)
    out = capsys.readouterr().out
    assert status == 1, "a failed domain makes the job fail"
    assert "nlp: teacher FAILED" in out and "nlp: distill: skipped" in out
    assert "image-classification · fashion-mnist" in out  # the rest is still compared
    record = json.loads((tmp_path / "main_job.json").read_text())
    assert [s["status"] for s in record["steps"]] == ["ok", "ok", "failed", "skipped"]
    assert record["total_s"] > 0
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "student alone" in report and "one seed" in report
    assert (tmp_path / "report" / "overview.png").is_file()

    # Second run: the finished teacher is reused, not retrained.
    _fake_domain(monkeypatch, "fake_nlp_ok", fail=False)
    assert main_job.main(argv, TINY_IMAGES) == 0
    assert "teacher reused" in capsys.readouterr().out


def test_unknown_domain_is_a_clear_error(tmp_path):
    args = main_job.Args(domains=("audio",), out_dir=tmp_path)
    try:
        main_job.plan(args)
    except ConfigError as err:
        assert "unknown domain" in str(err) and "image-classification" in str(err)
    else:
        raise AssertionError("an unknown domain must be refused")
