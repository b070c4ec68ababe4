"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from safetensors.torch import save_model
from torch import nn


def _default_mode(dest: Path) -> int:
    if dest.exists():
        return dest.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest``; on clean exit it replaces ``dest`` in one rename.

    On any exception the temporary file is removed and ``dest`` is untouched. It sits in the
    same directory so that ``os.replace`` is a same-filesystem rename.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 (and a writer may have re-created the file): give the final
        # file the mode a plain open() would have.
        os.chmod(tmp, _default_mode(dest))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(dest: Path) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces ``dest`` only on clean exit."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def save_model_atomic(
    model: nn.Module, path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """``safetensors.torch.save_model`` (handles tied weights) through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=dict(metadata) if metadata else None)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


LOCK_FILE = ".lock"


def claim_folder(folder: Path) -> Path:
    """Claim a run's output folder for this process: one clear error when it is a file, or
    when another live process (on this machine) holds it; a lock left by a killed run is taken
    over with a note. The lock (``<folder>/.lock``: process id and host) goes when this process
    exits. Under ``accelerate launch`` only the main process claims (the others share its
    folder). Returns the folder."""
    import atexit
    import socket

    from common.errors import ConfigError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output folder {folder} is a file; pass a folder path (--out-dir)")
    # The launcher's RANK, not Accelerate's state: this runs before the Accelerator exists, and
    # building the state here would fix it before the script chooses its backend.
    if os.environ.get("RANK", "0") != "0":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    lock, me = folder / LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:  # O_EXCL: of two runs started together, exactly one creates the lock
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                held = {}  # half-written by a run killed mid-write: stale
            if held == me:
                return folder
            if isinstance(held, dict) and held and _alive(held):
                raise ConfigError(
                    f"{folder} is in use by another run (process {held.get('pid')} on "
                    f"{held.get('host')}); wait for it to finish, or pass another --out-dir"
                ) from None
            print(f"note: taking over {folder} from a run that is gone ({held or 'no owner'})")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break

    def release() -> None:
        try:
            if json.loads(lock.read_text(encoding="utf-8")) == me:
                lock.unlink()
        except (OSError, ValueError):
            pass

    atexit.register(release)
    return folder


def _alive(held: dict) -> bool:
    """Whether the process that wrote a lock still runs (a lock from another host is taken
    as live: it cannot be checked from here)."""
    import socket

    if held.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(held["pid"]), 0)
    except (ProcessLookupError, KeyError, TypeError, ValueError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True
