"""Save and load text classifiers as Hugging Face folders.

A saved folder is what ``save_pretrained`` writes (``config.json`` with ``id2label`` /
``label2id``, ``model.safetensors``) plus the tokenizer (its ``model_max_length`` set to the
length the model was trained with, so ``truncation=True`` cuts there) and ``distillery.json``
(dataset, split and training length, for distill.py). So both of these work::

    transformers.pipeline("text-classification", model=DIR)
    python -m nlp.scripts.predict --model DIR --texts "a fine film"
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers.utils import logging as hf_logging

from common.domains import check_model_folder
from common.errors import CheckpointError
from common.io import atomic_write_json, sha256_file
from common.training import is_main_process

META = "distillery.json"


def save_model_dir(
    model: Any, tokenizer: Any, directory: Path, meta: dict[str, Any], max_length: int
) -> Path:
    """Write model, tokenizer and ``distillery.json`` into a temporary folder beside
    ``directory``, then rename it into place: a reader never sees half a model. Only the
    main process writes under ``accelerate launch``."""
    directory = Path(directory)
    if not is_main_process():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        model.save_pretrained(tmp)
        old_max = tokenizer.model_max_length
        tokenizer.model_max_length = max_length
        try:
            tokenizer.save_pretrained(tmp)
        finally:
            tokenizer.model_max_length = old_max
        atomic_write_json(tmp / META, {**meta, "max_length": max_length})
        if directory.exists():  # replace: swap, never delete first
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def weights_digest(directory: Path) -> str:
    """sha256 identifying a folder's weights (over every safetensors shard, by name)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} holds no *.safetensors weights")
    if len(files) == 1:
        return sha256_file(files[0])
    joined = "".join(f"{f.name}:{sha256_file(f)}\n" for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()


def read_meta(directory: Path) -> dict[str, Any]:
    """``distillery.json`` of a saved folder ({} for a plain Hugging Face checkpoint)."""
    path = Path(directory) / META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_model_dir(directory: Path, attentions: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """``(model in eval mode, tokenizer, meta)`` of a saved folder; errors say what to run."""
    from nlp.teacher_model.bert import load_classifier, load_tokenizer

    directory = Path(directory)
    check_model_folder(directory, "nlp")
    if not (directory / "config.json").is_file():
        raise CheckpointError(
            f"{directory} is not a saved text classifier (no config.json). Train one first with "
            "`python -m nlp.scripts.train_teacher` (or distill.py), or pass the folder it wrote."
        )
    hf_logging.disable_progress_bar()  # a one-second load needs no bar on stderr
    try:
        model = load_classifier(str(directory), attentions=attentions)
        tokenizer = load_tokenizer(str(directory))
        meta = read_meta(directory)
    except (OSError, ValueError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{directory} could not be loaded ({first}): a file in it (config.json, "
            "model.safetensors, the tokenizer or distillery.json) is damaged; restore it, or "
            "train the model again"
        ) from None
    return model.eval(), tokenizer, meta
