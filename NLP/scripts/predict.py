"""Classify texts with a saved teacher or student (top-k classes with probabilities).

    python -m nlp.scripts.predict --model runs/quick/nlp/distill/kd/seed-0/model \\
        --texts "a gorgeous, witty film" "two hours i will never get back"
    python -m nlp.scripts.predict --model DIR --file sentences.txt --json

Runs ``transformers.pipeline("text-classification")`` on the folder, offline. Texts longer
than the model's training length are truncated to it (the tokenizer saved with the model
knows that length); empty texts are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import parse_args, run_main
from common.errors import CheckpointError
from nlp.data.text import DataError


@dataclass
class Args:
    """Classify texts with a saved model folder."""

    model: Path = Path("runs/quick/nlp/distill/kd/seed-0/model")
    """Saved model folder (save_pretrained + tokenizer), from train_teacher.py or distill.py."""
    texts: tuple[str, ...] = ()
    """Texts to classify, each one argument (quote them)."""
    file: Path | None = None
    """A UTF-8 text file with one text per line (blank lines are skipped)."""
    top_k: int = 2
    """How many classes to list per text."""
    batch_size: int = 64
    """Texts per forward pass."""
    json: bool = False
    """Print one JSON object per text instead of text."""


def load_pipeline(model_dir: Path) -> Any:
    """A CPU ``text-classification`` pipeline on a local folder (never a hub request)."""
    from transformers import pipeline

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(
            f"{model_dir} is not a saved text classifier (no config.json). Train one with "
            "`python -m nlp.scripts.train_teacher` or distill.py, or pass the folder it wrote."
        )
    from nlp.model_io import load_model_dir

    model, tokenizer, _ = load_model_dir(model_dir)
    return pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")


def predict(model_dir: Path, texts: list[str], top_k: int = 2, batch_size: int = 64) -> list[dict]:
    """``[{"text", "top": [(class, probability), ...]}]`` per text, best first."""
    if not texts:
        raise DataError('no texts to classify; give --texts "..." or --file with one per line')
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise DataError(f"text(s) {empty[:5]} are empty; give non-empty texts")
    clf = load_pipeline(model_dir)
    k = min(top_k, clf.model.config.num_labels)
    # truncation=True cuts to the tokenizer's model_max_length: the length it was trained at.
    out = clf(list(texts), top_k=k, truncation=True, batch_size=batch_size)
    return [
        {"text": t, "top": [(row["label"], float(row["score"])) for row in rows]}
        for t, rows in zip(texts, out, strict=True)
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv)
    texts = list(args.texts)
    if args.file is not None:
        if not args.file.is_file():
            raise DataError(f"text file {args.file} does not exist")
        texts += [
            line for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    out = predict(args.model, texts, args.top_k, args.batch_size)
    for row in out:
        if args.json:
            print(json.dumps(row))
        else:
            shown = ", ".join(f"{name} {100 * p:.1f}%" for name, p in row["top"])
            print(f"{shown}\t{row['text']}")
    return out


if __name__ == "__main__":
    run_main(main)
