"""BackgroundCache: verified reuse, rejections, LRU by bytes, concurrency and the disk tier."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lf_ext.cache import BackgroundCache, probe_positions

GRID, U = (12, 12), 4  # 144 units, 64 of them probes: some B units are only seen by full verification
UNIT_BYTES = U * U * 3
KEY = "model=tiny|grid=12x12|text=describe"


def texture(seed: int, low: int = 16, high: int = 240) -> np.ndarray:
    """Random-textured unit pixels (rows, cols, u, u, 3) with headroom for +-16 edits."""
    return np.random.default_rng(seed).integers(low, high, (*GRID, U, U, 3), dtype=np.uint8)


def object_labels(top: int = 2, left: int = 2, size: int = 3) -> np.ndarray:
    labels = np.zeros(GRID, bool)
    labels[top : top + size, left : left + size] = True
    return labels


def payload_for(bg_id: int) -> dict[str, torch.Tensor]:
    """Payload tensors that encode the background id, so a wrong serve is detectable."""
    return {"bg_tokens": torch.full((4, 8), float(bg_id)), "kv.0.k": torch.full((2, 3, 5), bg_id, dtype=torch.int64),
            "positions": torch.tensor(bg_id, dtype=torch.int32)}  # fmt: skip


def entry_bytes(labels: np.ndarray, payload: dict[str, torch.Tensor]) -> int:
    return int((~labels).sum()) * UNIT_BYTES + sum(t.numel() * t.element_size() for t in payload.values())


def assert_same_payload(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def probe_mask() -> np.ndarray:
    mask = np.zeros(GRID, bool)
    mask[probe_positions(*GRID)] = True
    return mask


def outcome_counts(cache: BackgroundCache) -> tuple[int, int, int]:
    s = cache.stats()
    return s["hits"], s["misses"], s["rejections"]


# ----------------------------------------------------------------------------- verification policy
def test_identical_background_hits_with_exact_payload():
    cache, units, labels, payload = BackgroundCache(1 << 20), texture(0), object_labels(), payload_for(7)
    entry_id = cache.insert(KEY, units, labels, payload)
    hit = cache.lookup(KEY, units)
    assert hit is not None and hit.entry_id == entry_id and hit.source == "memory"
    assert_same_payload(hit.payload, payload)
    assert np.array_equal(hit.background, ~labels) and np.array_equal(hit.object_labels, labels)
    assert hit.max_unit_distance == 0.0
    assert outcome_counts(cache) == (1, 0, 0)


@pytest.mark.parametrize("probe", [True, False], ids=["probe-unit", "verified-only-unit"])
def test_one_background_unit_over_threshold_is_rejected(probe):
    cache, units, labels = BackgroundCache(1 << 20), texture(1), object_labels()
    cache.insert(KEY, units, labels, payload_for(1))
    r, c = np.argwhere((probe_mask() == probe) & ~labels)[0]
    changed = units.copy()
    changed[r, c] += np.uint8(16)  # MAD 16 > 4, and the mean moves by 16 too
    assert cache.lookup(KEY, changed) is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["rejections"]) == (0, 0, 1)
    assert stats["verifications"] == (0 if probe else 1)  # a probe unit is proven wrong without the pixel check


def test_threshold_is_inclusive_and_exact():
    cache, units, labels = BackgroundCache(1 << 20, unit_threshold=4.0), texture(2), object_labels()
    cache.insert(KEY, units, labels, payload_for(2))
    shifted = units + np.uint8(4)  # every value +4: per-unit MAD exactly 4.0
    hit = cache.lookup(KEY, shifted)
    assert hit is not None and hit.max_unit_distance == pytest.approx(4.0)
    r, c = np.argwhere(~probe_mask() & ~labels)[0]
    shifted[r, c, 0, 0, 0] += 1  # that unit's MAD becomes 4 + 1/48
    assert cache.lookup(KEY, shifted) is None
    assert outcome_counts(cache) == (1, 0, 1)


def test_noise_below_threshold_hits():
    cache, units, labels = BackgroundCache(1 << 20), texture(3), object_labels()
    cache.insert(KEY, units, labels, payload_for(3))
    noise = np.random.default_rng(9).integers(-3, 4, units.shape)
    hit = cache.lookup(KEY, (units + noise).astype(np.uint8))
    assert hit is not None and 0 < hit.max_unit_distance <= 3.0


def test_new_object_inside_background_is_rejected():
    cache, units, labels = BackgroundCache(1 << 20), texture(4), object_labels(top=1, left=1)
    cache.insert(KEY, units, labels, payload_for(4))
    moved = units.copy()
    moved[7:9, 7:10] = 30  # a dark object where the entry had background
    assert cache.lookup(KEY, moved) is None
    assert outcome_counts(cache) == (0, 0, 1)


def test_new_object_inside_entry_object_region_hits():
    cache, units, labels = BackgroundCache(1 << 20), texture(5), object_labels(top=4, left=5, size=4)
    cache.insert(KEY, units, labels, payload_for(5))
    new = units.copy()
    new[5:7, 6:8] = 255 - new[5:7, 6:8]  # a different object, entirely inside the entry's object units
    hit = cache.lookup(KEY, new)
    assert hit is not None and hit.max_unit_distance == 0.0
    assert_same_payload(hit.payload, payload_for(5))


def test_other_context_key_or_grid_misses():
    cache, units, labels = BackgroundCache(1 << 20), texture(6), object_labels()
    cache.insert(KEY, units, labels, payload_for(6))
    assert cache.lookup(KEY + "|other-text", units) is None
    assert cache.lookup(KEY, units[:, :-1].copy()) is None  # same key string, other grid
    assert cache.lookup(KEY, texture(99)) is None  # unrelated background
    assert outcome_counts(cache) == (0, 3, 0)


def test_low_coverage_is_never_inserted():
    cache, units = BackgroundCache(1 << 20, min_coverage=0.5), texture(7)
    labels = np.ones(GRID, bool)
    labels[:5] = False  # background 60 of 144 units = 0.42 < 0.5
    assert cache.insert(KEY, units, labels, payload_for(7)) is None
    assert cache.lookup(KEY, units) is None
    labels[5] = False  # 72 / 144 = 0.5: enough
    assert cache.insert(KEY, units, labels, payload_for(7)) is not None
    stats = cache.stats()
    assert (stats["skipped_low_coverage"], stats["inserts"], stats["entries"], stats["misses"]) == (1, 1, 1, 1)


def test_identical_background_replaces_instead_of_duplicating():
    cache, units, labels = BackgroundCache(1 << 20), texture(8), object_labels()
    first = cache.insert(KEY, units, labels, payload_for(1))
    second = cache.insert(KEY, units, labels, payload_for(2))
    assert first == second and len(cache) == 1
    assert cache.stats()["bytes"] == entry_bytes(labels, payload_for(2))
    assert cache.stats()["replaced"] == 1
    assert_same_payload(cache.lookup(KEY, units).payload, payload_for(2))


def test_payload_is_copied_on_insert():
    cache, units, labels, payload = BackgroundCache(1 << 20), texture(9), object_labels(), payload_for(3)
    cache.insert(KEY, units, labels, payload)
    payload["bg_tokens"].fill_(-1.0)  # the caller reuses its buffer
    assert_same_payload(cache.lookup(KEY, units).payload, payload_for(3))


def test_bad_input_raises_clear_errors():
    cache, units = BackgroundCache(1 << 20), texture(10)
    with pytest.raises(TypeError, match="uint8"):
        cache.lookup(KEY, units.astype(np.float32))
    with pytest.raises(ValueError, match="rows, cols, u, u, 3"):
        cache.lookup(KEY, units[..., :2])
    with pytest.raises(ValueError, match="labels must be bool"):
        cache.insert(KEY, units, np.zeros((3, 3), bool), payload_for(0))
    with pytest.raises(TypeError, match="dense torch tensor"):
        cache.insert(KEY, units, object_labels(), {"x": np.zeros(3)})
    with pytest.raises(ValueError):
        BackgroundCache(-1)


# ----------------------------------------------------------------------------- LRU by bytes
def test_lru_eviction_by_bytes_and_exact_accounting():
    labels = object_labels()
    size = entry_bytes(labels, payload_for(0))
    cache = BackgroundCache(3 * size + size // 2)
    ids = [cache.insert(KEY, texture(20 + i), labels, payload_for(i)) for i in range(3)]
    assert cache.stats()["bytes"] == 3 * size
    assert cache.lookup(KEY, texture(20)).entry_id == ids[0]  # refreshes A: B is now least recently used
    ids.append(cache.insert(KEY, texture(23), labels, payload_for(3)))
    assert cache.entry_ids() == [ids[2], ids[0], ids[3]]
    assert ids[1] not in cache and cache.lookup(KEY, texture(21)) is None
    stats = cache.stats()
    assert (stats["evictions"], stats["entries"], stats["bytes"]) == (1, 3, 3 * size)


def test_entry_larger_than_max_bytes_is_not_stored():
    labels = object_labels()
    cache = BackgroundCache(entry_bytes(labels, payload_for(0)) - 1)
    assert cache.insert(KEY, texture(30), labels, payload_for(0)) is None
    stats = cache.stats()
    assert (stats["skipped_too_large"], stats["entries"], stats["bytes"], stats["evictions"]) == (1, 0, 0, 0)


# ----------------------------------------------------------------------------- concurrency
def _pool(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(texture(100 + i), object_labels(top=i % 8, left=(3 * i) % 8, size=2 + i % 3)) for i in range(n)]


def _request(cache, pool, rng, log) -> None:
    """One random insert or lookup; lookups record (expected bg id or None, hit)."""
    bg = rng.randrange(len(pool))
    units, labels = pool[bg]
    kind = rng.random()
    if kind < 0.35:
        cache.insert(KEY, units, labels, payload_for(bg))
        return
    query, expect = units.copy(), bg
    if kind < 0.6:  # new object in the entry's object region: may hit
        query[labels] = 255 - query[labels]
    elif kind < 0.85:  # one background unit beyond the threshold: must never hit
        r, c = np.argwhere(~labels)[rng.randrange(int((~labels).sum()))]
        query[r, c] = np.where(query[r, c] > 128, query[r, c] - 12, query[r, c] + 12)
        expect = None
    log.append((expect, cache.lookup(KEY, query)))


def _run_threads(cache, pool, threads: int, requests: int) -> list:
    logs, errors = [[] for _ in range(threads)], []

    def work(i: int) -> None:
        rng = random.Random(i)
        try:
            for _ in range(requests):
                _request(cache, pool, rng, logs[i])
        except Exception as err:  # noqa: BLE001 - surfaced by the assert below
            errors.append(err)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return [item for log in logs for item in log]


def _check_consistent(cache, pool, results) -> None:
    stats = cache.stats()
    assert stats["lookups"] == len(results) == stats["hits"] + stats["misses"] + stats["rejections"]
    false_hits = [(e, h.entry_id) for e, h in results if h is not None and e is None]
    assert false_hits == []
    for expect, hit in results:
        if hit is not None:
            assert_same_payload(hit.payload, payload_for(expect))
    sizes = {i: entry_bytes(labels, payload_for(i)) for i, (_, labels) in enumerate(pool)}
    by_id = {BackgroundCache(1 << 30).insert(KEY, u, lab, payload_for(i)): i for i, (u, lab) in enumerate(pool)}
    assert all(hit.entry_id in by_id and by_id[hit.entry_id] == e for e, hit in results if hit is not None)
    assert stats["bytes"] == sum(sizes[by_id[i]] for i in cache.entry_ids()) <= cache.max_bytes
    assert stats["entries"] == len(cache.entry_ids())
    assert stats["hits"] > 0 and stats["rejections"] > 0 and stats["evictions"] > 0


def test_concurrent_mixed_requests_stay_consistent():
    pool = _pool(24)
    cache = BackgroundCache(10 * entry_bytes(pool[0][1], payload_for(0)))
    results = _run_threads(cache, pool, threads=8, requests=1000)
    _check_consistent(cache, pool, results)


def test_concurrent_requests_with_disk_tier_stay_consistent(tmp_path):
    pool = _pool(16)
    cache = BackgroundCache(4 * entry_bytes(pool[0][1], payload_for(0)), disk_dir=tmp_path)
    results = _run_threads(cache, pool, threads=4, requests=250)
    _check_consistent(cache, pool, results)
    stats = cache.stats()
    files = {p.name: p.stat().st_size for p in tmp_path.glob("bg-*.safetensors")}
    assert stats["disk_hits"] > 0 and stats["disk_corrupt"] == stats["disk_missing"] == 0
    assert len(files) == stats["disk_entries"] and sum(files.values()) == stats["disk_bytes"]
    assert not {f"bg-{i}.safetensors" for i in cache.entry_ids()} & set(files)  # one tier per entry


# ----------------------------------------------------------------------------- disk tier
def _spilled(tmp_path: Path, payload: dict | None = None) -> tuple[BackgroundCache, np.ndarray, str, Path]:
    """A cache with room for one entry, holding one in memory and one (returned) on disk."""
    labels, payload = object_labels(), payload or payload_for(40)
    cache = BackgroundCache(entry_bytes(labels, payload), disk_dir=tmp_path)
    first = cache.insert(KEY, texture(40), labels, payload)
    cache.insert(KEY, texture(41), labels, payload_for(41))
    path = tmp_path / f"bg-{first}.safetensors"
    assert first not in cache and path.exists() and cache.stats()["disk_entries"] == 1
    return cache, texture(40), first, path


def test_evicted_entry_hits_from_disk_with_identical_tensors(tmp_path):
    payload = payload_for(40)
    payload.update(bf16=torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), flag=torch.tensor([True, False]),
                   empty=torch.zeros(0, 4, dtype=torch.float16))  # fmt: skip
    cache, units, entry_id, path = _spilled(tmp_path, payload)
    hit = cache.lookup(KEY, units)
    assert hit is not None and hit.source == "disk" and hit.entry_id == entry_id
    assert_same_payload(hit.payload, payload)
    assert np.array_equal(hit.background, ~object_labels())
    stats = cache.stats()
    assert (stats["disk_hits"], stats["hits"], stats["promotions"]) == (1, 1, 1)
    assert entry_id in cache and not path.exists()  # promoted: memory only
    assert cache.lookup(KEY, units).source == "memory"


def test_disk_index_is_rebuilt_on_restart(tmp_path):
    cache, units, entry_id, _ = _spilled(tmp_path)
    reopened = BackgroundCache(cache.max_bytes, disk_dir=tmp_path)
    assert reopened.stats()["disk_entries"] == 1 and len(reopened) == 0
    hit = reopened.lookup(KEY, units)
    assert hit is not None and hit.entry_id == entry_id and hit.source == "disk"
    assert_same_payload(hit.payload, payload_for(40))


def _flip_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + (len(data) - 8 - header) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_header_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b'"context_key"') + 20  # inside the metadata values
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, counter",
    [(_flip_data_byte, "disk_corrupt"), (_flip_header_byte, "disk_corrupt"),
     (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "disk_corrupt"),
     (lambda p: p.write_bytes(p.read_bytes()[:5]), "disk_corrupt"), (lambda p: p.unlink(), "disk_missing")],
    ids=["flipped-data", "flipped-header", "truncated", "truncated-to-5-bytes", "missing"],
)  # fmt: skip
def test_damaged_disk_file_is_a_counted_miss(tmp_path, damage, counter):
    cache, units, _, path = _spilled(tmp_path)
    damage(path)
    assert cache.lookup(KEY, units) is None
    stats = cache.stats()
    assert (stats["misses"], stats["rejections"], stats["hits"], stats[counter]) == (1, 0, 0, 1)
    assert stats["disk_entries"] == 0 and not path.exists()
    assert cache.lookup(KEY, units) is None and cache.stats()[counter] == 1  # dropped from the index


def test_corrupt_files_found_at_startup_are_removed(tmp_path):
    garbage = tmp_path / f"bg-{'0' * 32}.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    cache, units, _, path = _spilled(tmp_path)
    assert cache.stats()["disk_corrupt"] == 1 and not garbage.exists()
    _flip_header_byte(path)  # still valid JSON: only the header digest catches it
    reopened = BackgroundCache(cache.max_bytes, disk_dir=tmp_path)
    assert (reopened.stats()["disk_corrupt"], reopened.stats()["disk_entries"]) == (1, 0) and not path.exists()
    assert reopened.lookup(KEY, units) is None and reopened.stats()["misses"] == 1


def test_disk_tier_is_bounded_by_bytes(tmp_path):
    labels = object_labels()
    size = entry_bytes(labels, payload_for(0))
    probe = BackgroundCache(size, disk_dir=tmp_path / "probe")
    for i in range(2):
        probe.insert(KEY, texture(60 + i), labels, payload_for(i))
    file_bytes = probe.stats()["disk_bytes"]
    cache = BackgroundCache(size, disk_dir=tmp_path / "bounded", disk_max_bytes=2 * file_bytes + file_bytes // 2)
    ids = [cache.insert(KEY, texture(50 + i), labels, payload_for(i)) for i in range(5)]  # spills ids[0..3]
    stats = cache.stats()
    assert (stats["disk_writes"], stats["disk_evictions"], stats["disk_entries"]) == (4, 2, 2)
    assert stats["disk_bytes"] == 2 * file_bytes  # every file of this shape has the same size
    kept = sorted(p.name for p in (tmp_path / "bounded").glob("bg-*.safetensors"))
    assert kept == sorted(f"bg-{i}.safetensors" for i in ids[2:4])  # the oldest files went first


def test_clear_drops_memory_and_disk(tmp_path):
    cache, units, _, _ = _spilled(tmp_path)
    cache.clear()
    stats = cache.stats()
    assert (len(cache), stats["bytes"], stats["disk_entries"], stats["disk_bytes"]) == (0, 0, 0, 0)
    assert list(tmp_path.glob("bg-*")) == [] and cache.lookup(KEY, units) is None
