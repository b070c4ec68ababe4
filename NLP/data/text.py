"""Text-classification datasets as in-memory Hugging Face ``datasets``, split into fixed
stratified train/validation/test sets and served as padded dict batches.

Sources (files come from ``make data``; nothing is fetched from a hub at run time):

* ``polarity`` (default): Pang & Lee's 4000 movie-review sentences, negative/positive.
* ``tweets``: 38,158 tweets, negative/neutral/positive; duplicates are dropped, and so are
  the 46 texts annotated with different labels (a duplicate kept on both sides of a split
  would leak test sentences into training).
* ``sms-spam``: 4862 SMS messages, ham/spam; 4534 after dropping duplicates.
* ``file``: the user's own CSV (header row) or JSONL file with ``text`` and ``label``
  columns (``--data-file``); labels may be strings or integers.

The unlabeled *transfer set* is text the teacher labels for the student: by default the
~48k sentences of polarity's 1500 full reviews (another source than the labelled
sentences, none of which it contains), the training texts that ``max_train`` leaves out
(``remainder``, their labels unused: tweets), the user's own file with a ``text`` column, or a
plain text file with one sentence per line. It can be grown by word dropout
(:func:`word_dropout_copies`): seeded copies of each text with some words left out.

Splits are drawn per class with a fixed ``split_seed``, independent of the run's seed, so
every run and every method sees the same split; test is for final numbers only. Batches
carry ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` and ``index`` (the
example's position in its split), padded to the longest text in the batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from common.errors import ConfigError, DistilleryError
from common.fetch import dataset_dir

DATASETS = ("polarity", "tweets", "sms-spam", "file")
CLASSES = {
    "polarity": ["negative", "positive"],
    "tweets": ["negative", "neutral", "positive"],
    "sms-spam": ["ham", "spam"],
}
TRANSFER_SOURCES = ("auto", "none", "reviews", "remainder")
IGNORE_LABEL = -100
"""Label of a transfer example that no teacher has labelled yet (cross-entropy skips it)."""


class DataError(DistilleryError, ValueError):
    """Text data that is missing, malformed, or does not fit the model."""


@dataclass
class TextData:
    """A dataset ready for training: splits (columns ``text``, ``label``) and class names."""

    name: str
    classes: list[str]
    train: Dataset
    val: Dataset
    test: Dataset
    transfer: Dataset | None = None
    """Unlabeled text (column ``text``) for the teacher to label, or None."""
    copy_sizes: tuple[int, ...] = ()
    """Texts in each word-dropout copy set, in order; the sets end ``transfer``."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- file readers


def _read_polarity_sentences(path: Path) -> list[tuple[str, str]]:
    names = {"1": "positive", "-1": "negative"}
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(text, names[label]) for label, text in csv.reader(f)]


def _read_tweets(path: Path) -> list[tuple[str, str]]:
    # Legacy 8-bit bytes, not UTF-8: latin-1 decodes every byte; quoted texts hold bare
    # CR/LF, so the csv module must see the raw line ends (newline="").
    with open(path, encoding="latin-1", newline="") as f:
        return [(row["text"], row["sentiment"]) for row in csv.DictReader(f)]


def _read_sms(path: Path) -> list[tuple[str, str]]:
    # Tab-separated with unescaped quotes in the texts: split on the first tab, no CSV rules.
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            label, sep, text = line.rstrip("\r\n").partition("\t")
            if sep:
                rows.append((text, label))
    return rows


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a CSV (with a header) or JSONL file, and the column names seen."""
    try:
        return _read_records(Path(path))
    except UnicodeDecodeError as err:
        raise not_utf8(path, err) from None


def not_utf8(path: Path, err: UnicodeDecodeError) -> DataError:
    """The error for a text file that is not UTF-8."""
    return DataError(
        f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 (e.g. "
        "iconv -f latin1 -t utf-8) and run again"
    )


def _read_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{path}, line {number}: not valid JSON ({err}); write one object per "
                        'line, e.g. {"text": "a fine film", "label": "positive"}'
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {number}: expected a JSON object per line")
                rows.append(row)
        columns = sorted({k for row in rows for k in row})
        return rows, columns
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return rows, list(reader.fieldnames or [])


def _require_columns(path: Path, columns: Sequence[str], needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(repr(c) for c in missing)} column (columns found: "
            f"{', '.join(map(repr, columns)) or 'none'}). Name the columns "
            f"{' and '.join(repr(c) for c in needed)}: a CSV header row, or JSONL keys."
        )


def _check_texts(texts: Sequence[str], where: str, first_row: int = 1) -> None:
    empty = [i + first_row for i, t in enumerate(texts) if not t.strip()]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else "")
        raise DataError(
            f"{where}: {len(empty)} empty text(s) (rows {shown}); remove those rows or fill them in"
        )


def read_labelled_file(path: Path) -> list[tuple[str, str]]:
    """``(text, label)`` pairs of the user's CSV/JSONL file; errors name the row and fix."""
    rows, columns = read_records(path)
    _require_columns(path, columns, ("text", "label"))
    # Data rows of a CSV start at line 2 (after the header); JSONL objects at line 1.
    first = 1 if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else 2
    texts = ["" if r.get("text") is None else str(r["text"]) for r in rows]
    _check_texts(texts, str(path), first)
    labels = ["" if r.get("label") is None else str(r["label"]).strip() for r in rows]
    blank = [i + first for i, label in enumerate(labels) if not label]
    if blank:
        raise DataError(f"{path}: rows {blank[:5]} have no label; give every row a label")
    if not rows:
        raise DataError(f"{path} holds no rows")
    return list(zip(texts, labels, strict=True))


def _dedup(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeated texts (first occurrence kept) and texts given conflicting labels."""
    labels: dict[str, set[str]] = defaultdict(set)
    order: list[str] = []
    for text, label in pairs:
        text = text.strip()
        if text not in labels:
            order.append(text)
        labels[text].add(label)
    return [(t, next(iter(labels[t]))) for t in order if len(labels[t]) == 1]


def _sort_classes(names: Iterable[str]) -> list[str]:
    names = set(names)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


# --------------------------------------------------------------------------- splits


def _stratified_split(
    labels: Sequence[int], val_frac: float, test_frac: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Indices of train/val/test with each class split in the same proportions."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    train, val, test = [], [], []
    for y in sorted(by_class):
        idx = torch.tensor(by_class[y])[torch.randperm(len(by_class[y]), generator=g)].tolist()
        n_val, n_test = round(len(idx) * val_frac), round(len(idx) * test_frac)
        val += idx[:n_val]
        test += idx[n_val : n_val + n_test]
        train += idx[n_val + n_test :]
    return sorted(train), sorted(val), sorted(test)


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``n`` rows, stratified by label (quick runs and tests)."""
    if n is None or n >= len(ds):
        return ds
    labels = list(ds["label"])
    keep, _, _ = _stratified_split(labels, 0.0, 1.0 - n / len(ds), seed)
    return ds.select(keep[:n])


def load_dataset(
    name: str = "polarity",
    data_file: Path | None = None,
    val_frac: float = 0.1,
    test_frac: float = 0.15,
    split_seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    classes: Sequence[str] | None = None,
    transfer: str = "none",
    max_transfer: int | None = None,
    transfer_copies: int = 0,
    word_dropout: float = 0.1,
) -> TextData:
    """Load ``name`` into stratified train/val/test splits (and a transfer set, if asked).

    ``classes`` (a teacher's labels, in its order) fixes the label ids; a label outside
    them is an error. ``transfer`` is ``none``, ``auto`` (polarity's reviews for the
    polarity dataset, none otherwise), ``reviews``, ``remainder`` (the training texts
    ``max_train`` leaves out), or a path (CSV/JSONL with a ``text`` column, or a .txt file
    with one text per line). ``max_*`` cut fixed random subsets. ``transfer_copies`` adds
    that many word-dropout copies of each transfer text (:func:`word_dropout_copies`),
    one set after the other at the end of the transfer set (their sizes: ``copy_sizes``).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ConfigError(
            f"val_frac {val_frac} and test_frac {test_frac} must be in (0, 1) and sum below 1"
        )
    if name == "file":
        if data_file is None:
            raise ConfigError("--dataset file needs --data-file (a CSV or JSONL file)")
        pairs = read_labelled_file(Path(data_file))
    elif data_file is not None:
        raise ConfigError(f"--data-file is for --dataset file, not {name!r}; drop one of them")
    elif name == "polarity":
        pairs = _read_polarity_sentences(dataset_dir("polarity") / "sentences.csv")
    elif name == "tweets":
        pairs = _read_tweets(dataset_dir("tweets") / "tweets.csv")
    else:
        pairs = _read_sms(dataset_dir("sms-spam") / "sms.tsv")
    pairs = _dedup(pairs)
    _check_texts([t for t, _ in pairs], name)

    found = Counter(label for _, label in pairs)
    if classes is None:
        classes = CLASSES.get(name) or _sort_classes(found)
    classes = list(classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"dataset {name!r} has labels {unknown} outside the classes {classes}; "
            "a teacher can only teach the classes it predicts: relabel or drop those rows, "
            "or train a teacher on this data (train_teacher.py --dataset ...)"
        )
    if len(found) < 2:
        raise DataError(f"dataset {name!r} has a single class {sorted(found)}; need at least 2")
    small = {c: n for c, n in found.items() if n < 3}
    if small:
        raise DataError(
            f"classes {small} have fewer than 3 examples: too few to split into train, "
            "validation and test; add examples or merge classes"
        )
    label_id = {c: i for i, c in enumerate(classes)}
    labels = [label_id[label] for _, label in pairs]
    full = Dataset.from_dict({"text": [t for t, _ in pairs], "label": labels})
    train_idx, val_idx, test_idx = _stratified_split(labels, val_frac, test_frac, split_seed)
    train = _subset(full.select(train_idx), max_train, split_seed)
    test = _subset(full.select(test_idx), max_test, split_seed)
    held_out = set(full.select(val_idx)["text"]) | set(full.select(test_idx)["text"])
    remainder = sorted(set(full.select(train_idx)["text"]) - set(train["text"]))
    if transfer == "remainder" and not remainder:
        raise ConfigError(
            "--transfer remainder: every training text is labelled, so none remains for the "
            "teacher to label; pass --max-train N (the labelled subset) to keep the rest as "
            "the transfer set"
        )
    extra = load_transfer(transfer, name, held_out, max_transfer, split_seed, remainder)
    copy_sizes: tuple[int, ...] = ()
    if transfer_copies:
        if extra is None:
            raise ConfigError(
                f"--transfer-copies {transfer_copies} grows the transfer set, and there is "
                "none (--transfer none); pick a transfer source or drop --transfer-copies"
            )
        texts = list(extra["text"])
        known = held_out | set(texts) | set(train["text"])
        sets = [
            [c for c in copy_set if c not in known]
            for copy_set in word_dropout_copies(texts, transfer_copies, word_dropout, split_seed)
        ]
        extra = Dataset.from_dict({"text": texts + [c for copy_set in sets for c in copy_set]})
        copy_sizes = tuple(len(copy_set) for copy_set in sets)
    return TextData(name, classes, train, full.select(val_idx), test, extra, copy_sizes)


def word_dropout_copies(texts: Sequence[str], copies: int, p: float, seed: int) -> list[list[str]]:
    """``copies`` sets of variants of the texts, each word left out with probability ``p``
    (seeded: the same texts every run), set k holding copy k of every text; a variant that
    would keep fewer than three words, or repeats an earlier one, is skipped. Set k does not
    depend on how many sets follow it, so asking for one more set adds one set."""
    if not 0 < p < 1:
        raise ConfigError(f"--word-dropout {p}: must be between 0 and 1 (exclusive), e.g. 0.1")
    g = torch.Generator().manual_seed(seed)
    seen: set[str] = set()
    sets: list[list[str]] = []
    for _ in range(copies):
        sets.append([])
        for text in texts:
            words = text.split()
            keep = (torch.rand(len(words), generator=g) >= p).tolist()
            variant = " ".join(w for w, k in zip(words, keep, strict=True) if k)
            if len(variant.split()) >= 3 and variant != text and variant not in seen:
                seen.add(variant)
                sets[-1].append(variant)
    return sets


def _review_sentences() -> list[str]:
    """Sentences of polarity's 1500 full reviews: one per line inside each quoted field."""
    with open(dataset_dir("polarity") / "reviews.csv", encoding="utf-8-sig", newline="") as f:
        return [s for _, review in csv.reader(f) for s in review.split("\n")]


def load_transfer(
    source: str,
    dataset: str,
    exclude: set[str] | frozenset[str] = frozenset(),
    max_size: int | None = None,
    seed: int = 0,
    remainder: Sequence[str] = (),
) -> Dataset | None:
    """The unlabeled transfer set (column ``text``), or None for ``none``. ``remainder``:
    the texts of the ``remainder`` source (training texts left unlabelled).

    Texts shorter than three words (headings, lone punctuation) and duplicates are dropped,
    and so is any text in ``exclude`` (the validation and test sentences: a student must
    not be taught the answers it is scored on).
    """
    if source == "none" or (source == "auto" and dataset != "polarity"):
        return None
    if source in ("auto", "reviews"):
        texts = _review_sentences()
    elif source == "remainder":
        texts = list(remainder)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"transfer source {source!r} is neither one of {', '.join(TRANSFER_SOURCES)} "
                "nor an existing file (CSV/JSONL with a 'text' column, or .txt, one per line)"
            )
        if path.suffix.lower() == ".txt":
            try:
                texts = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as err:
                raise not_utf8(path, err) from None
        else:
            rows, columns = read_records(path)
            _require_columns(path, columns, ("text",))
            texts = ["" if r.get("text") is None else str(r["text"]) for r in rows]
    seen: set[str] = set()
    kept = []
    for text in (t.strip() for t in texts):
        if len(text.split()) >= 3 and text not in seen and text not in exclude:
            seen.add(text)
            kept.append(text)
    if not kept:
        raise DataError(f"transfer source {source!r} holds no text of three words or more")
    if max_size is not None and max_size < len(kept):
        g = torch.Generator().manual_seed(seed)
        kept = [kept[i] for i in sorted(torch.randperm(len(kept), generator=g)[:max_size].tolist())]
    return Dataset.from_dict({"text": kept})


# --------------------------------------------------------------------------- tokens and batches


def tokenize(ds: Dataset, tokenizer: Any, max_length: int) -> Dataset:
    """Add ``input_ids`` / ``attention_mask`` / ``token_type_ids``, cut to ``max_length``
    tokens (longer texts are truncated, as the model cannot read past its positions)."""
    if max_length < 8:
        raise ConfigError(f"max_length must be at least 8 tokens, got {max_length}")

    texts = list(ds["text"])  # a datasets Column is lazy; the tokenizer wants a list
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids") or [[0] * len(x) for x in ids]
    # from_dict, not map(): the same columns without a progress bar per split.
    return Dataset.from_dict(
        {
            **ds.to_dict(),
            "input_ids": ids,
            "attention_mask": enc["attention_mask"],
            "token_type_ids": types,
        }
    )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides a tokenizer's ids for a text: its class and, for a fast
    tokenizer, its whole pipeline (normalizer, pre-tokenizer, vocabulary, added and special
    tokens, post-processor), less the truncation/padding state a call leaves behind; else its
    vocabulary, special tokens and lowercasing. Two tokenizers with the same fingerprint give
    the same token ids, so token-level teacher states line up with the student's tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = {
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
            "lowercase": getattr(tokenizer, "do_lower_case", None),
        }
    text = json.dumps({"class": type(tokenizer).__name__, "state": state}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


_ROLES = ("cls", "sep", "unk", "pad", "mask")


def _token_keys(tokenizer: Any) -> dict[int, tuple[str, str]]:
    """Every id of the tokenizer (its vocabulary and added tokens) -> ``("role", r)`` for
    its special tokens ([CLS] and MPNet's <s> are both ``cls``), ``("token", text)`` for the
    rest: keys that a literal token (MPNet has a plain ``<unk>`` besides its [UNK]) cannot
    mistake for a role."""
    keys = {i: ("token", text) for text, i in tokenizer.get_vocab().items()}
    for role in reversed(_ROLES):  # one id in two roles: the first role named wins
        i = getattr(tokenizer, f"{role}_token_id", None)
        if i is not None:
            keys[i] = ("role", role)
    return keys


def token_names(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """How ``ids`` read, special tokens by their role (``<cls>``, ``<sep>``, ...)."""
    keys = _token_keys(tokenizer)
    named = (keys.get(i, ("token", f"<id {i}>")) for i in ids)
    return [f"<{name}>" if kind == "role" else name for kind, name in named]


def misaligned_rows(a: Dataset, b: Dataset, tokenizer_a: Any, tokenizer_b: Any) -> list[int]:
    """Rows of two tokenized copies of the same texts whose tokens differ at some position
    (another length, or another token there, special tokens compared by role). None differ
    when the two tokenizers cut every text alike (MPNet's and BERT's uncased WordPiece do):
    then a teacher's per-token states line up with the student's positions."""
    if len(a) != len(b):
        raise ConfigError(f"misaligned_rows: {len(a)} rows against {len(b)}")
    # One id -> id table between the vocabularies (by key), then a list compare per row.
    to_b = {key: i for i, key in _token_keys(tokenizer_b).items()}
    table = {i: to_b.get(key, -1) for i, key in _token_keys(tokenizer_a).items()}
    return [
        row
        for row, (x, y) in enumerate(zip(a["input_ids"], b["input_ids"], strict=True))
        if [table.get(i, -2) for i in x] != y
    ]


def first_difference(ids_a: Sequence[int], ids_b: Sequence[int], tok_a: Any, tok_b: Any) -> str:
    """Where two tokenizations of one text first differ, with the tokens around it."""
    a, b = token_names(tok_a, ids_a), token_names(tok_b, ids_b)
    pairs = enumerate(zip(a, b, strict=False))  # the shorter one may end first
    at = next((k for k, (x, y) in pairs if x != y), min(len(a), len(b)))
    around = slice(max(at - 2, 0), at + 3)
    return f"token {at}: {a[around]} against {b[around]}"


def fingerprint_texts(*splits: Dataset) -> str:
    """sha256 over the texts and labels of ``splits``, in order (what a trained teacher saw)."""
    h = hashlib.sha256()
    for split in splits:
        labels = split["label"] if "label" in split.column_names else [None] * len(split)
        for text, label in zip(split["text"], labels, strict=True):
            h.update(f"{label}\t{text}\n".encode())
        h.update(b"\x00")  # split boundary
    return h.hexdigest()


def token_tensors(split: Dataset) -> tuple[Tensor, Tensor]:
    """Token ids of a tokenized split, flat, and each text's length: exactly what a teacher
    reads (to hash with :func:`common.cache.fingerprint`)."""
    ids = list(split["input_ids"])
    return torch.tensor([t for x in ids for t in x]), torch.tensor([len(x) for x in ids])


def count_truncated(ds: Dataset, max_length: int) -> int:
    """Texts of a tokenized split that fill ``max_length`` (cut, or exactly that long)."""
    return sum(len(ids) >= max_length for ids in ds["input_ids"])


def with_labels(
    train: Dataset, transfer: Dataset | None, transfer_labels: Tensor | None
) -> Dataset:
    """The distillation training set: labelled train rows, then transfer rows labelled by the
    teacher (``transfer_labels``), so ``index`` positions are stable for a teacher cache."""
    if transfer is None:
        return train
    if transfer_labels is None or len(transfer_labels) != len(transfer):
        raise ConfigError("the transfer set needs one teacher label per text")
    rows = train.to_dict()
    extra = {**transfer.to_dict(), "label": [int(y) for y in transfer_labels.tolist()]}
    return Dataset.from_dict({k: rows[k] + extra[k] for k in train.column_names})


class Collator:
    """``collate_fn``: a list of row indices -> a padded dict batch (one ``datasets`` read per
    batch, padded to the batch's longest text, not to ``max_length``: most sentences are
    much shorter, and padding would cost the teacher most of its time)."""

    def __init__(self, split: Dataset, pad_id: int = 0) -> None:
        missing = {"input_ids", "attention_mask", "token_type_ids"} - set(split.column_names)
        if missing:
            raise ConfigError(f"split is not tokenized (no {sorted(missing)}); call tokenize()")
        self.split, self.pad_id = split, pad_id
        self.has_labels = "label" in split.column_names

    def __call__(self, indices: list[int]) -> dict[str, Tensor]:
        rows = self.split[list(indices)]
        width = max(len(ids) for ids in rows["input_ids"])

        def pad(seqs: list[list[int]], value: int) -> Tensor:
            return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

        batch = {
            "input_ids": pad(rows["input_ids"], self.pad_id),
            "attention_mask": pad(rows["attention_mask"], 0),
            "token_type_ids": pad(rows["token_type_ids"], 0),
            "index": torch.as_tensor(indices, dtype=torch.long),
        }
        if self.has_labels:
            batch["labels"] = torch.as_tensor(rows["label"], dtype=torch.long)
        return batch


class LengthGroupedSampler(Sampler[int]):
    """Training order in batches of about one length: each epoch, a seeded shuffle of the
    rows is cut into groups of ``group`` batches, each group is sorted by length and cut
    into batches, and the full batches are shuffled (the one short batch, if any, comes
    last, so every ``batch_size`` indices in a row are one batch, also when Accelerate
    hands batches out to several processes). The order is a function of (seed, epoch):
    a resumed run sees the batches of an uninterrupted one.

    Random batches of polarity sentences pad to about twice their mean length (60 of 64
    tokens against 29); grouped batches pad to about the mean, as in Hugging Face's
    ``group_by_length``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: int = 50):
        if batch_size < 1 or group < 1:
            raise ConfigError(f"batch_size and group must be >= 1, got {batch_size}, {group}")
        self.lengths, self.batch_size = list(lengths), batch_size
        self.seed, self.group, self.epoch = seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size, step = self.batch_size * self.group, self.batch_size
        full, short = [], []
        for start in range(0, len(order), size):
            group = sorted(order[start : start + size], key=self.lengths.__getitem__)
            for i in range(0, len(group), step):
                (full if len(group[i : i + step]) == step else short).append(group[i : i + step])
        return [full[i] for i in torch.randperm(len(full), generator=g).tolist()] + short

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


def make_loader(
    split: Dataset,
    batch_size: int,
    shuffle: bool,
    pad_id: int = 0,
    num_workers: int = 0,
    by_length: bool = False,
    group_seed: int | None = None,
) -> DataLoader:
    """A DataLoader of padded dict batches over a tokenized split (indices are the dataset).

    ``by_length``: visit the rows shortest first (ties in row order), so each batch holds
    texts of about one length and pads little. Only for passes that place each output by its
    batch's ``index``, like the teacher-output cache: the batches are not in row order.
    ``group_seed`` (with ``shuffle``): shuffle in batches of about one length
    (:class:`LengthGroupedSampler` with this seed) instead of uniformly."""
    if by_length and shuffle:
        raise ConfigError("make_loader: by_length orders the rows; it cannot also shuffle them")
    if group_seed is not None and not shuffle:
        raise ConfigError("make_loader: group_seed groups a shuffled order; pass shuffle=True")
    rows: Any = range(len(split))
    sampler = None
    if by_length or group_seed is not None:
        lengths = [len(ids) for ids in split["input_ids"]]
        if by_length:
            rows = sorted(rows, key=lengths.__getitem__)
        else:
            sampler, shuffle = LengthGroupedSampler(lengths, batch_size, group_seed), False
    return DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        collate_fn=Collator(split, pad_id),
        # Its own generator: otherwise every new iterator draws its worker seed from the
        # global torch RNG, and a run resumed mid-epoch (whose iterator starts after the
        # checkpoint restored that RNG) would draw once more than the uninterrupted run and
        # get other dropout masks from then on. The order comes from the seedable sampler
        # (or the length-grouped one).
        generator=torch.Generator(),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
