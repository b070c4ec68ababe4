"""Every bad input of test_bad_inputs.py typed at a real shell: a Markdown table of the command,
its exit status and the last line it wrote to stderr.

    python tests/bad_input_table.py --work /tmp/bad-inputs > bad-inputs.md

The test checks the same cases in-process; this runs each as its own ``python -m`` process, so
what the table shows is what a user sees (including anything printed before the error). It
trains the tests' three tiny teachers into ``--work`` first (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import minilm_one_layer, train_image_teacher, train_nlp_teacher, train_rl_teacher
from test_bad_inputs import CASES, _damaged


def teachers(work: Path) -> dict[str, Path]:
    """The three tiny teachers, trained once into ``work`` and reused on the next call."""
    made = {}
    for name, train in (
        ("image", train_image_teacher),
        ("nlp", lambda out: train_nlp_teacher(minilm_one_layer(work / "minilm-1layer"), out)),
        ("rl", train_rl_teacher),
    ):
        model = work / f"{name}-teacher" / "model"
        made[name] = model if (model / "config.json").is_file() else train(model.parent)
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for teachers and cases")
    work = parser.parse_args().work.resolve()
    paths = teachers(work)
    rows, failures = [], 0
    for i, (case, module, argv, _) in enumerate(CASES):
        paths["tmp"] = work / f"case-{i:02d}"
        if not paths["tmp"].is_dir():
            paths["tmp"].mkdir(parents=True)
            _damaged(paths["tmp"], paths["image"])
        args = [a.format(**paths) for a in argv]
        done = subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=work
        )
        lines = done.stderr.strip().splitlines() or ["(nothing on stderr)"]
        clear = done.returncode != 0 and "Traceback" not in done.stderr
        failures += not clear
        shown = " ".join(shlex.quote(a.replace(str(work), "…")) for a in args)
        message = lines[-1].replace(str(work), "…").replace("|", "\\|")
        rows.append(f"| {i + 1} | {case} | `{module} {shown}` | {done.returncode} | {message} |")
        print(f"{i + 1}/{len(CASES)} {case}: {done.returncode}", file=sys.stderr)
    print("| # | bad input | command (`python -m …`) | exit | message |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(CASES) - failures} of {len(CASES)} exit non-zero with no traceback.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
