"""The ``results.json`` every run writes, and the only thing cross-run reports read.

Schema (version 1), one JSON object:

===============  ==========================================================================
key              meaning
===============  ==========================================================================
schema_version   1
domain           a registered domain (common.domains): "image-classification", "nlp", ...
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

from common.domains import domain_names
from common.errors import DistilleryError
from common.io import atomic_write_json
from common.training import is_main_process

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
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
    sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the ``metrics`` block; ``best`` is a loop's ``state.best`` (or None);
    ``sampling`` says how the primary score was sampled (common.stats.proportion_sampling or
    mean_sampling), for the test set's own 95% interval."""
    block = {
        "final": dict(final),
        "best": dict(best["metrics"]) if best else None,
        "best_at": {"epoch": best["epoch"], "step": best["step"]} if best else None,
        "primary": primary,
        "higher_is_better": higher_is_better,
    }
    if sampling is not None:
        block["sampling"] = dict(sampling)
    return block


def accuracy_metrics(
    final: dict[str, float], n_test: int, best: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The metrics block of a classifier scored by ``test/accuracy`` on ``n_test`` examples."""
    from common.stats import proportion_sampling

    return make_metrics(final, "test/accuracy", best=best, sampling=proportion_sampling(n_test))


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
    known = domain_names()
    if data.get("domain") not in known:
        problems.append(f"domain {data.get('domain')!r} is not one of {known}")
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
