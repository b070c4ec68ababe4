"""The ``results.json`` every run writes, and the only thing cross-run reports read.

Schema (version 1), one JSON object:

===============  ==========================================================================
key              meaning
===============  ==========================================================================
schema_version   1
domain           "image-classification" | "nlp" | "reinforcement-learning"
dataset          dataset or environment id, e.g. "fashion-mnist", "CartPole-v1"
role             "teacher" (a teacher's own training) or "student"
method           "none" (student alone), "kd", "fitnet", ... or "teacher"
seed             integer seed of this run
loss             {"weights": {term: weight}, "options": {term: {option: value}}}
teacher          model description or null: {"name", "params", "size_bytes", ...}; for
                 reports also "score" (the teacher's value of the primary metric on the same
                 test data), optionally "floor" (a trivial policy's score, e.g. random
                 actions) and "speed" (below)
student          model description: {"name", "params", "size_bytes", ...}, optionally "speed":
                 common.metrics.speed_profile, {"latency_b1_ms", "throughput", "batch",
                 "unit"}, measured side by side with the teacher's
metrics          {"final": {...}, "best": {...} | null, "best_at": {"epoch", "step"} | null,
                 "primary": metric name, "higher_is_better": bool}
                 "final" is measured after the last step; "best" at the best validation.
budget           what training consumed: {"epochs", "steps", "examples" or "env_steps"}
wall_time_s      seconds from start to the results being written
command          argv of the run
versions         {"python", "torch", ...} library versions
git_commit       commit hash of the code ("+dirty" when the tree had changes), or "unknown"
created_at       ISO-8601 UTC time of writing
extra            free-form domain details (speed, FLOPs, ...), never read by the schema check
===============  ==========================================================================
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from common.errors import DistilleryError
from common.io import atomic_write_json
from common.metrics import gap_closure, mean_std
from common.training import is_main_process

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
DOMAINS = ("image-classification", "nlp", "reinforcement-learning")
ROLES = ("teacher", "student")
_LIBRARIES = (
    "torch",
    "torchvision",
    "accelerate",
    "transformers",
    "datasets",
    "gymnasium",
    "stable-baselines3",
    "numpy",
    "safetensors",
)


class ResultsError(DistilleryError, ValueError):
    """A results file is missing, unreadable, or does not follow the schema."""


@dataclass
class RunResult:
    """One run's outcome; field meanings are in the module docstring."""

    domain: str
    dataset: str
    role: str
    method: str
    seed: int
    student: dict[str, Any]
    metrics: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=lambda: {"weights": {}, "options": {}})
    teacher: dict[str, Any] | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    versions: dict[str, str] = field(default_factory=lambda: library_versions())
    git_commit: str = field(default_factory=lambda: git_commit())
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_metrics(
    final: dict[str, float],
    primary: str,
    higher_is_better: bool = True,
    best: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the ``metrics`` block; ``best`` is a loop's ``state.best`` (or None)."""
    return {
        "final": dict(final),
        "best": dict(best["metrics"]) if best else None,
        "best_at": {"epoch": best["epoch"], "step": best["step"]} if best else None,
        "primary": primary,
        "higher_is_better": higher_is_better,
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(repo: Path | None = None) -> str:
    """HEAD of the checkout holding this code, "+dirty" if it has uncommitted changes."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def validate(data: Any) -> list[str]:
    """Problems with a results object (empty list when it follows the schema)."""
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {type(data).__name__}"]
    problems = []
    if data.get("schema_version") != SCHEMA_VERSION:
        problems.append(
            f"schema_version is {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    expected: dict[str, type | tuple[type, ...]] = {
        "domain": str,
        "dataset": str,
        "role": str,
        "method": str,
        "seed": int,
        "student": dict,
        "metrics": dict,
        "loss": dict,
        "budget": dict,
        "wall_time_s": (int, float),
        "command": list,
        "versions": dict,
        "git_commit": str,
        "created_at": str,
    }
    for key, typ in expected.items():
        if key not in data:
            problems.append(f"missing key {key!r}")
        elif not isinstance(data[key], typ) or isinstance(data[key], bool):
            problems.append(f"{key!r} should be {getattr(typ, '__name__', typ)}, got {data[key]!r}")
    if data.get("domain") not in DOMAINS:
        problems.append(f"domain {data.get('domain')!r} is not one of {DOMAINS}")
    if data.get("role") not in ROLES:
        problems.append(f"role {data.get('role')!r} is not one of {ROLES}")
    if not isinstance(data.get("teacher"), (dict, type(None))):
        problems.append("'teacher' should be an object or null")
    for who in ("student", "teacher"):
        model = data.get(who)
        if isinstance(model, dict) and not isinstance(model.get("params"), int):
            problems.append(f"{who}.params should be an integer parameter count")
    metrics = data.get("metrics")
    if isinstance(metrics, dict):
        final = metrics.get("final")
        if not isinstance(final, dict) or not final:
            problems.append("metrics.final should be a non-empty object")
        primary = metrics.get("primary")
        if not isinstance(primary, str) or (isinstance(final, dict) and primary not in final):
            problems.append(f"metrics.primary {primary!r} should name a key of metrics.final")
        if not isinstance(metrics.get("higher_is_better"), bool):
            problems.append("metrics.higher_is_better should be true or false")
    return problems


def write_results(run_dir: Path, result: RunResult) -> Path:
    """Validate and write ``run_dir/results.json`` atomically; returns its path.

    Under ``accelerate launch`` only the main process writes (every process holds the same
    result; several writers would race on one file)."""
    data = result.to_dict()
    problems = validate(data)
    if problems:
        raise ResultsError("refusing to write an invalid results file: " + "; ".join(problems))
    path = Path(run_dir) / RESULTS_FILE
    if is_main_process():
        atomic_write_json(path, data)
    return path


def finished_run(
    run_dir: Path, settings: dict[str, Any], required: Sequence[Path] = ()
) -> dict[str, Any] | None:
    """The results of a run in ``run_dir`` that finished with exactly ``settings`` (compared
    with ``extra.settings``; include a fingerprint of the data there) and whose ``required``
    files exist; None when there is no such run. Lets a script reuse a trained teacher
    instead of training it again, and never reuse one trained on other data or settings."""
    try:
        data = load_results(run_dir)
    except ResultsError:
        return None
    stored = data.get("extra", {}).get("settings")
    if stored != json.loads(json.dumps(settings)) or not all(Path(p).exists() for p in required):
        return None
    return data


def load_results(path: Path) -> dict[str, Any]:
    """Read and validate a results file (or a run directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(f"no results file at {path}; did that run finish? (re-run it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path} is not valid JSON ({err}); re-run that run") from None
    problems = validate(data)
    if problems:
        raise ResultsError(f"{path} does not follow the results schema: " + "; ".join(problems))
    return data


def summarize_classification(
    runs: dict[str, list[dict]], teacher: dict[str, Any]
) -> dict[str, Any]:
    """Per method over seeds (results dicts of classification runs): test accuracy mean and
    std, agreement, ECE, wall time, the gain over the student alone (also in units of the
    larger seed std, and its Welch standard error) and the gap closure."""
    rows: dict[str, Any] = {}
    for method, results in runs.items():
        accs = [r["metrics"]["final"]["test/accuracy"] for r in results]
        mean, std = mean_std(accs)
        agree = mean_std(
            [r["metrics"]["final"].get("test/agreement", float("nan")) for r in results]
        )
        rows[method] = {
            "n_seeds": len(accs),
            "accuracy_mean": mean,
            "accuracy_std": std,
            "accuracies": accs,
            "agreement_mean": agree[0],
            "ece_mean": mean_std([r["metrics"]["final"]["test/ece"] for r in results])[0],
            "wall_time_s_mean": mean_std([r["wall_time_s"] for r in results])[0],
        }
    base = rows.get("none")
    for method, row in rows.items():
        if base is None or method == "none":
            continue
        gain = row["accuracy_mean"] - base["accuracy_mean"]
        # The yardstick: the gain in units of the larger of the two seed spreads
        # (an effect size, not a test); the Welch standard error of the gain is reported too.
        spread = max(row["accuracy_std"], base["accuracy_std"])
        se = (
            row["accuracy_std"] ** 2 / row["n_seeds"] + base["accuracy_std"] ** 2 / base["n_seeds"]
        ) ** 0.5
        row["gain_over_none"] = gain
        row["gain_in_std"] = gain / spread if spread > 0 else None
        row["gain_se"] = se if min(row["n_seeds"], base["n_seeds"]) > 1 else None
        row["gap_closure"] = gap_closure(
            row["accuracy_mean"], base["accuracy_mean"], teacher["test_accuracy"]
        )
    return {"teacher": teacher, "methods": rows}


def print_classification_summary(summary: dict[str, Any], items: str = "images") -> None:
    """The terminal table of :func:`summarize_classification` plus ``summary["student"]`` and
    ``summary["speed"]`` (teacher and student ``speed_profile``); ``items``: what is counted."""
    t, s = summary["teacher"], summary["student"]
    print(
        f"\nTest accuracy ({t['test_size']} {items}). Teacher {t['name']}: "
        f"{100 * t['test_accuracy']:.2f}%, {t['params']:,} params; student {s['name']}: "
        f"{s['params']:,} params (1/{t['params'] / s['params']:.1f} of the teacher)"
    )
    print(
        f"{'method':14s} {'accuracy':>18s} {'seeds':>5s} {'gain':>7s} {'gain/σmax':>9s} "
        f"{'gap closed':>10s} {'of teacher':>10s} {'agree':>6s} {'ECE':>6s} {'time/run':>8s}"
    )
    for method, r in summary["methods"].items():
        gain = f"{100 * r['gain_over_none']:+.2f}" if "gain_over_none" in r else ""
        sig = r.get("gain_in_std")
        sig_s = f"{sig:.1f}" if sig is not None else ("n/a" if "gain_over_none" in r else "")
        closure = f"{r['gap_closure']:.2f}" if "gap_closure" in r else ""
        print(
            f"{method:14s} {100 * r['accuracy_mean']:8.2f} ± {100 * r['accuracy_std']:5.2f}% "
            f"{r['n_seeds']:5d} {gain:>7s} {sig_s:>9s} {closure:>10s} "
            f"{100 * r['accuracy_mean'] / t['test_accuracy']:9.1f}% "
            f"{100 * r['agreement_mean']:5.1f}% {100 * r['ece_mean']:5.2f}% "
            f"{r['wall_time_s_mean']:7.0f}s"
        )
    if any(r["n_seeds"] < 2 for r in summary["methods"].values()):
        print("One seed per method: no spread is measured, so no gain can be called significant.")
    base = summary["methods"].get("none")
    if base is not None and t["test_accuracy"] <= base["accuracy_mean"]:
        print("The teacher is no better than the student alone: gap closure is not meaningful.")
    sp = summary.get("speed")
    if sp:
        ts, ss = sp["teacher"], sp["student"]
        print(
            f"Inference (CPU, measured side by side): batch-1 latency teacher "
            f"{ts['latency_b1_ms']:.2f} ms vs student {ss['latency_b1_ms']:.2f} ms; batch-"
            f"{ts['batch']} throughput teacher {ts['throughput']:.0f} vs student "
            f"{ss['throughput']:.0f} {items}/s ({ss['throughput'] / ts['throughput']:.1f}x)"
        )
