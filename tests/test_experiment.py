"""The shared experiment runner: methods as data, --loss / --loss-option, what terms read,
the teacher plan, the statistics path, the domain registry; and a loss term defined here,
in the test, run through every domain's distill.py with no change to domain code."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch.nn.functional as F
from conftest import IMAGE_SMALL, NLP_SMALL, RL_TINY
from torch import Tensor

from common.domains import domain_names, domains
from common.errors import ConfigError
from common.experiment import (
    Method,
    earlier_runs,
    method_table,
    plan_teacher,
    resolve_methods,
)
from common.losses import LOSSES, LossTerm, Reads
from common.report import _mean_std
from common.results import load_results
from common.stats import MethodRow, score_interval, wilson_interval


class CosineLogitsTerm(LossTerm):
    """1 - cosine similarity of student and teacher logits: a term no domain knows of."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def reads(self) -> Reads:
        return Reads(student=frozenset({"logits"}), teacher=frozenset({"logits"}))

    def forward(self, student, teacher, batch) -> Tensor:
        s, t = student["logits"], teacher["logits"].detach()
        return self.scale * (1 - F.cosine_similarity(s, t, dim=-1)).mean()


@pytest.fixture
def cosine_term():
    LOSSES.add("cosine_logits", CosineLogitsTerm)
    yield "cosine_logits"
    LOSSES.remove("cosine_logits")


def _image(teacher, out):
    from image_classification.scripts import distill

    argv = [*IMAGE_SMALL, "--teacher", str(teacher), "--epochs", "1", "--student", "tiny"]
    return distill, [*argv, "--out-dir", str(out)]


def _nlp(teacher, out):
    from nlp.scripts import distill

    argv = [*NLP_SMALL, "--teacher", str(teacher), "--max-transfer", "32", "--epochs", "1"]
    return distill, [*argv, "--out-dir", str(out), "--cache-dir", str(out / "cache")]


def _rl(teacher, out):
    from reinforcement_learning.scripts import distill

    return distill, [*RL_TINY, "--teacher", str(teacher), "--out-dir", str(out)]


@pytest.mark.parametrize(
    "domain, fixture, setup",
    [
        ("image-classification", "image_teacher", _image),
        ("nlp", "nlp_teacher", _nlp),
        ("reinforcement-learning", "rl_teacher", _rl),
    ],
)
def test_a_term_defined_here_runs_in_every_domain(
    cosine_term, request, tmp_path, domain, fixture, setup
):
    distill, argv = setup(request.getfixturevalue(fixture), tmp_path)
    spec = f"{cosine_term}=0.5,kd=0.5"
    if domain == "reinforcement-learning":
        spec = f"{cosine_term}=0.5,policy_kl=0.5"
    summary = distill.main(
        [*argv, "--methods", "--loss", spec, "--loss-option", f"{cosine_term}.scale=2"]
    )
    name = spec  # a --loss method is named by its spec
    assert list(summary["methods"]) == [name]
    res = load_results(tmp_path / name / "seed-0")
    assert res["domain"] == domain and res["method"] == name
    assert res["loss"]["weights"] == {cosine_term: 0.5, spec.split(",")[1].split("=")[0]: 0.5}
    assert res["loss"]["options"][cosine_term] == {"scale": 2}
    assert res["extra"]["teacher_cache"]["mode"] in ("cache", "live")
    assert res["extra"]["teacher_cache"]["reason"]


def test_methods_resolve_with_options_and_every_mistake_is_named():
    table = method_table({"none": "ce=1", "kd": ("kd=0.5,ce=0.5", {"kd": {"temperature": 2.0}})})
    methods = resolve_methods(["none", "kd"], table, "lskd=0.9,ce=0.1", ["kd.temperature=3"])
    assert [m.name for m in methods] == ["none", "kd", "lskd=0.9,ce=0.1"]
    assert methods[1].options["kd"] == {"temperature": 3} and methods[0].options == {}
    assert methods[1].describe() == {
        "weights": {"kd": 0.5, "ce": 0.5},
        "options": {"kd": {"temperature": 3}},
    }
    cases = [
        (["fitnet"], None, [], r"unknown method 'fitnet'; this domain's methods: none, kd"),
        ([], "nope=1", [], r"unknown loss 'nope'; known: .*kd"),
        (["kd"], None, ["kd.temp=2"], r"'kd' has no option 'temp'; its options: temperature"),
        (["kd"], None, ["kd=2"], r"write term\.key=value"),
        (["kd", "kd"], None, [], r"listed twice"),
        ([], None, [], r"no method to run"),
    ]
    for names, loss, options, message in cases:
        with pytest.raises(ConfigError, match=message):
            resolve_methods(names, table, loss, options)
    # An option for a term none of the chosen methods uses (a preset's, say) is only noted.
    (alone,) = resolve_methods(["none"], table, None, ["kd.temperature=2"])
    assert alone.options == {}
    with pytest.raises(ConfigError, match=r"'kd' has no option 'tau'"):
        method_table({"kd": ("kd=1", {"kd": {"tau": 2}})})


@pytest.mark.parametrize("domain", domain_names())
def test_the_methods_help_names_every_method_of_the_table(domain):
    """``--methods --help`` lists the method table by hand: a method added to the table and
    not to the help (as four image methods once were) fails here."""
    import importlib

    from common.cli import field_docs

    script = importlib.import_module(domains()[domain].distill_script)
    table = script.METHODS
    tables = table.values() if all(isinstance(v, dict) for v in table.values()) else [table]
    names = {name for t in tables for name in t}
    help_text = " ".join(field_docs(script.Args)["methods"].split())
    listed = set(re.findall(r"[\w+-]+", help_text))
    assert names and names <= listed, f"missing from the help: {sorted(names - listed)}"


def test_the_teacher_plan_is_decided_once_with_a_reason():
    logits = frozenset({"logits"})
    assert plan_teacher(frozenset(), cache=True, cacheable=logits, why_not_cached="").mode == "none"
    off = plan_teacher(logits, cache=False, cacheable=logits, why_not_cached="")
    assert off.mode == "live" and "--no-cache" in off.reason
    cached = plan_teacher(logits, cache=True, cacheable=logits, why_not_cached="x")
    assert cached.mode == "cache" and cached.note({"hit": True}, 7)["batches_served"] == 7
    live = plan_teacher(logits | {"hidden"}, cache=True, cacheable=logits, why_not_cached="big")
    assert live.mode == "live" and "['hidden']" in live.reason and "big" in live.reason


def test_a_term_reading_what_the_domain_does_not_produce_is_refused(rl_teacher, tmp_path):
    from reinforcement_learning.scripts import distill

    with pytest.raises(ConfigError, match=r"'ce' reads batch output 'labels'.*they give: obs"):
        distill.main([*RL_TINY, "--teacher", str(rl_teacher), "--methods", "--loss", "ce=1",
                      "--out-dir", str(tmp_path)])  # fmt: skip


def test_the_summary_holds_earlier_invocations_runs_with_the_same_settings(image_teacher, tmp_path):
    """``--methods kd`` after ``--methods none`` in the same folder still compares kd with the
    student alone; a run made with other settings (here another learning rate) is left out."""
    distill, argv = _image(image_teacher, tmp_path)
    distill.main([*argv, "--methods", "none"])
    summary = distill.main([*argv, "--methods", "kd"])
    assert list(summary["methods"]) == ["none", "kd"]
    none = load_results(tmp_path / "none" / "seed-0")["metrics"]["final"]["test/accuracy"]
    assert summary["methods"]["none"]["scores"] == pytest.approx([none])
    assert summary["methods"]["kd"]["gain_over_none"] is not None
    settings = load_results(tmp_path / "kd" / "seed-0")["extra"]["settings"]
    task = {k: v for k, v in settings.items() if k not in ("method", "seed", "loss")}
    assert [r["method"] for r in earlier_runs(tmp_path, task, {"kd"})] == ["none"]
    assert earlier_runs(tmp_path, {**task, "lr": task["lr"] / 2}, {"kd"}) == []


def test_wilson_interval_matches_the_closed_form():
    # Independent arithmetic: p = 0.5, n = 100, z = 1.96 -> 0.5 ± 0.0962 (Wilson 1927).
    z, n, p = 1.959963984540054, 100, 0.5
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half)) and high - low == pytest.approx(
        0.1924, abs=1e-4
    )
    # An accuracy of 1.0 stays inside [0, 1]; the interval narrows with n.
    assert wilson_interval(1.0, 50)[1] == pytest.approx(1.0)
    assert wilson_interval(0.9, 10000)[1] - wilson_interval(0.9, 10000)[0] < 0.012
    lo, hi = score_interval(200.0, {"kind": "mean", "n": 25, "std": 10.0})
    assert (lo, hi) == pytest.approx((200 - 1.959963984540054 * 2, 200 + 1.959963984540054 * 2))
    assert score_interval(0.9, None) is None


def test_one_seed_prints_no_spread():
    one = MethodRow("kd", [0.8355], 1.0, {}, 100)
    three = MethodRow("kd", [0.91, 0.92, 0.93], 1.0, {}, 100)
    assert _mean_std(one, "test/accuracy") == "83.55% (1 seed)"
    assert _mean_std(three, "test/accuracy") == "92.00 ± 1.00%"


def test_domains_come_from_the_registry():
    assert domain_names() == ("image-classification", "nlp", "reinforcement-learning")
    found = domains()
    assert found["nlp"].distill_script == "nlp.scripts.distill"
    argv = found["reinforcement-learning"].distill_argv("quick", Path("r"), 3)
    assert argv[:4] == ["--preset", "quick", "--teacher", "r/teacher/model"] and argv[-2:] == [
        "--seeds",
        "3",
    ]
    method = Method("x", {"ce": 1.0})
    assert method.with_options("ce", label_smoothing=0.1).options == {
        "ce": {"label_smoothing": 0.1}
    }
