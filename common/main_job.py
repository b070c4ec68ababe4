"""The main job: every domain's pipeline (teacher, student alone, distilled student), then the
cross-domain report.

    python -m common.main_job                       # quick: about 10 minutes on 2 cores
    python -m common.main_job --preset full --seeds 3   # the benchmark (hours)

Each step is the domain's own script with its own preset (``--preset quick`` or ``full``),
so the main job does nothing a user could not do by hand. A teacher that finished with the
same settings and data is reused. A failing step is reported and the job goes on with the
steps that do not depend on it; the exit status is non-zero if any step failed. Per-step
wall times go to ``<out-dir>/main_job.json``; the report to ``<out-dir>/report/REPORT.md``.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import parse_args, run_main
from common.domains import domain_names, get_domain
from common.errors import ConfigError, DistilleryError
from common.io import atomic_write_json
from common.report import write_report


@dataclass
class Args:
    """Run every domain's pipeline, then compare them in one report."""

    domain_preset: str = "quick"
    """Preset passed to every domain script: quick (the main job) or full (the benchmark)."""
    domains: tuple[str, ...] = domain_names()
    """Domains to run, in order (every registered domain: common.domains)."""
    seeds: int | None = None
    """Seeds per distillation method; unset: the domain preset's own."""
    out_dir: Path = Path("runs/quick")
    """Where the domain presets write (the report reads every results.json under it)."""


QUICK = Args()
FULL = Args(domain_preset="full", seeds=3, out_dir=Path("runs/full"))
PRESETS = {"quick": QUICK, "full": FULL}


@dataclass
class Step:
    domain: str
    kind: str
    module: str
    argv: list[str]


def plan(args: Args, extra: Mapping[str, Sequence[str]] | None = None) -> list[Step]:
    """The steps to run; ``extra[domain]`` is appended to both of that domain's commands and
    ``extra[domain + ":distill"]`` to its distill command only (tests use it for tiny
    budgets)."""
    unknown = [d for d in args.domains if d not in domain_names()]
    if unknown:
        raise ConfigError(f"unknown domain(s) {unknown}; choose from {list(domain_names())}")
    steps = []
    for domain in args.domains:
        pipe, root, more = (
            get_domain(domain),
            args.out_dir / domain,
            list((extra or {}).get(domain, ())),
        )
        steps.append(
            Step(
                domain,
                "teacher",
                pipe.teacher_script,
                pipe.teacher_argv(args.domain_preset, root) + more,
            )
        )
        steps.append(
            Step(
                domain,
                "distill",
                pipe.distill_script,
                pipe.distill_argv(args.domain_preset, root, args.seeds)
                + more
                + list((extra or {}).get(f"{domain}:distill", ())),
            )
        )
    return steps


def run_steps(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """Run each step's ``main(argv)``; a failed teacher skips that domain's distillation."""
    log: list[dict[str, Any]] = []
    failed_domains: set[str] = set()
    for i, step in enumerate(steps, start=1):
        title = f"[{i}/{len(steps)}] {step.domain}: {step.kind}"
        entry: dict[str, Any] = {"domain": step.domain, "step": step.kind, "argv": step.argv}
        if step.domain in failed_domains:
            print(f"\n{title}: skipped (its teacher failed)", flush=True)
            log.append({**entry, "status": "skipped", "seconds": 0.0})
            continue
        print(f"\n{'=' * 8} {title} ({step.module} {' '.join(step.argv)})", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(step.module).main(step.argv)
            status, error = "ok", None
        except DistilleryError as err:  # bad input: the message says what to do
            status, error = "failed", str(err)
        except Exception as err:  # keep going: the other domains still get reported
            status, error = "failed", f"{type(err).__name__}: {err}"
            traceback.print_exc()
        seconds = time.perf_counter() - start
        if status == "failed":
            print(f"{title} FAILED after {seconds:.0f} s: {error}", flush=True)
            if step.kind == "teacher":
                failed_domains.add(step.domain)
        else:
            print(f"{title} done in {seconds:.0f} s", flush=True)
        log.append({**entry, "status": status, "seconds": seconds, "error": error})
    return log


def main(
    argv: Sequence[str] | None = None, extra: Mapping[str, Sequence[str]] | None = None
) -> int:
    args = parse_args(Args, argv, PRESETS)
    start = time.perf_counter()
    log = run_steps(plan(args, extra))
    report, table = write_report([args.out_dir], args.out_dir / "report")
    total = time.perf_counter() - start
    atomic_write_json(
        args.out_dir / "main_job.json",
        {
            "preset": args.domain_preset,
            "domains": list(args.domains),
            "total_s": total,
            "steps": log,
        },
    )
    print(f"\n{'=' * 8} cross-domain comparison ({args.out_dir})")
    print(table)
    print(f"\nreport: {report}  ({report.parent}/*.png)")
    print(f"main job wall time: {total / 60:.1f} min")
    failed = [f"{e['domain']} {e['step']}" for e in log if e["status"] != "ok"]
    if failed:
        print(f"not completed: {', '.join(failed)} (see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
