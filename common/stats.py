"""The one statistics path: every number a distill script prints, ``summary.json`` holds and the
report shows is computed here, from ``results.json`` dicts.

Per (domain, dataset, teacher) group and method over seeds: mean and sample std of the primary
test metric, the gain over the student alone (``none``) and whether it is beyond noise (more
than :data:`NOISE_SIGMAS` times the larger seed std; one seed establishes nothing), the gap
closure, the fraction of the teacher kept, and the test set's own 95% interval for the score
(Wilson for an accuracy on n test examples, a normal interval for a mean over n episodes).

The seed spread and the test interval answer different questions: the spread says how much
another seed would move the score; the interval says how much another test set of the same
size would. Both are reported, side by side.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NOISE_SIGMAS = 2.0
"""A gain counts as beyond noise when it exceeds this many of the larger seed std."""
Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""
DATA_KEYS = ("train_size", "labelled_train_size", "transfer_size")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value: one seed says nothing of
    spread, and reports must say so, not hide it)."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def gap_closure(distilled: float, student_alone: float, teacher: float) -> float:
    """``(distilled - student_alone) / (teacher - student_alone)``: 1 means the student
    reached the teacher, 0 means distillation added nothing. NaN when teacher equals the
    student alone (no gap to close)."""
    gap = teacher - student_alone
    if gap == 0:
        return math.nan
    return (distilled - student_alone) / gap


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` examples."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def proportion_sampling(n: int) -> dict[str, Any]:
    """The ``metrics.sampling`` record of an accuracy measured on ``n`` test examples."""
    return {"kind": "proportion", "n": int(n)}


def mean_sampling(values: Sequence[float]) -> dict[str, Any]:
    """The ``metrics.sampling`` record of a mean over independent values (episode returns)."""
    return {"kind": "mean", "n": len(values), "std": mean_std(list(values))[1]}


def score_interval(score: float, sampling: dict[str, Any] | None) -> tuple[float, float] | None:
    """95% interval of ``score`` from the test set's own sampling (None when unrecorded)."""
    if not sampling or not sampling.get("n"):
        return None
    if sampling["kind"] == "proportion":
        return wilson_interval(min(max(score, 0.0), 1.0), int(sampling["n"]))
    half = Z95 * float(sampling.get("std", 0.0)) / math.sqrt(int(sampling["n"]))
    return score - half, score + half


@dataclass
class MethodRow:
    """One method's scores over seeds."""

    method: str
    scores: list[float]
    wall_time_s: float
    budget: dict[str, Any]
    student_params: int
    speedup: float | None = None
    """Student over teacher inference throughput: the median over the row's runs of each
    run's own ratio (both models timed side by side in that run)."""
    data: dict[str, int] = field(default_factory=dict)
    """Training examples a run saw (``train_size``, ``labelled_train_size``,
    ``transfer_size``): the student alone and a distilled student may see different data."""
    sampling: dict[str, Any] | None = None
    """The test set's sampling record of one run (the same test set for every seed)."""
    metric_means: dict[str, float] = field(default_factory=dict)
    """Mean over seeds of every numeric final metric (agreement, ECE, ...)."""
    metric_stds: dict[str, float] = field(default_factory=dict)
    """Sample std over seeds of the same metrics (0 for one seed: no spread measured)."""
    runs: list[str] = field(default_factory=list)
    """The runs' ``results.json`` files, when they were read from disk (learning curves)."""
    mean: float = field(init=False)
    std: float = field(init=False)

    def __post_init__(self) -> None:
        self.mean, self.std = mean_std(self.scores)

    @property
    def n(self) -> int:
        return len(self.scores)

    def interval(self) -> tuple[float, float] | None:
        """The test set's 95% interval around the mean score."""
        return score_interval(self.mean, self.sampling)


@dataclass
class GroupSummary:
    """Everything said about one (domain, dataset, teacher) group."""

    domain: str
    dataset: str
    metric: str
    higher_is_better: bool
    teacher_name: str
    teacher_params: int
    teacher_score: float | None
    teacher_floor: float | None
    """Score of a trivial policy (e.g. random actions) when the domain gives one."""
    teacher_train_s: float | None
    rows: dict[str, MethodRow]
    speed: dict[str, Any]
    teacher_sampling: dict[str, Any] | None = None
    student_name: str = "?"
    """The students compared in this group (a size sweep makes one group per size)."""
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    """The teacher's numeric test metrics when its record gives them (``teacher.metrics``),
    e.g. ``test/macro_f1`` beside the primary score."""

    @property
    def title(self) -> str:
        return f"{self.domain} · {self.dataset} · {self.student_name}"

    def baseline(self) -> MethodRow | None:
        return self.rows.get("none")

    def gain(self, row: MethodRow) -> float | None:
        base = self.baseline()
        if base is None or row.method == "none":
            return None
        sign = 1.0 if self.higher_is_better else -1.0
        return sign * (row.mean - base.mean)

    def gain_in_std(self, row: MethodRow) -> float | None:
        """The gain in units of the larger seed std (None with one seed or no spread)."""
        base, gain = self.baseline(), self.gain(row)
        if base is None or gain is None or min(row.n, base.n) < 2:
            return None
        spread = max(row.std, base.std)
        return gain / spread if spread > 0 else None

    def verdict(self, row: MethodRow) -> str:
        """Plain words on whether the gain over the student alone is established."""
        base, gain = self.baseline(), self.gain(row)
        if base is None or gain is None:
            return ""
        if min(row.n, base.n) < 2:
            return "one seed: no spread measured, gain not established"
        spread = max(row.std, base.std)
        if spread == 0 and gain == 0:
            return "no difference (identical scores)"
        if spread == 0 or abs(gain) > NOISE_SIGMAS * spread:
            return f"{'gain' if gain > 0 else 'loss'} beyond {NOISE_SIGMAS:g}σ"
        return f"within noise (|gain| ≤ {NOISE_SIGMAS:g}σ)"

    def teacher_gap(self) -> float:
        """How much better the teacher scores than the student alone (NaN without either)."""
        base = self.baseline()
        if base is None or self.teacher_score is None:
            return math.nan
        gap = self.teacher_score - base.mean
        return gap if self.higher_is_better else -gap

    def gap_closure(self, row: MethodRow) -> float | None:
        if row.method == "none":
            return None
        gap = self.teacher_gap()
        if not gap > 0:  # also NaN
            return None  # the student alone already matches the teacher
        return (self.gain(row) or 0.0) / gap

    def kept(self, row: MethodRow) -> float | None:
        """Fraction of the teacher's score kept by a method's mean (:meth:`kept_of`)."""
        return self.kept_of(row.mean)

    def kept_of(self, score: float) -> float | None:
        """Fraction of the teacher's score that ``score`` keeps: ``(score - floor) / (teacher -
        floor)`` when the domain records a floor (a random policy's return: returns can be
        negative), else ``score / teacher`` for a positive, higher-is-better score; None
        otherwise."""
        t, floor = self.teacher_score, self.teacher_floor
        if t is None or not self.higher_is_better:
            return None
        if floor is not None:
            return (score - floor) / (t - floor) if t > floor else None
        return score / t if t > 0 else None

    def size_ratio(self, row: MethodRow) -> float:
        return row.student_params / self.teacher_params if self.teacher_params else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` a distill script writes: every figure above, per method."""
        t_int = None
        if self.teacher_score is not None:
            t_int = score_interval(self.teacher_score, self.teacher_sampling)
        methods = {}
        for name, row in self.rows.items():
            interval = row.interval()
            methods[name] = {
                "n_seeds": row.n,
                "mean": row.mean,
                "std": row.std if row.n > 1 else None,
                "scores": row.scores,
                "test_interval95": list(interval) if interval else None,
                "gain_over_none": self.gain(row),
                "gain_in_std": self.gain_in_std(row),
                "gap_closure": self.gap_closure(row),
                "kept": self.kept(row),
                "verdict": self.verdict(row),
                "student_params": row.student_params,
                "speedup": row.speedup,
                "wall_time_s_mean": row.wall_time_s,
                "budget": row.budget,
                "data": row.data,
                "metric_means": row.metric_means,
                "metric_stds": row.metric_stds,
            }
        return {
            "domain": self.domain,
            "dataset": self.dataset,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "teacher": {
                "name": self.teacher_name,
                "params": self.teacher_params,
                "score": self.teacher_score,
                "floor": self.teacher_floor,
                "test_interval95": list(t_int) if t_int else None,
                "metrics": self.teacher_metrics,
            },
            "speed": self.speed,
            "methods": methods,
        }


def _teacher_score(teacher: dict[str, Any]) -> float | None:
    score = teacher.get("score", teacher.get("test_accuracy"))
    return float(score) if isinstance(score, (int, float)) else None


def _numeric_stats(
    results: Sequence[dict[str, Any]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std over runs of every numeric final metric all the runs record."""
    keys = set.intersection(*(set(r["metrics"]["final"]) for r in results))
    means, stds = {}, {}
    for k in sorted(keys):
        values = [r["metrics"]["final"][k] for r in results]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            means[k], stds[k] = mean_std([float(v) for v in values])
    return means, stds


def _teacher_metrics(teacher: dict[str, Any]) -> dict[str, float]:
    given = teacher.get("metrics")
    if not isinstance(given, dict):
        return {}
    return {
        k: float(v)
        for k, v in given.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _budget_size(r: dict[str, Any]) -> tuple[str, int] | None:
    budget = r.get("budget") or {}
    for key in ("env_steps", "steps"):
        if isinstance(budget.get(key), int | float):
            return key.replace("_", " "), int(budget[key])
    return None


def _rows_by_budget(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs per method; a method run with several budgets (e.g. the PPO baseline for the
    distillation budget and for 1M steps) gives one row per budget: the budget with the most
    runs (the smallest on a tie) keeps the method's name, the others are named
    ``"<method> @ <n> <unit>"``, so runs of different budgets never average together."""
    by_method: dict[str, dict[tuple[str, int] | None, list[dict[str, Any]]]] = {}
    for r in runs:
        by_method.setdefault(r["method"], {}).setdefault(_budget_size(r), []).append(r)
    rows: dict[str, list[dict[str, Any]]] = {}
    for method, by_budget in by_method.items():
        ordered = sorted(by_budget.items(), key=lambda kv: (-len(kv[1]), kv[0][1] if kv[0] else 0))
        for i, (size, rs) in enumerate(ordered):
            label = f"{size[1]:,} {size[0]}" if size else "another budget"
            rows[method if i == 0 else f"{method} @ {label}"] = rs
    return rows


def _speedup(runs: Sequence[dict[str, Any]]) -> float | None:
    """The median over ``runs`` of student / teacher throughput, each ratio from one run's
    side-by-side timing: runs of earlier invocations were timed under other loads, so a
    student's figure is never divided by another run's teacher figure."""
    ratios = []
    for r in runs:
        t = ((r.get("teacher") or {}).get("speed") or {}).get("throughput")
        s = (r["student"].get("speed") or {}).get("throughput")
        if t and s:
            ratios.append(s / t)
    return statistics.median(ratios) if ratios else None


def summarize(results: Sequence[dict[str, Any]]) -> list[GroupSummary]:
    """Group student runs by (domain, dataset, teacher, student) and summarise each group;
    teacher runs (role "teacher") only lend their training time."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    teacher_runs: dict[tuple[str, str, str], float] = {}
    for r in results:
        if r["role"] == "teacher":
            key = (r["domain"], r["dataset"], r["student"].get("name", "?"))
            teacher_runs[key] = float(r["wall_time_s"])
            continue
        teacher = r.get("teacher") or {}
        key = (r["domain"], r["dataset"], teacher.get("name", "?"), r["student"].get("name", "?"))
        groups.setdefault(key, []).append(r)

    summaries = []
    for (domain, dataset, t_name, s_name), runs in sorted(groups.items()):
        first = runs[0]
        metric = first["metrics"]["primary"]
        by_method = _rows_by_budget([r for r in runs if r["metrics"]["primary"] == metric])
        teacher = first.get("teacher") or {}
        t_speed = teacher.get("speed") or {}
        rows = {}
        for method, rs in sorted(by_method.items(), key=lambda kv: (kv[0] != "none", kv[0])):
            means, stds = _numeric_stats(rs)
            extra = rs[0].get("extra") or {}
            rows[method] = MethodRow(
                method=method,
                scores=[float(r["metrics"]["final"][metric]) for r in rs],
                wall_time_s=mean_std([float(r["wall_time_s"]) for r in rs])[0],
                budget=rs[0].get("budget", {}),
                student_params=int(rs[0]["student"]["params"]),
                speedup=_speedup(rs),
                data={k: int(v) for k in DATA_KEYS if isinstance(v := extra.get(k), (int, float))},
                sampling=rs[0]["metrics"].get("sampling"),
                metric_means=means,
                metric_stds=stds,
                runs=[str(r["_path"]) for r in rs if "_path" in r],
            )
        speed = {"teacher": t_speed, "student": first["student"].get("speed") or {}}
        summaries.append(
            GroupSummary(
                domain=domain,
                dataset=dataset,
                metric=metric,
                higher_is_better=bool(first["metrics"]["higher_is_better"]),
                teacher_name=t_name,
                teacher_params=int(teacher.get("params", 0)),
                teacher_score=_teacher_score(teacher),
                teacher_floor=teacher.get("floor"),
                teacher_train_s=teacher_runs.get((domain, dataset, t_name)),
                rows=rows,
                speed=speed,
                teacher_sampling=teacher.get("sampling"),
                student_name=s_name,
                teacher_metrics=_teacher_metrics(teacher),
            )
        )
    return summaries


def as_json(summary: GroupSummary) -> dict[str, Any]:
    """Plain-JSON form of a group summary (NaN -> None)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(summary.to_dict())
