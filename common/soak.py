"""Kill-and-resume soak: SIGKILL a distillation run at random points, start it again with the
same command each time, and check that it ends with the weights of an uninterrupted run.

    python -m common.soak --domain image-classification --kills 10
    python -m common.soak --domain nlp --kills 10

It trains a small teacher (or takes ``--teacher``), runs the domain's ``distill.py`` once
uninterrupted as the reference, then runs the same command in another folder, killing it
(``SIGKILL``: no handler runs, nothing is flushed) after a random delay each time until
``--kills`` kills have landed before it finished; the last start runs to the end. Prints how
many kills it survived and whether every saved tensor equals the reference's; exits 1 if not.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.cli import parse_args, run_main
from common.domains import get_domain
from common.errors import ConfigError

SMALL = {
    "image-classification": (
        ["--max-train", "1024", "--max-test", "200", "--val-size", "200", "--batch-size", "32"],
        ["--epochs", "1", "--optimizer", "adamw", "--lr", "0.002"],
        ["--methods", "kd", "--epochs", "10", "--student", "tiny", "--checkpoint-every", "4"],
    ),
    "nlp": (
        ["--max-train", "256", "--max-test", "64", "--max-length", "32", "--batch-size", "16"],
        ["--epochs", "1", "--lr", "2e-4"],
        ["--methods", "kd", "--max-transfer", "64", "--epochs", "10", "--checkpoint-every", "4"],
    ),
}
"""Per domain: data options for both scripts, then the teacher's and the distillation's own
(small enough for a soak of ten kills to take minutes)."""


@dataclass
class Args:
    """SIGKILL a distillation run at random points and check it resumes to the same weights."""

    domain: str = "image-classification"
    """image-classification or nlp."""
    kills: int = 10
    """Kills that must land before the run finishes."""
    out_dir: Path = Path("runs/soak")
    """Where the teacher, the reference run and the killed run go (<out-dir>/<domain>/...)."""
    teacher: Path | None = None
    """A teacher to distil; unset: train a small one."""
    seed: int = 0
    """Seed of the kill times."""


def _run(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "model").glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no saved weights under {run_dir / 'model'}")
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def _latest(checkpoints: Path) -> str:
    try:
        return (checkpoints / "latest").read_text(encoding="utf-8")
    except OSError:
        return ""


def _killed_run(module: str, argv: list[str], run_dir: Path, kills: int, rng: random.Random) -> int:
    """Start the command again and again; each time, once it has written a new checkpoint (so
    every start makes progress), kill it after a random further delay (mid-step, mid-write,
    mid-evaluation). Stops when ``kills`` kills have landed; the last start runs to the end.
    Returns how many landed."""
    landed, checkpoints = 0, run_dir / "checkpoints"
    while landed < kills:
        before = _latest(checkpoints)
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while proc.poll() is None and _latest(checkpoints) == before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            if (run_dir / "results.json").is_file():
                break  # finished: fewer checkpoints were left than kills asked for
            raise ConfigError(f"the run failed with status {proc.returncode}; run it by hand")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        landed += 1
        print(f"kill {landed}/{kills} landed (after {_latest(checkpoints).strip()})", flush=True)
    final = _run(module, argv)
    if final.returncode != 0:
        raise ConfigError(f"the resumed run failed: {final.stderr.strip()[-500:]}")
    return landed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(Args, argv)
    if args.domain not in SMALL:
        raise ConfigError(f"--domain {args.domain!r}: the soak knows {', '.join(SMALL)}")
    domain = get_domain(args.domain)
    data, teacher_opts, distill_opts = SMALL[args.domain]
    root = args.out_dir / args.domain
    teacher = args.teacher or root / "teacher" / domain.teacher_artifact
    if args.teacher is None:
        trained = _run(
            domain.teacher_script, [*data, *teacher_opts, "--out-dir", str(root / "teacher")]
        )
        if trained.returncode != 0:
            raise ConfigError(f"teacher training failed: {trained.stderr.strip()[-500:]}")
    common = [*data, *distill_opts, "--teacher", str(teacher), "--cache-dir", str(root / "cache")]
    start = time.perf_counter()
    ref = _run(
        domain.distill_script, [*common, "--out-dir", str(root / "reference"), "--no-resume"]
    )
    if ref.returncode != 0:
        raise ConfigError(f"the reference run failed: {ref.stderr.strip()[-500:]}")
    duration = time.perf_counter() - start
    killed = root / "killed"
    if killed.exists():
        import shutil

        shutil.rmtree(killed)
    landed = _killed_run(
        domain.distill_script,
        [*common, "--out-dir", str(killed)],
        killed / "kd" / "seed-0",
        args.kills,
        random.Random(args.seed),
    )
    a, b = _weights(root / "reference" / "kd" / "seed-0"), _weights(killed / "kd" / "seed-0")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if landed < args.kills:
        print(
            f"only {landed} of {args.kills} kills landed before the run finished (it had fewer "
            "checkpoints): not a full soak"
        )
    print(
        f"{args.domain}: survived {landed} SIGKILLs; final weights "
        f"{'identical to' if same else 'DIFFERENT from'} the uninterrupted run "
        f"({len(a)} tensors; reference run {duration:.0f} s)"
    )
    return 0 if same and landed >= args.kills else 1


if __name__ == "__main__":
    run_main(main)
