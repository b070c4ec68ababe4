"""Cross-domain comparison: reads only ``results.json`` files, writes ``REPORT.md`` and plots.

    python -m common.report runs/quick            # every results.json under runs/quick
    python -m common.report runs/a runs/b --out runs/report

Per domain (and dataset and teacher): teacher vs student alone vs each distillation method,
mean ± std over seeds, the gain over the student alone and whether it is beyond noise, gap
closure, fraction of the teacher's score kept, parameter ratio, inference speed-up and
training cost. One figure puts all domains on common axes: fraction of the teacher's score
kept vs fraction of the teacher's size. A missing or malformed results file is named in the
report and skipped; the rest is still reported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from common.io import atomic_write_text
from common.results import RESULTS_FILE, ResultsError, load_results
from common.stats import NOISE_SIGMAS, GroupSummary, MethodRow, score_interval, summarize

DomainSummary = GroupSummary  # the name this module used before common.stats held it


def find_results(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Every results file under ``paths`` (a file or a directory searched recursively)."""
    found, problems = [], []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            hits = sorted(p.rglob(RESULTS_FILE))
            if not hits:
                problems.append(f"{p}: no {RESULTS_FILE} found (did those runs finish?)")
            found.extend(hits)
        else:
            problems.append(f"{p}: does not exist")
    return found, problems


def load_all(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Valid results, and one line per file that could not be used (it is skipped)."""
    files, problems = find_results(paths)
    results = []
    for f in files:
        try:
            data = load_results(f)
        except ResultsError as err:
            problems.append(str(err))
            continue
        data["_path"] = str(f)
        results.append(data)
    return results, problems


def _fmt(x: float | None, spec: str = ".3f", none: str = "n/a") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _score(x: float | None, metric: str) -> str:
    if x is None:
        return "n/a"
    # Accuracies read best in percent; returns and losses as they are.
    return f"{100 * x:.2f}%" if "accuracy" in metric else f"{x:.1f}"


def _mean_std(row: MethodRow, metric: str) -> str:
    """Mean ± seed std; one seed shows its score alone (no spread was measured)."""
    pct = "accuracy" in metric
    scale, digits, unit = (100.0, 2, "%") if pct else (1.0, 1, "")
    if row.n < 2:
        return f"{scale * row.mean:.{digits}f}{unit} (1 seed)"
    return f"{scale * row.mean:.{digits}f} ± {scale * row.std:.{digits}f}{unit}"


def _interval(interval: tuple[float, float] | None, metric: str) -> str:
    """The test set's 95% interval as a half-width (it is symmetric up to rounding)."""
    if interval is None:
        return ""
    half = (interval[1] - interval[0]) / 2
    return f"±{100 * half:.2f}" if "accuracy" in metric else f"±{half:.1f}"


def table_rows(s: DomainSummary) -> list[list[str]]:
    """The per-method table, as strings (shared by the terminal and the markdown)."""
    out = [
        [
            "teacher",
            _score(s.teacher_score, s.metric),
            _interval(
                score_interval(s.teacher_score, s.teacher_sampling)
                if s.teacher_score is not None
                else None,
                s.metric,
            ),
            "",
            "",
            "",
            "1.00" if s.teacher_score and s.teacher_score > 0 else "n/a",
            "1",
            "1.0x",
            _fmt(s.teacher_train_s, ".0f") + ("s" if s.teacher_train_s is not None else ""),
            "",
        ]
    ]
    for row in s.rows.values():
        gain = s.gain(row)
        out.append(
            [
                row.method if row.method != "none" else "student alone",
                _mean_std(row, s.metric),
                _interval(row.interval(), s.metric),
                str(row.n),
                ""
                if gain is None
                else (f"{100 * gain:+.2f}" if "accuracy" in s.metric else f"{gain:+.1f}"),
                _fmt(s.gap_closure(row), ".2f", ""),
                _fmt(s.kept(row), ".3f"),
                f"1/{1 / s.size_ratio(row):.0f}" if s.size_ratio(row) > 0 else "n/a",
                _fmt(row.speedup, ".1f") + ("x" if row.speedup is not None else ""),
                f"{row.wall_time_s:.0f}s",
                s.verdict(row),
            ]
        )
    return out


HEADER = [
    "model",
    "score (mean ± seed std)",
    "test 95% CI",
    "seeds",
    "gain",
    "gap closed",
    "kept",
    "size",
    "speed-up",
    "train time",
    "verdict",
]


SECONDARY = {"test/macro_f1": "macro-F1"}
"""Final metrics shown on a line under a group's table when its runs record them (NLP records
macro-F1 for every run: on unbalanced classes, tweets and SMS spam, accuracy can hide a
minority class the student misses)."""


def secondary_lines(s: DomainSummary) -> list[str]:
    """One line per :data:`SECONDARY` metric the group's runs record: the teacher's value and
    each method's mean ± seed std over seeds."""
    lines = []
    for key, label in SECONDARY.items():
        rows = [r for r in s.rows.values() if key in r.metric_means]
        if not rows:
            continue
        parts = []
        if key in s.teacher_metrics:
            parts.append(f"teacher {s.teacher_metrics[key]:.3f}")
        for r in rows:
            name = "student alone" if r.method == "none" else r.method
            spread = f" ± {r.metric_stds.get(key, 0.0):.3f}" if r.n > 1 else " (1 seed)"
            parts.append(f"{name} {r.metric_means[key]:.3f}{spread}")
        lines.append(
            f"Test {label} (mean ± seed std; every class weighs the same): " + "; ".join(parts)
        )
    return lines


def render_terminal(summaries: Sequence[DomainSummary], problems: Sequence[str]) -> str:
    lines = []
    for s in summaries:
        lines.append(
            f"\n{s.title}: {s.metric} ({'higher' if s.higher_is_better else 'lower'} is better)"
        )
        rows = [HEADER, *table_rows(s)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        lines += secondary_lines(s)
    for p in problems:
        lines.append(f"skipped: {p}")
    return "\n".join(lines)


def render_markdown(
    summaries: Sequence[DomainSummary], problems: Sequence[str], figures: dict[str, str]
) -> str:
    out = ["# Distillery report", ""]
    out.append(
        "Teacher vs student alone vs distilled students, read from `results.json` files. "
        "*score*: the primary test metric, mean ± sample std over seeds; *test 95% CI*: the "
        "half-width of the test set's own 95% interval around that mean (Wilson for an "
        "accuracy on n test examples, normal for a mean over n episodes): how far another "
        "test set of the same size could move the score, beside the seed spread; *gain*: over the "
        "student alone (accuracy in points); *gap closed*: gain / (teacher − student alone); "
        "*kept*: fraction of the teacher's score (above a random policy's, where the domain "
        f"records one); *verdict*: a gain counts only beyond "
        f"{NOISE_SIGMAS:g}× the larger seed std, and one seed establishes nothing."
    )
    if "overview" in figures:
        out += ["", f"![fraction of teacher kept vs size]({figures['overview']})"]
    for key, name in figures.items():
        if key.startswith("sweep: "):
            out += [
                "",
                f"### Student sizes: {key.removeprefix('sweep: ')}",
                "",
                f"![{key}]({name})",
            ]
    for s in summaries:
        out += ["", f"## {s.title}", ""]
        out.append(
            f"Metric `{s.metric}` ({'higher' if s.higher_is_better else 'lower'} is better). "
            f"Teacher `{s.teacher_name}`, {s.teacher_params:,} parameters."
        )
        sp = s.speed
        if sp.get("teacher") and sp.get("student"):
            t, st = sp["teacher"], sp["student"]
            out.append(
                f"Inference (CPU, measured side by side): batch-1 latency "
                f"{_fmt(t.get('latency_b1_ms'), '.2f')} ms (teacher) vs "
                f"{_fmt(st.get('latency_b1_ms'), '.2f')} ms (student); throughput at batch "
                f"{t.get('batch', '?')}: {_fmt(t.get('throughput'), '.0f')} vs "
                f"{_fmt(st.get('throughput'), '.0f')} {t.get('unit', 'items/s')}."
            )
        out += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(r) + " |" for r in table_rows(s)]
        secondary = secondary_lines(s)
        if secondary:
            out += ["", *(f"{line}." for line in secondary)]
        notes = [f"- `{r.method}`: {s.verdict(r)}" for r in s.rows.values() if s.verdict(r)]
        if s.baseline() is None:
            notes.append("- no student-alone run (`none`): gains cannot be judged")
        elif s.teacher_score is not None and s.teacher_gap() <= 0:
            notes.append(
                "- the teacher scores no better than the student alone: there is nothing to "
                "distil here, and gap closure is undefined"
            )
        if notes:
            out += ["", *notes]
        budgets = [
            f"`{r.method}`: " + ", ".join(f"{k} {v:,}" for k, v in r.budget.items())
            for r in s.rows.values()
            if r.budget
        ]
        if budgets:
            out += ["", "Budget per run: " + "; ".join(budgets) + "."]
        data = [
            f"`{r.method}`: " + ", ".join(f"{k} {v:,}" for k, v in r.data.items())
            for r in s.rows.values()
            if r.data
        ]
        # Only worth a line when the methods did not all see the same data.
        if len({tuple(sorted(r.data.items())) for r in s.rows.values()}) > 1:
            out += ["", "Training data per run: " + "; ".join(data) + "."]
        if s.title in figures:
            out += ["", f"![{s.title}]({figures[s.title]})"]
        if f"{s.title} curves" in figures:
            out += ["", f"![{s.title}: learning curves]({figures[f'{s.title} curves']})"]
            line = _steps_to_keep_line(s)
            if line:
                out += ["", line]
    if problems:
        out += ["", "## Skipped results", ""] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


def plot_domain(s: DomainSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, means, stds, colors = [], [], [], []
    if s.teacher_score is not None:
        names.append("teacher")
        means.append(s.teacher_score)
        stds.append(0.0)
        colors.append("0.4")
    for row in s.rows.values():
        names.append("student alone" if row.method == "none" else row.method)
        means.append(row.mean)
        stds.append(row.std)
        colors.append("tab:gray" if row.method == "none" else "tab:blue")
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.6))
    x = range(len(names))
    ax.bar(x, means, yerr=stds, color=colors, capsize=4)
    for i, row in enumerate(s.rows.values(), start=len(names) - len(s.rows)):
        ax.scatter([i] * row.n, row.scores, color="k", s=10, zorder=3)
    ax.set_xticks(list(x), names, rotation=20)
    lo = min(m - sd for m, sd in zip(means, stds, strict=True))
    hi = max(m + sd for m, sd in zip(means, stds, strict=True))
    pad = 0.15 * (hi - lo or abs(hi) or 1.0)
    ax.set_ylim(lo - 3 * pad, hi + pad)
    ax.set_ylabel(s.metric)
    n_seeds = sorted({r.n for r in s.rows.values()})
    ax.set_title(f"{s.title} (seeds per method: {', '.join(map(str, n_seeds))}; bars ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CURVE_FILE = "metrics.jsonl"


def read_curve(results_file: str | Path, metric: str) -> tuple[str, dict[float, float]]:
    """The validation curve logged beside a ``results.json`` (its ``metrics.jsonl`` epoch
    events): ``(x name, {x: value})``, where x is environment steps when every event records
    them (RL) and optimizer steps otherwise, and the value is the validation counterpart of
    the primary test metric (``test/accuracy`` -> ``val/accuracy``, ``test/return_mean`` ->
    ``val/return``). Empty when the run logged no such curve."""
    path = Path(results_file).parent / CURVE_FILE
    if not path.is_file():
        return "step", {}
    name = metric.split("/", 1)[-1]
    keys = (f"val/{name}", f"val/{name.removesuffix('_mean')}")
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the rest of the curve still counts
        if isinstance(event, dict) and event.get("event") == "epoch":
            events.append(event)
    x_key = "env_steps" if events and all("env_steps" in e for e in events) else "step"
    curve = {}
    for e in events:
        value = next((e[k] for k in keys if isinstance(e.get(k), int | float)), None)
        if value is not None and isinstance(e.get(x_key), int | float):
            curve[float(e[x_key])] = float(value)
    return x_key, curve


def steps_to_keep(s: DomainSummary, row: MethodRow, fraction: float) -> list[float | None]:
    """Per run of ``row``: the first point of its validation curve (x: environment or
    optimizer steps) that keeps ``fraction`` of the teacher's score (see
    :meth:`~common.stats.GroupSummary.kept_of`); None where the curve never gets there."""
    firsts: list[float | None] = []
    for run in row.runs:
        _, curve = read_curve(run, s.metric)
        if curve:
            hits = [x for x, v in sorted(curve.items()) if (s.kept_of(v) or 0.0) >= fraction]
            firsts.append(hits[0] if hits else None)
    return firsts


def _steps_to_keep_line(s: DomainSummary, fraction: float = 0.95) -> str | None:
    parts = []
    for row in s.rows.values():
        firsts = steps_to_keep(s, row, fraction)
        if not firsts:
            continue
        shown = ", ".join("never" if f is None else f"{f:,.0f}" for f in firsts)
        parts.append(f"`{row.method}` {shown}")
    if not parts:
        return None
    return (
        f"Steps until the validation curve first keeps {fraction:.0%} of the teacher's score, "
        f"per seed: {'; '.join(parts)} (never: not within the run's budget)."
    )


def plot_curves(s: DomainSummary, path: Path) -> bool:
    """Validation score against training progress, one line per method (mean over the seeds
    that logged that point, band ± std); False when no run logged a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    x_names = set()
    for row in s.rows.values():
        curves = []
        for run in row.runs:
            x_name, curve = read_curve(run, s.metric)
            if curve:
                curves.append(curve)
                x_names.add(x_name)
        if not curves:
            continue
        xs = sorted(set().union(*curves))
        points = [[c[x] for c in curves if x in c] for x in xs]
        mean = [sum(p) / len(p) for p in points]
        std = [
            math.sqrt(sum((v - m) ** 2 for v in p) / max(len(p) - 1, 1))
            for p, m in zip(points, mean, strict=True)
        ]
        label = f"{'student alone' if row.method == 'none' else row.method} (n={len(curves)})"
        (line,) = ax.plot(
            xs, mean, marker=".", label=label, ls="--" if row.method == "none" else "-"
        )
        ax.fill_between(
            xs,
            [m - d for m, d in zip(mean, std, strict=True)],
            [m + d for m, d in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
    if not x_names:
        plt.close(fig)
        return False
    if s.teacher_score is not None:
        ax.axhline(s.teacher_score, color="0.3", lw=0.8, ls=":", label="teacher (test)")
    ax.set_xlabel("environment steps" if x_names == {"env_steps"} else "optimizer steps")
    ax.set_ylabel(f"validation {s.metric.split('/', 1)[-1].removesuffix('_mean')}")
    ax.set_title(f"{s.title}\nlearning curves, mean ± std over seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_overview(summaries: Sequence[DomainSummary], path: Path) -> bool:
    """Fraction of the teacher's score kept vs fraction of its size, all domains on one
    figure; False when no group has a usable teacher score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.6, 4.4))
    markers = {"image-classification": "o", "nlp": "s", "reinforcement-learning": "^"}
    drawn = False
    for s in summaries:
        for row in s.rows.values():
            kept = s.kept(row)
            if kept is None:
                continue
            drawn = True
            span = (s.teacher_score or 0.0) - (s.teacher_floor or 0.0)
            err = row.std / span if span else 0.0
            ax.errorbar(
                s.size_ratio(row),
                kept,
                yerr=err,
                marker=markers.get(s.domain, "D"),
                mfc="none" if row.method == "none" else None,
                capsize=3,
                linestyle="none",
                label=f"{s.domain}/{s.dataset}: {row.method} (n={row.n})",
            )
    if not drawn:
        plt.close(fig)
        return False
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("student parameters / teacher parameters")
    ax.set_ylabel("fraction of the teacher's score kept")
    ax.set_title("All domains: what the student keeps for its size (hollow: student alone)")
    # Outside the axes: inside, it would hide points (a weak baseline sits low on the right).
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def size_sweeps(summaries: Sequence[DomainSummary]) -> dict[str, list[DomainSummary]]:
    """Groups that differ only in the student (same domain, dataset and teacher), keyed by a
    title, where there are at least two student sizes to compare."""
    by_teacher: dict[tuple[str, str, str], list[DomainSummary]] = {}
    for s in summaries:
        by_teacher.setdefault((s.domain, s.dataset, s.teacher_name), []).append(s)
    return {
        f"{d} · {ds} · {t}": groups
        for (d, ds, t), groups in by_teacher.items()
        if len({r.student_params for g in groups for r in g.rows.values()}) > 1
    }


def plot_size_sweep(title: str, groups: Sequence[DomainSummary], path: Path) -> bool:
    """Fraction of the teacher kept against the student's parameters, one line per method
    across the student sizes of a sweep (error bars: seed std); False when nothing is kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float, float]]] = {}
    for g in groups:
        span = (g.teacher_score or 0.0) - (g.teacher_floor or 0.0)
        for row in g.rows.values():
            kept = g.kept(row)
            if kept is not None:
                err = row.std / abs(span) if span else 0.0
                lines.setdefault(row.method, []).append((row.student_params, kept, err))
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    for method, points in sorted(lines.items()):
        points.sort()
        ax.errorbar(
            [p for p, _, _ in points],
            [k for _, k, _ in points],
            yerr=[e for _, _, e in points],
            marker="o",
            capsize=3,
            ls="--" if method == "none" else "-",
            label="student alone" if method == "none" else method,
        )
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel("fraction of the teacher's score kept")
    ax.set_title(f"{title}: student size sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _file_name(*parts: str) -> str:
    return "-".join(parts).replace("/", "_").replace(" · ", "-").replace(" ", "_")


def write_report(paths: Sequence[Path], out_dir: Path) -> tuple[Path, str]:
    """Read results under ``paths``; write ``out_dir/REPORT.md`` and PNGs; return the report
    path and the terminal table."""
    results, problems = load_all(paths)
    summaries = summarize(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    if plot_overview(summaries, out_dir / "overview.png"):
        figures["overview"] = "overview.png"
    for title, groups in size_sweeps(summaries).items():
        name = _file_name(title, "sizes.png")
        if plot_size_sweep(title, groups, out_dir / name):
            figures[f"sweep: {title}"] = name
    for s in summaries:
        name = _file_name(s.domain, s.dataset, s.teacher_name, s.student_name) + ".png"
        plot_domain(s, out_dir / name)
        figures[s.title] = name
        curves = name.removesuffix(".png") + "-curves.png"
        if plot_curves(s, out_dir / curves):
            figures[f"{s.title} curves"] = curves
    if not summaries:
        problems = [*problems, "no student results to compare"]
    report = out_dir / "REPORT.md"
    atomic_write_text(report, render_markdown(summaries, problems, figures))
    return report, render_terminal(summaries, problems)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="results.json files or run folders")
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="report folder")
    args = parser.parse_args(argv)
    report, table = write_report(args.paths, args.out)
    print(table)
    print(f"\nreport: {report}")
    if not summarize(load_all(args.paths)[0]):
        print(f"error: no student results under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
