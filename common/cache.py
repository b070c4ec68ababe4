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
teacher live and say so (:data:`AUGMENTATION_REASON`).

Usage inside a domain::

    key = cache_key(teacher_sha256=..., data_sha256=fingerprint(images, labels),
                    preprocessing={...}, outputs=("logits",))
    cache, stats = load_or_compute(cache_dir, key, lambda: compute_outputs(...))
    loop = DistillationLoop(teacher=cache, adapter=CachedTeacherAdapter(adapter), ...)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from common.errors import ConfigError, DistilleryError
from common.io import atomic_path
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

    def describe(self) -> str:
        what = "hit" if self.hit else "miss (computed)"
        return (
            f"teacher cache {what}: {self.examples:,} examples, {self.size_bytes / 2**20:.1f} MiB, "
            f"{self.seconds:.1f} s ({self.path})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
