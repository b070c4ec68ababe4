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
