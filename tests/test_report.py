"""The cross-domain report: numbers from results files, plain verdicts, bad files skipped."""

from __future__ import annotations

import json

import pytest

from common.report import load_all, main, summarize, write_report
from common.results import RunResult, make_metrics, write_results

TEACHER = {
    "name": "big",
    "params": 1000,
    "score": 0.90,
    "speed": {"latency_b1_ms": 4.0, "throughput": 100.0, "batch": 256, "unit": "img/s"},
}
STUDENT_SPEED = {"latency_b1_ms": 1.0, "throughput": 800.0, "batch": 256, "unit": "img/s"}


def write_run(
    root, domain, method, seed, score, metric="test/accuracy", teacher=TEACHER, extra=None,
    student=None, budget=None, student_speed=STUDENT_SPEED,
):  # fmt: skip
    student = student or {"name": "small", "params": 50}
    run = root / domain / student["name"] / method / f"seed-{seed}"
    write_results(
        run,
        RunResult(
            domain=domain,
            dataset="toy",
            role="student",
            method=method,
            seed=seed,
            teacher=teacher,
            student={**student, "speed": student_speed},
            metrics=make_metrics({metric: score}, metric),
            budget=budget or {"epochs": 2, "steps": 10},
            wall_time_s=3.0,
            extra=extra or {},
        ),
    )
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, (none, kd) in enumerate([(0.80, 0.85), (0.82, 0.86), (0.81, 0.87)]):
        write_run(root, "image-classification", "none", seed, none)
        write_run(root, "image-classification", "kd", seed, kd)
    # NLP: one seed each, so nothing may be called established.
    # What NLP's distill.py records: the student alone never sees the transfer texts.
    alone = {"train_size": 300, "labelled_train_size": 300, "transfer_size": 0}
    write_run(root, "nlp", "none", 0, 0.70, extra=alone)
    write_run(
        root, "nlp", "kd", 0, 0.75, extra={**alone, "train_size": 2300, "transfer_size": 2000}
    )
    # RL: returns, with the kd gain inside the seed spread.
    rl_teacher = {**TEACHER, "score": 500.0, "floor": 20.0}  # a random policy's return
    for seed, (none, kd) in enumerate([(300.0, 310.0), (400.0, 390.0)]):
        write_run(root, "reinforcement-learning", "none", seed, none, "eval/return", rl_teacher)
        write_run(root, "reinforcement-learning", "kd", seed, kd, "eval/return", rl_teacher)
    return root


def test_numbers_and_verdicts_follow_from_the_results(runs):
    results, problems = load_all([runs])
    assert problems == [] and len(results) == 12
    by_domain = {s.domain: s for s in summarize(results)}
    img = by_domain["image-classification"]
    kd, none = img.rows["kd"], img.rows["none"]
    assert none.mean == pytest.approx(0.81) and none.std == pytest.approx(0.01)
    assert kd.mean == pytest.approx(0.86) and kd.n == 3
    assert img.gain(kd) == pytest.approx(0.05)
    assert img.gap_closure(kd) == pytest.approx(0.05 / 0.09)
    assert img.kept(kd) == pytest.approx(0.86 / 0.90)
    assert img.size_ratio(kd) == pytest.approx(0.05)
    assert kd.speedup == pytest.approx(8.0)
    assert img.verdict(kd) == "gain beyond 2σ"
    assert by_domain["nlp"].verdict(by_domain["nlp"].rows["kd"]).startswith("one seed")
    rl = by_domain["reinforcement-learning"]
    assert rl.gain(rl.rows["kd"]) == pytest.approx(0.0)
    assert rl.verdict(rl.rows["kd"]).startswith("within noise")
    assert rl.kept(rl.rows["none"]) == pytest.approx((350.0 - 20.0) / (500.0 - 20.0))


def test_a_speed_up_divides_figures_timed_side_by_side_in_one_run(tmp_path):
    # Each run timed both models under its own load (its invocation's): kd's runs give the
    # ratios 8, 5 and 10, the student alone's 12. Dividing one run's student figure by
    # another run's teacher figure would mix loads (the student alone: 600 / 100 = 6).
    root = tmp_path / "runs"
    timings = {"kd": [(100.0, 800.0), (200.0, 1000.0), (50.0, 500.0)], "none": [(50.0, 600.0)]}
    for method, pairs in timings.items():
        for seed, (t, s) in enumerate(pairs):
            teacher = {**TEACHER, "speed": {**TEACHER["speed"], "throughput": t}}
            speed = {**STUDENT_SPEED, "throughput": s}
            write_run(
                root, "image-classification", method, seed, 0.85, teacher=teacher,
                student_speed=speed,
            )  # fmt: skip
    results, problems = load_all([root])
    assert problems == []
    (group,) = summarize(results)
    assert group.rows["kd"].speedup == pytest.approx(8.0)  # the median of 8, 5 and 10
    assert group.rows["none"].speedup == pytest.approx(12.0)


def test_report_files_plots_and_terminal_table(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out)]) == 0
    text = (out / "REPORT.md").read_text()
    for needle in ("## image-classification · toy", "86.00 ± 1.00%", "gain beyond 2σ", "one seed"):
        assert needle in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "overview.png" in pngs and len(pngs) == 4
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    # The student alone and the distilled student saw different data: the report says so.
    assert (
        "Training data per run: `none`: train_size 300, labelled_train_size 300, transfer_size "
        "0; `kd`: train_size 2,300, labelled_train_size 300, transfer_size 2,000." in text
    )
    assert text.count("Training data per run") == 1  # not for domains where all saw the same
    printed = capsys.readouterr().out
    assert "student alone" in printed and "reinforcement-learning · toy" in printed


def test_missing_and_malformed_files_are_named_and_the_rest_still_reported(runs, tmp_path):
    broken = write_run(runs, "image-classification", "at", 0, 0.5)
    (broken / "results.json").write_text("{not json")
    bad_schema = write_run(runs, "image-classification", "dkd", 0, 0.5)
    data = json.loads((bad_schema / "results.json").read_text())
    del data["metrics"]
    (bad_schema / "results.json").write_text(json.dumps(data))
    report, table = write_report([runs, tmp_path / "absent"], tmp_path / "out")
    text = report.read_text()
    assert "## Skipped results" in text
    assert "is not valid JSON" in text and "missing key 'metrics'" in text
    assert "absent: does not exist" in text
    assert "86.00 ± 1.00%" in text  # the good runs are still there
    assert "skipped:" in table


def test_no_results_at_all_is_said_plainly(tmp_path):
    (tmp_path / "empty").mkdir()
    report, _ = write_report([tmp_path / "empty"], tmp_path / "out")
    text = report.read_text()
    assert "no results.json found" in text and "no student results to compare" in text


def test_a_teacher_no_better_than_the_student_alone_is_said_plainly(tmp_path):
    weak = {**TEACHER, "score": 0.70}
    for seed, (none, kd) in enumerate([(0.80, 0.81), (0.82, 0.80)]):
        write_run(tmp_path / "runs", "image-classification", "none", seed, none, teacher=weak)
        write_run(tmp_path / "runs", "image-classification", "kd", seed, kd, teacher=weak)
    report, _ = write_report([tmp_path / "runs"], tmp_path / "out")
    text = report.read_text()
    assert "the teacher scores no better than the student alone" in text
    assert "img/s" in text  # the unit the results recorded
    assert "`none`: epochs 2, steps 10; `kd`: epochs 2, steps 10." in text
    (summary,) = summarize(load_all([tmp_path / "runs"])[0])
    assert summary.gap_closure(summary.rows["kd"]) is None


def _log_curve(run, events):
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps({"event": "epoch", **e}) + "\n")


def test_learning_curves_are_read_beside_each_result_and_plotted(tmp_path):
    from common.report import read_curve

    root = tmp_path / "runs"
    for seed in (0, 1):
        for method, base in (("none", 0.5), ("kd", 0.6)):
            run = write_run(root, "image-classification", method, seed, base + 0.2)
            _log_curve(
                run, [{"epoch": e, "step": 10 * e, "val/accuracy": base + 0.1 * e} for e in (1, 2)]
            )
    # RL: the x axis is environment steps when every event records them; a val/return curve
    # stands for the test/return_mean metric; a line cut short by a kill is skipped.
    rl = write_run(root, "reinforcement-learning", "dagger", 0, 400.0, "test/return_mean")
    _log_curve(rl, [{"epoch": 1, "step": 5, "env_steps": 2000, "val/return": 100.0}])
    with open(rl / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "epoch", "epo')
    assert read_curve(rl / "results.json", "test/return_mean") == ("env_steps", {2000.0: 100.0})
    x, curve = read_curve(
        root / "image-classification/small/kd/seed-1/results.json", "test/accuracy"
    )
    assert x == "step" and curve == pytest.approx({10.0: 0.7, 20.0: 0.8})
    assert read_curve(tmp_path / "nowhere" / "results.json", "test/accuracy") == ("step", {})

    report, _ = write_report([root], tmp_path / "report")
    text = report.read_text()
    for name in (
        "image-classification-toy-big-small-curves.png",
        "reinforcement-learning-toy-big-small-curves.png",
    ):
        assert f"({name})" in text and (tmp_path / "report" / name).stat().st_size > 1000


def test_a_student_size_sweep_is_one_group_per_size_and_one_figure(tmp_path):
    from common.report import size_sweeps

    root = tmp_path / "runs"
    rl_teacher = {**TEACHER, "score": 500.0, "floor": 0.0}
    for width, kept in ((4, 0.5), (16, 0.9), (64, 1.0)):
        student = {"name": f"mlp-{width}", "params": 10 * width}
        for seed, jitter in enumerate((-10.0, 10.0)):
            score = 500.0 * kept + jitter
            write_run(root, "reinforcement-learning", "dagger", seed, score, "test/return_mean",
                      rl_teacher, student=student)  # fmt: skip
            write_run(root, "reinforcement-learning", "none", seed, 100.0, "test/return_mean",
                      rl_teacher, student=student)  # fmt: skip
    summaries = summarize(load_all([root])[0])
    assert [s.student_name for s in summaries] == ["mlp-16", "mlp-4", "mlp-64"]
    assert [s.kept(s.rows["dagger"]) for s in summaries] == pytest.approx([0.9, 0.5, 1.0])
    assert list(size_sweeps(summaries)) == ["reinforcement-learning · toy · big"]
    report, _ = write_report([root], tmp_path / "report")
    name = "reinforcement-learning-toy-big-sizes.png"
    assert f"]({name})" in report.read_text()
    assert (tmp_path / "report" / name).stat().st_size > 1000


def test_steps_until_a_curve_keeps_95_percent_of_the_teacher(tmp_path):
    from common.report import steps_to_keep

    root = tmp_path / "runs"
    teacher = {**TEACHER, "score": 1000.0, "floor": 0.0}
    for seed, returns in enumerate(([400.0, 960.0, 990.0], [300.0, 500.0, 900.0])):
        run = write_run(root, "reinforcement-learning", "dagger", seed, returns[-1],
                        "test/return_mean", teacher)  # fmt: skip
        _log_curve(run, [{"epoch": i + 1, "step": i, "env_steps": 5000 * (i + 1),
                          "val/return": r} for i, r in enumerate(returns)])  # fmt: skip
    (s,) = summarize(load_all([root])[0])
    assert steps_to_keep(s, s.rows["dagger"], 0.95) == [10000.0, None]
    report, _ = write_report([root], tmp_path / "report")
    assert (
        "keeps 95% of the teacher's score, per seed: `dagger` 10,000, never" in report.read_text()
    )


def test_runs_of_one_method_with_other_budgets_are_never_averaged(tmp_path):
    """The PPO baseline run for the distillation budget (3 seeds) and again for 1M steps (one
    seed) stay two rows: the budget with more runs keeps the name 'none'."""
    teacher = {**TEACHER, "score": 1000.0, "floor": 0.0}
    for seed, score in enumerate((100.0, 120.0, 110.0)):
        write_run(tmp_path / "a", "reinforcement-learning", "none", seed, score,
                  "test/return_mean", teacher, budget={"env_steps": 51_200})  # fmt: skip
        write_run(tmp_path / "a", "reinforcement-learning", "dagger", seed, 990.0,
                  "test/return_mean", teacher, budget={"env_steps": 50_000})  # fmt: skip
    write_run(tmp_path / "b", "reinforcement-learning", "none", 0, 900.0, "test/return_mean",
              teacher, budget={"env_steps": 1_001_472})  # fmt: skip
    (s,) = summarize(load_all([tmp_path / "a", tmp_path / "b"])[0])
    assert set(s.rows) == {"none", "none @ 1,001,472 env steps", "dagger"}
    assert s.baseline().scores == [100.0, 120.0, 110.0]
    assert s.rows["none @ 1,001,472 env steps"].scores == [900.0]
