"""Teacher-output cache: run the frozen teacher over a fixed transfer set once, reuse it.

Naive distillation runs the teacher forward on every student step; with a teacher 30-300x
the student's cost, that dominates training. When the transfer set is deterministic (no
augmentation, fixed preprocessing), the teacher's outputs for example ``i`` never change,
so they are computed once, stored as safetensors, and looked up by ``batch["index"]``.

The file name is a digest of everything the outputs depend on: the teacher's weights, the
data, the preprocessing and the output keys. Change any of them and the digest changes, so a
stale cache is never read; old files are simply left behind (``rm -r .cache/teacher-outputs``).

With augmentation the teacher sees different inputs every epoch, and a cache would need one
teacher pass per epoch, which costs what running the teacher costs. Domains then run the
teacher live and say so (:data:`AUGMENTATION_REASON`), unless the augmentation is a fixed set
of V seeded views per example: then the outputs of every (example, view) are cached once
(:func:`load_or_build_views`: chunked, resumable, memory-mapped) and served by
``batch["index"]`` and ``batch["view"]`` (:class:`ViewCacheAdapter`).

Usage inside a domain::

    key = cache_key(teacher_sha256=..., data_sha256=fingerprint(images, labels),
                    preprocessing={...}, outputs=("logits",))
    cache, stats = load_or_compute(cache_dir, key, lambda: compute_outputs(...))
    loop = DistillationLoop(teacher=cache, adapter=CachedTeacherAdapter(adapter), ...)
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from common.errors import ConfigError, DistilleryError
from common.io import atomic_path, atomic_write_json
from common.training import process_state

FORMAT_VERSION = 1
AUGMENTATION_REASON = (
    "teacher cache off: augmentation changes the teacher's inputs every epoch, so cached "
    "outputs would be wrong (and one teacher pass per epoch costs what the live teacher does)"
)


class CacheError(DistilleryError, RuntimeError):
    """A cache file that cannot serve the transfer set it was asked for."""


def default_cache_dir() -> Path:
    """``<data root>/../teacher-outputs``: beside the fetched data, outside the git tree."""
    from common.fetch import data_root  # local: fetch imports heavier modules

    return data_root().parent / "teacher-outputs"


def fingerprint(*tensors: Tensor | np.ndarray) -> str:
    """sha256 over the dtype, shape and bytes of each tensor, in order."""
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous().numpy() if isinstance(t, Tensor) else np.asarray(t)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cache_key(
    *,
    teacher_sha256: str,
    data_sha256: str,
    preprocessing: Mapping[str, Any],
    outputs: Sequence[str],
) -> dict[str, Any]:
    """Everything the cached outputs depend on, as a JSON-able dict (its digest names the file)."""
    return {
        "format": FORMAT_VERSION,
        "teacher_sha256": teacher_sha256,
        "data_sha256": data_sha256,
        "preprocessing": dict(preprocessing),
        "outputs": sorted(outputs),
    }


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class CacheStats:
    """What the cache did, for the log and results.json."""

    hit: bool
    """True when the outputs were read from disk; False when they were computed (a miss)."""
    path: str
    """The cache file."""
    examples: int
    """Examples covered."""
    size_bytes: int
    """File size."""
    seconds: float
    """Time to read (hit) or compute and write (miss)."""
    parts: list[dict[str, Any]] = field(default_factory=list)
    """With :func:`load_or_compute_parts`: each file's own stats, in row order."""

    def describe(self) -> str:
        what = "hit" if self.hit else "miss (computed)"
        if self.parts:
            computed = sum(not p["hit"] for p in self.parts)
            what += f", {len(self.parts)} files, {computed} computed"
        return (
            f"teacher cache {what}: {self.examples:,} examples, {self.size_bytes / 2**20:.1f} MiB, "
            f"{self.seconds:.1f} s ({self.path})"
        )

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if not self.parts:
            del record["parts"]
        return record


class TeacherOutputCache(nn.Module):
    """Teacher outputs for every example of a transfer set, as buffers (so ``.to(device)``
    moves them with the loop's teacher), served by example index."""

    def __init__(self, outputs: Mapping[str, Tensor]) -> None:
        super().__init__()
        if not outputs:
            raise ConfigError("a teacher cache needs at least one output (e.g. 'logits')")
        sizes = {k: v.shape[0] for k, v in outputs.items()}
        if len(set(sizes.values())) != 1:
            raise CacheError(f"cached outputs disagree on the number of examples: {sizes}")
        self.keys = tuple(sorted(outputs))
        for k in self.keys:
            self.register_buffer(_buffer_name(k), outputs[k], persistent=False)
        self.hits = 0
        """Batches served (each one a teacher forward pass saved)."""

    def __len__(self) -> int:
        return int(self.get(self.keys[0]).shape[0])

    def get(self, key: str) -> Tensor:
        return getattr(self, _buffer_name(key))

    def lookup(self, index: Tensor) -> dict[str, Tensor]:
        """Outputs of the examples ``index`` (float32, on the cache's device)."""
        n = len(self)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise CacheError(
                f"batch index {int(index.max())} is outside the cached transfer set of {n} "
                "examples; the cache was built for other data (delete it or fix the loader)"
            )
        self.hits += 1
        index = index.to(self.get(self.keys[0]).device)
        return {k: self.get(k)[index].float() for k in self.keys}


def _buffer_name(key: str) -> str:
    # Output keys may contain dots ("layer1.attn"), which buffer names may not.
    return "out__" + key.replace(".", "__")


class CachedTeacherAdapter:
    """Wraps a domain's adapter: the student runs as before, the "teacher" is a
    :class:`TeacherOutputCache` looked up by ``batch["index"]`` (pass the cache as the loop's
    teacher; the loop freezes it and moves it to the device like a model)."""

    def __init__(self, adapter: Any) -> None:
        self.inner = adapter

    def student(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return self.inner.student(model, batch)

    def teacher(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        if not isinstance(model, TeacherOutputCache):
            raise ConfigError("CachedTeacherAdapter needs a TeacherOutputCache as the teacher")
        if "index" not in batch:
            raise ConfigError("cached teacher outputs are looked up by batch['index']; add it")
        return model.lookup(batch["index"])


@torch.no_grad()
def compute_outputs(
    teacher: nn.Module,
    forward: Callable[[nn.Module, Mapping[str, Any]], Mapping[str, Tensor]],
    batches: Iterable[Mapping[str, Any]],
    size: int,
    keys: Sequence[str],
    dtypes: Mapping[str, torch.dtype] | None = None,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Run ``forward(teacher, batch)`` over ``batches`` (each with an ``index``) and gather
    ``keys`` into CPU tensors of ``size`` rows. ``dtypes`` may store large feature maps in
    float16 (half the memory; hint losses do not need more precision)."""
    from tqdm.auto import tqdm

    dtypes = dict(dtypes or {})
    was_training = teacher.training
    teacher.eval()
    out: dict[str, Tensor] = {}
    seen = torch.zeros(size, dtype=torch.bool)
    device = next(teacher.parameters()).device
    for batch in tqdm(batches, desc="teacher outputs", disable=not progress, leave=False):
        index = batch["index"].cpu()
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        result = forward(teacher, moved)
        missing = [k for k in keys if k not in result]
        if missing:
            raise ConfigError(f"the teacher gives no output {missing}; it has {sorted(result)}")
        for k in keys:
            v = result[k].detach().cpu()
            if k not in out:
                out[k] = torch.empty((size, *v.shape[1:]), dtype=dtypes.get(k, torch.float32))
            out[k][index] = v.to(out[k].dtype)
        seen[index] = True
    teacher.train(was_training)
    if not bool(seen.all()):
        raise CacheError(
            f"the batches covered {int(seen.sum())} of {size} examples; a cache must cover "
            "the whole transfer set (iterate it once, unshuffled, without dropping the last batch)"
        )
    return out


def load_or_compute(
    cache_dir: Path,
    key: Mapping[str, Any],
    compute: Callable[[], Mapping[str, Tensor]],
) -> tuple[TeacherOutputCache, CacheStats]:
    """Read the outputs for ``key`` from ``cache_dir``, or compute and store them.

    Under ``accelerate launch`` the main process computes and writes while the others wait,
    then every process reads the same file.
    """
    path = Path(cache_dir) / f"{key_digest(key)}.safetensors"
    start = time.perf_counter()
    hit = path.exists()
    state = process_state()
    with state.main_process_first():
        if not path.exists() and state.is_main_process:
            outputs = {k: v.contiguous() for k, v in compute().items()}
            with atomic_path(path) as tmp:
                save_file(outputs, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
        outputs = _read(path, key)
    cache = TeacherOutputCache(outputs)
    stats = CacheStats(
        hit=hit,
        path=str(path),
        examples=len(cache),
        size_bytes=path.stat().st_size,
        seconds=time.perf_counter() - start,
    )
    return cache, stats


def load_or_compute_parts(
    cache_dir: Path,
    parts: Sequence[tuple[Mapping[str, Any], Callable[[], Mapping[str, Tensor]]]],
) -> tuple[TeacherOutputCache, CacheStats]:
    """One cache over consecutive blocks of rows, each block its own file (``(key,
    compute)`` as in :func:`load_or_compute`), concatenated in order. A transfer set that
    grows by a block (e.g. one more set of augmented copies) then costs the teacher a pass
    over the new block only; with a single part this is :func:`load_or_compute`."""
    if not parts:
        raise ConfigError("load_or_compute_parts needs at least one (key, compute) part")
    if len(parts) == 1:
        return load_or_compute(cache_dir, *parts[0])
    caches, stats = zip(*(load_or_compute(cache_dir, key, c) for key, c in parts), strict=True)
    keys = {c.keys for c in caches}
    if len(keys) != 1:
        raise CacheError(f"cache parts hold different outputs: {sorted(keys)}")
    outputs = {k: torch.cat([c.get(k) for c in caches]) for k in caches[0].keys}
    merged = CacheStats(
        hit=all(s.hit for s in stats),
        path=str(Path(stats[0].path).parent),
        examples=sum(s.examples for s in stats),
        size_bytes=sum(s.size_bytes for s in stats),
        seconds=sum(s.seconds for s in stats),
        parts=[s.to_dict() for s in stats],
    )
    return TeacherOutputCache(outputs), merged


def _read(path: Path, key: Mapping[str, Any]) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get("key", "null"))
            outputs = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, ValueError, RuntimeError) as e:
        raise CacheError(f"cannot read teacher cache {path}: {e}; delete the file") from e
    if stored != json.loads(json.dumps(key, sort_keys=True)):
        raise CacheError(
            f"teacher cache {path} was written for other settings (digest collision or a "
            "hand-copied file); delete it and it will be rebuilt"
        )
    if sorted(outputs) != sorted(key["outputs"]):
        raise CacheError(f"teacher cache {path} lacks outputs {key['outputs']}; delete it")
    return outputs


# --------------------------------------------------------------------------- augmented views
#
# Consistent teaching (Beyer et al. 2022): teacher and student see the same, aggressively
# augmented image. With V fixed, seeded views per example (the domain makes view v of example
# i from (view seed, i, v) alone and gives each example one of them per epoch), the teacher's
# outputs on every (example, view) are computed once, like the fixed transfer set's, and looked
# up by batch["index"] and batch["view"]. V views of a large set can exceed RAM, so the file is
# written in chunks of examples and read memory-mapped; a build that is killed resumes at its
# last finished chunk, and the final name only ever holds a complete file.

_SAFETENSORS_DTYPES: dict[torch.dtype, tuple[str, Any]] = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
}
_FROM_CODE = {code: np_dtype for code, np_dtype in _SAFETENSORS_DTYPES.values()}

OutputSpec = tuple[tuple[int, ...], torch.dtype]
"""One output per (example, view): its shape (``(classes,)`` for logits) and stored dtype."""


@dataclass
class ViewCacheStats(CacheStats):
    """What the view cache did: besides :class:`CacheStats`, the views per example, the rows
    a resumed build found finished, and this process's peak resident memory."""

    views: int = 0
    """Views per example (the file holds examples x views outputs)."""
    resumed_rows: int = 0
    """Examples a killed build had already finished (0: built from the start, or a hit)."""
    peak_rss_mib: float = 0.0
    """Peak resident memory of this process so far (getrusage), MiB: the build holds one
    chunk, the reader maps the file, so neither needs the cache to fit in RAM."""

    def describe(self) -> str:
        what = "hit" if self.hit else "miss (computed)"
        resumed = f", resumed after {self.resumed_rows:,} examples" if self.resumed_rows else ""
        return (
            f"teacher view cache {what}: {self.examples:,} examples x {self.views} views, "
            f"{self.size_bytes / 2**20:.1f} MiB, {self.seconds:.1f} s{resumed}, peak RSS "
            f"{self.peak_rss_mib:.0f} MiB ({self.path})"
        )


class ViewOutputCache(nn.Module):
    """Teacher outputs per (example, view), memory-mapped from a safetensors file (so a cache
    larger than RAM works), served by ``index`` and ``view``. A module without parameters: the
    loop may move it like a teacher; looked-up rows go to the index's device."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        if not arrays:
            raise ConfigError("a teacher view cache needs at least one output (e.g. 'logits')")
        shapes = {k: tuple(a.shape[:2]) for k, a in arrays.items()}
        if len(set(shapes.values())) != 1:
            raise CacheError(f"cached outputs disagree on examples x views: {shapes}")
        self.keys = tuple(sorted(arrays))
        self.arrays = dict(arrays)
        self.hits = 0
        """Batches served (each one a teacher forward pass saved)."""

    def __len__(self) -> int:
        return int(self.arrays[self.keys[0]].shape[0])

    @property
    def views(self) -> int:
        return int(self.arrays[self.keys[0]].shape[1])

    def lookup(self, index: Tensor, view: Tensor) -> dict[str, Tensor]:
        """Outputs of view ``view[k]`` of example ``index[k]`` (float32, on index's device)."""
        n, v = len(self), self.views
        for what, t, size in (("index", index, n), ("view", view, v)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
                raise CacheError(
                    f"batch {what} {int(t.max())} is outside the cached {n} examples x {v} "
                    "views; the cache was built for other data or views (delete it or fix "
                    "the loader)"
                )
        i, j = index.cpu().numpy(), view.cpu().numpy()
        self.hits += 1
        return {
            k: torch.from_numpy(np.ascontiguousarray(self.arrays[k][i, j])).float().to(index.device)
            for k in self.keys
        }


class ViewCacheAdapter(CachedTeacherAdapter):
    """:class:`CachedTeacherAdapter` for views: the teacher's outputs are looked up by
    ``batch["index"]`` and ``batch["view"]`` in a :class:`ViewOutputCache`."""

    def teacher(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        if not isinstance(model, ViewOutputCache):
            raise ConfigError("ViewCacheAdapter needs a ViewOutputCache as the teacher")
        missing = [k for k in ("index", "view") if k not in batch]
        if missing:
            raise ConfigError(
                f"cached view outputs are looked up by batch['index'] and batch['view']; the "
                f"batches lack {missing} (build them with views, e.g. make_loader(views=V))"
            )
        return model.lookup(batch["index"], batch["view"])


def _view_layout(
    specs: Mapping[str, OutputSpec], examples: int, views: int
) -> tuple[dict[str, Any], int]:
    """safetensors header entries (``[examples, views, *shape]`` per key, in key order, no
    gaps) and the data's total size in bytes."""
    header: dict[str, Any] = {}
    offset = 0
    for k in sorted(specs):
        shape, dtype = specs[k]
        if dtype not in _SAFETENSORS_DTYPES:
            raise ConfigError(f"view cache output {k!r}: store float32 or float16, not {dtype}")
        code, np_dtype = _SAFETENSORS_DTYPES[dtype]
        full = [examples, views, *shape]
        size = int(np.prod(full)) * np.dtype(np_dtype).itemsize
        header[k] = {"dtype": code, "shape": full, "data_offsets": [offset, offset + size]}
        offset += size
    return header, offset


def _header_bytes(entries: Mapping[str, Any], key: Mapping[str, Any]) -> bytes:
    header = {**entries, "__metadata__": {"key": json.dumps(key, sort_keys=True)}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    return len(raw).to_bytes(8, "little") + raw


def _open_view_file(path: Path, key: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The outputs of a finished view cache file as read-only memory maps, after checking that
    it was written for ``key`` and is whole."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
        stored = json.loads(header.pop("__metadata__", {}).get("key", "null"))
        start = 8 + length
        total = max((e["data_offsets"][1] for e in header.values()), default=0)
        if path.stat().st_size != start + total:
            raise ValueError(f"{path.stat().st_size} bytes, the header says {start + total}")
        arrays = {
            k: np.memmap(
                path,
                dtype=_FROM_CODE[e["dtype"]],
                mode="r",
                offset=start + e["data_offsets"][0],
                shape=tuple(e["shape"]),
            )
            for k, e in header.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(f"cannot read teacher view cache {path}: {e}; delete the file") from e
    if stored != json.loads(json.dumps(key, sort_keys=True)):
        raise CacheError(
            f"teacher view cache {path} was written for other settings (digest collision or "
            "a hand-copied file); delete it and it will be rebuilt"
        )
    return arrays


def _build_view_file(
    path: Path,
    key: Mapping[str, Any],
    specs: Mapping[str, OutputSpec],
    examples: int,
    views: int,
    compute: Callable[[int, int], Mapping[str, Tensor]],
    chunk: int,
    progress: bool,
) -> int:
    """Write the view cache for ``key`` to ``path``, ``chunk`` examples at a time, into
    ``.<name>.partial`` (renamed to ``path`` only once complete) with
    ``.<name>.progress.json`` recording finished examples after each chunk is on disk, so a
    killed build resumes there. Returns the examples a resumed build found finished."""
    from tqdm.auto import tqdm

    entries, total = _view_layout(specs, examples, views)
    head = _header_bytes(entries, key)
    partial = path.with_name(f".{path.name}.partial")
    record = path.with_name(f".{path.name}.progress.json")
    done = 0
    if partial.exists() and record.exists():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        same = saved.get("key") == json.loads(json.dumps(key, sort_keys=True))
        if same and partial.stat().st_size == len(head) + total:
            done = int(saved.get("examples", 0))
    if done == 0:
        with open(partial, "wb") as f:
            f.write(head)
            f.truncate(len(head) + total)
    resumed = done
    with (
        open(partial, "r+b") as f,
        tqdm(total=examples, initial=done, desc="teacher views", disable=not progress) as bar,
    ):
        while done < examples:
            stop = min(done + chunk, examples)
            out = compute(done, stop)
            for k in sorted(specs):
                shape, dtype = specs[k]
                rows = out[k].detach().cpu().to(dtype).contiguous()
                if tuple(rows.shape) != (stop - done, views, *shape):
                    raise CacheError(
                        f"view cache output {k!r} of examples {done}..{stop - 1} has shape "
                        f"{tuple(rows.shape)}, expected {(stop - done, views, *shape)}"
                    )
                row_bytes = rows[0].numel() * rows.element_size()
                f.seek(len(head) + entries[k]["data_offsets"][0] + done * row_bytes)
                f.write(rows.numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
            done = stop
            atomic_write_json(record, {"key": key, "examples": done})
            bar.update(stop - bar.n)
    os.replace(partial, path)
    record.unlink(missing_ok=True)
    return resumed


def load_or_build_views(
    cache_dir: Path,
    key: Mapping[str, Any],
    *,
    examples: int,
    views: int,
    specs: Mapping[str, OutputSpec],
    compute: Callable[[int, int], Mapping[str, Tensor]],
    chunk: int = 1024,
    progress: bool = True,
) -> tuple[ViewOutputCache, ViewCacheStats]:
    """Open the view cache for ``key`` in ``cache_dir``, or build it first:
    ``compute(start, stop)`` gives each output of ``specs`` for examples ``start..stop-1``,
    all views, as ``[stop - start, views, *shape]``. ``key`` must name everything the outputs
    depend on (teacher, data, augmentation recipe, views, view seed): its digest is the file
    name. One builder at a time per file (a lock beside it); under ``accelerate launch`` the
    main process builds while the others wait, then every process maps the same file."""
    import fcntl

    if examples < 1 or views < 1:
        raise ConfigError(f"a view cache needs examples and views >= 1, got {examples}, {views}")
    path = Path(cache_dir) / f"{key_digest(key)}.safetensors"
    start = time.perf_counter()
    hit, resumed = path.exists(), 0
    state = process_state()
    with state.main_process_first():
        if not path.exists() and state.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = path.with_name(f".{path.name}.lock")
            with open(lock, "w") as held:
                fcntl.flock(held, fcntl.LOCK_EX)  # another run building it: wait for it
                if not path.exists():
                    resumed = _build_view_file(
                        path, key, specs, examples, views, compute, chunk, progress
                    )
                lock.unlink(missing_ok=True)
        arrays = _open_view_file(path, key)
    cache = ViewOutputCache(arrays)
    if (len(cache), cache.views) != (examples, views) or sorted(arrays) != sorted(specs):
        raise CacheError(
            f"teacher view cache {path} holds {sorted(arrays)} for {len(cache)} x "
            f"{cache.views}, expected {sorted(specs)} for {examples} x {views}; delete it"
        )
    stats = ViewCacheStats(
        hit=hit,
        path=str(path),
        examples=examples,
        size_bytes=path.stat().st_size,
        seconds=time.perf_counter() - start,
        views=views,
        resumed_rows=resumed,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return cache, stats
