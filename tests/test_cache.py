"""Teacher-output cache: correct lookups, hits on reuse, invalidation by weights/data/settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from common.cache import (
    CachedTeacherAdapter,
    CacheError,
    TeacherOutputCache,
    cache_key,
    compute_outputs,
    fingerprint,
    key_digest,
    load_or_compute,
    load_or_compute_parts,
)
from common.errors import ConfigError
from common.io import save_model_atomic, sha256_file


class Tapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        return {"hidden": h, "logits": self.head(h)}


def forward(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    return model(batch["x"])


def batches(x: torch.Tensor, size: int = 4):
    for start in range(0, len(x), size):
        idx = torch.arange(start, min(start + size, len(x)))
        yield {"x": x[idx], "index": idx}


def build(tmp_path: Path, teacher: nn.Module, x: torch.Tensor, calls: list[int], **pre):
    weights = tmp_path / "teacher.safetensors"
    save_model_atomic(teacher, weights)
    key = cache_key(
        teacher_sha256=sha256_file(weights),
        data_sha256=fingerprint(x),
        preprocessing={"scale": 1.0, **pre},
        outputs=("logits", "hidden"),
    )

    def compute():
        calls.append(1)
        return compute_outputs(
            teacher, forward, batches(x), len(x), ["logits", "hidden"], progress=False
        )

    return load_or_compute(tmp_path / "cache", key, compute)


def test_lookup_matches_the_live_teacher_and_a_second_load_is_a_hit(tmp_path):
    torch.manual_seed(0)
    teacher, x = Tapped(), torch.randn(10, 6)
    calls: list[int] = []
    cache, stats = build(tmp_path, teacher, x, calls)
    assert not stats.hit and calls == [1] and stats.examples == 10
    idx = torch.tensor([7, 2, 2, 9])
    with torch.no_grad():
        live = teacher(x[idx])
    got = cache.lookup(idx)
    # The cache was computed in batches of 4 rows, the live pass on these 4 rows: BLAS
    # kernels may sum in another order for another batch shape (CI's CPU did), so equal
    # to float32 rounding, not bit for bit. A wrong row would be off by ~0.1.
    for k in ("logits", "hidden"):
        torch.testing.assert_close(got[k], live[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got["logits"][0], got["logits"][1]), "rows 7 and 2 differ"
    assert cache.hits == 1

    again, stats2 = build(tmp_path, teacher, x, calls)
    assert stats2.hit and calls == [1], "same teacher, data and settings: no recomputation"
    assert torch.equal(again.get("logits"), cache.get("logits"))
    assert "hit" in stats2.describe()


def test_a_cache_in_parts_computes_only_a_new_part_and_serves_the_rows_in_order(tmp_path):
    torch.manual_seed(0)
    teacher, x = Tapped(), torch.randn(12, 6)
    blocks, calls = [x[:7], x[7:10], x[10:]], []

    def part(block: torch.Tensor):
        key = cache_key(
            teacher_sha256="t", data_sha256=fingerprint(block), preprocessing={}, outputs=["logits"]
        )

        def compute():
            calls.append(len(block))
            return compute_outputs(
                teacher, forward, batches(block), len(block), ["logits"], progress=False
            )

        return key, compute

    one, stats = load_or_compute_parts(tmp_path, [part(blocks[0])])
    assert calls == [7] and not stats.parts  # one part: a plain cache file
    _, stats = load_or_compute_parts(tmp_path, [part(b) for b in blocks[:2]])
    assert calls == [7, 3] and [p["hit"] for p in stats.parts] == [True, False]
    three, stats = load_or_compute_parts(tmp_path, [part(b) for b in blocks])
    assert calls == [7, 3, 2] and [p["hit"] for p in stats.parts] == [True, True, False]
    assert not stats.hit and stats.examples == 12 and "3 files, 1 computed" in stats.describe()
    assert stats.size_bytes == sum(p["size_bytes"] for p in stats.parts)
    with torch.no_grad():
        live = teacher(x)["logits"]
    torch.testing.assert_close(three.lookup(torch.arange(12))["logits"], live)
    assert torch.equal(three.get("logits")[:7], one.get("logits"))
    _, again = load_or_compute_parts(tmp_path, [part(b) for b in blocks])
    assert again.hit and calls == [7, 3, 2]
    with pytest.raises(ConfigError, match="at least one"):
        load_or_compute_parts(tmp_path, [])


@pytest.mark.parametrize("change", ["weights", "data", "preprocessing"])
def test_any_change_invalidates_the_cache(tmp_path, change):
    torch.manual_seed(0)
    teacher, x = Tapped(), torch.randn(10, 6)
    calls: list[int] = []
    first, _ = build(tmp_path, teacher, x, calls)
    pre = {}
    if change == "weights":
        with torch.no_grad():
            teacher.head.bias.add_(1.0)
    elif change == "data":
        x = x.clone()
        x[3, 0] += 1e-3
    else:
        pre = {"scale": 2.0}
    second, stats = build(tmp_path, teacher, x, calls, **pre)
    assert not stats.hit and calls == [1, 1]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    if change != "preprocessing":
        assert not torch.equal(first.get("logits"), second.get("logits"))


def test_key_digest_depends_on_every_field():
    base = dict(teacher_sha256="a", data_sha256="b", preprocessing={"m": 1}, outputs=["logits"])
    digests = {key_digest(cache_key(**base))}
    for field, value in [
        ("teacher_sha256", "a2"),
        ("data_sha256", "b2"),
        ("preprocessing", {"m": 2}),
        ("outputs", ["logits", "layer1"]),
    ]:
        digests.add(key_digest(cache_key(**{**base, field: value})))
    assert len(digests) == 5
    # Output order does not matter: the same outputs share one file.
    assert key_digest(cache_key(**{**base, "outputs": ["b", "a"]})) == key_digest(
        cache_key(**{**base, "outputs": ["a", "b"]})
    )


def test_fingerprint_sees_values_dtype_and_shape():
    x = torch.arange(6, dtype=torch.uint8)
    assert fingerprint(x) == fingerprint(x.clone())
    assert fingerprint(x) != fingerprint(x.to(torch.int16))
    assert fingerprint(x) != fingerprint(x.view(2, 3))
    y = x.clone()
    y[5] = 0
    assert fingerprint(x) != fingerprint(y)


def test_out_of_range_index_and_partial_coverage_are_clear_errors():
    cache = TeacherOutputCache({"logits": torch.zeros(4, 3)})
    with pytest.raises(CacheError, match="outside the cached transfer set of 4"):
        cache.lookup(torch.tensor([1, 4]))
    teacher, x = Tapped(), torch.randn(10, 6)
    partial = (b for i, b in enumerate(batches(x)) if i < 2)
    with pytest.raises(CacheError, match="covered 8 of 10"):
        compute_outputs(teacher, forward, partial, 10, ["logits"], progress=False)
    with pytest.raises(ConfigError, match="no output"):
        compute_outputs(teacher, forward, batches(x), 10, ["layer9"], progress=False)


def test_a_file_written_for_other_settings_is_refused(tmp_path):
    teacher, x = Tapped(), torch.randn(10, 6)
    _, stats = build(tmp_path, teacher, x, [])
    key = cache_key(teacher_sha256="other", data_sha256="d", preprocessing={}, outputs=["logits"])
    # A hand-copied file under the other key's name: the stored key inside it disagrees.
    Path(stats.path).rename(tmp_path / "cache" / f"{key_digest(key)}.safetensors")
    with pytest.raises(CacheError, match="other settings"):
        load_or_compute(tmp_path / "cache", key, lambda: {})


def test_float16_storage_and_the_adapter():
    teacher, x = Tapped(), torch.randn(10, 6)
    out = compute_outputs(
        teacher, forward, batches(x), 10, ["logits", "hidden"], {"hidden": torch.float16}, False
    )
    assert out["hidden"].dtype == torch.float16 and out["logits"].dtype == torch.float32
    cache = TeacherOutputCache(out)
    adapter = CachedTeacherAdapter(type("A", (), {"student": lambda self, m, b: m(b["x"])})())
    batch = {"x": x[:3], "index": torch.arange(3)}
    got = adapter.teacher(cache, batch)
    assert got["hidden"].dtype == torch.float32  # losses get float32 whatever the storage
    assert torch.allclose(got["hidden"], teacher(x[:3])["hidden"], atol=1e-2)
    assert set(adapter.student(teacher, batch)) == {"hidden", "logits"}
    with pytest.raises(ConfigError, match="TeacherOutputCache"):
        adapter.teacher(teacher, batch)
    with pytest.raises(ConfigError, match="index"):
        adapter.teacher(cache, {"x": x[:3]})


# --------------------------------------------------------------------------- augmented views


def view_outputs(x: torch.Tensor, views: int):
    """A stand-in teacher on views: view v of example i is x[i] * (v + 1)."""
    teacher = Tapped().eval()

    def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
        rows = x[start:stop, None, :] * torch.arange(1, views + 1)[None, :, None].float()
        with torch.no_grad():
            return {"logits": teacher(rows.reshape(-1, 6))["logits"].view(stop - start, views, 3)}

    return teacher, compute


def test_view_cache_is_chunked_resumable_and_memory_mapped(tmp_path):
    import numpy as np
    from safetensors import safe_open

    from common.cache import ViewCacheAdapter, ViewOutputCache, load_or_build_views

    torch.manual_seed(0)
    x, views = torch.randn(10, 6), 3
    teacher, compute = view_outputs(x, views)
    key = cache_key(
        teacher_sha256="t",
        data_sha256=fingerprint(x),
        preprocessing={"views": 3},
        outputs=["logits"],
    )
    specs = {"logits": ((3,), torch.float32)}
    calls: list[tuple[int, int]] = []

    def killed_after_two_chunks(start: int, stop: int):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the build is killed mid-way
        calls.append((start, stop))
        return compute(start, stop)

    build = lambda fn: load_or_build_views(  # noqa: E731
        tmp_path, key, examples=10, views=views, specs=specs, compute=fn, chunk=4, progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        build(killed_after_two_chunks)
    final = tmp_path / f"{key_digest(key)}.safetensors"
    assert not final.exists(), "a half-built cache never sits under its final name"

    def counted(start: int, stop: int):
        calls.append((start, stop))
        return compute(start, stop)

    cache, stats = build(counted)
    assert calls == [(0, 4), (4, 8), (8, 10)], "the rebuild resumes at the first unfinished chunk"
    assert not stats.hit and stats.resumed_rows == 8 and stats.views == 3
    assert stats.peak_rss_mib > 0 and stats.size_bytes == final.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name], "no partial files left"
    assert isinstance(cache, ViewOutputCache) and isinstance(cache.arrays["logits"], np.memmap)
    with safe_open(str(final), framework="pt") as f:  # a valid safetensors file
        stored = f.get_tensor("logits")
    assert stored.shape == (10, 3, 3)
    torch.testing.assert_close(stored, compute(0, 10)["logits"])  # other batch sizes: last bits

    index, view = torch.tensor([9, 0, 4, 4]), torch.tensor([2, 0, 1, 2])
    got = ViewCacheAdapter(None).teacher(cache, {"index": index, "view": view})
    with torch.no_grad():
        live = teacher(x[index] * (view[:, None] + 1).float())["logits"]
    torch.testing.assert_close(got["logits"], live)
    assert cache.hits == 1

    again, stats2 = build(lambda a, b: pytest.fail("a hit must not recompute"))
    assert stats2.hit and "hit" in stats2.describe() and "3 views" in stats2.describe()
    with pytest.raises(ConfigError, match="batch\\['view'\\]"):
        ViewCacheAdapter(None).teacher(again, {"index": index})
    with pytest.raises(CacheError, match="outside the cached 10 examples x 3 views"):
        again.lookup(torch.tensor([1]), torch.tensor([3]))
    other = cache_key(teacher_sha256="t", data_sha256="d", preprocessing={}, outputs=["logits"])
    final.rename(tmp_path / f"{key_digest(other)}.safetensors")  # a hand-copied file
    with pytest.raises(CacheError, match="other settings"):
        load_or_build_views(
            tmp_path, other, examples=10, views=3, specs=specs, compute=compute, progress=False
        )
