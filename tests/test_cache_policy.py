"""The hit policy (bgobj_cache_policy) and refinement: which entry serves a request, whatever the insertion order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lf_ext.cache import BackgroundCache
from lf_ext.cache.policy import VerificationPolicy

GRID, U = (8, 8), 4
KEY = "model|grid=8x8"


def texture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(16, 240, (*GRID, U, U, 3), dtype=np.uint8)


def labels(*cells: tuple[int, int]) -> np.ndarray:
    """Object labels (rows, cols): True at ``cells``."""
    out = np.zeros(GRID, bool)
    for r, c in cells:
        out[r, c] = True
    return out


def payload(tag: int) -> dict[str, torch.Tensor]:
    return {"bg_tokens": torch.full((2, 2), float(tag))}


FAR = labels(*[(r, c) for r in range(4) for c in range(4)])  # 16 object units
NEAR = labels((0, 0), (0, 1))  # 2 object units
OWN = labels((0, 0))  # the request's own split: 1 object unit


@pytest.mark.parametrize("order", [("far", "near"), ("near", "far")])
def test_reuse_serves_the_closest_split_whatever_the_insertion_order(order):
    """Both entries verify (same pixels); 'reuse' picks the one closest to the request's own split."""
    cache = BackgroundCache(1 << 24, policy=VerificationPolicy(mode="reuse"))
    ids = {name: cache.insert(KEY, texture(), {"far": FAR, "near": NEAR}[name], payload(i)) for i, name in enumerate(order)}
    hit = cache.lookup(KEY, texture(), ~OWN)
    assert hit is not None and hit.entry_id == ids["near"]
    assert cache.lookup(KEY, texture()) is not None  # without the request's split: any verified entry


def test_exact_serves_only_the_requests_own_split():
    cache = BackgroundCache(1 << 24, policy=VerificationPolicy(mode="exact"))
    cache.insert(KEY, texture(), NEAR, payload(1))
    hit, kind = cache.lookup_outcome(KEY, texture(), ~OWN)
    assert hit is None and kind == "miss"  # an entry with another split is not a candidate at all
    own_id = cache.insert(KEY, texture(), OWN, payload(2))
    hit, kind = cache.lookup_outcome(KEY, texture(), ~OWN)
    assert kind == "hit" and hit.entry_id == own_id and np.array_equal(hit.object_labels, OWN)
    changed = texture()
    changed[5, 5] += np.uint8(16)  # a background unit of the own-split entry no longer verifies
    assert cache.lookup_outcome(KEY, changed, ~OWN)[1] == "rejection"


def test_refined_background_is_own_background_minus_what_changed():
    """After a rejection: the request's own background minus the entry's units that failed, not minus
    the entry's object (a unit outside the entry's B that is background in the request stays background);
    an entry of another scene (most of its B fails) teaches nothing."""
    cache = BackgroundCache(1 << 24)
    entry_object = labels((4, 4), (4, 5))
    cache.insert(KEY, texture(), entry_object, payload(1))
    frame = texture()
    frame[0, 7] += np.uint8(30)  # a clock: background in the mask, changes every frame
    frame[2, 2] = 0  # the request's object (its own mask says so)
    own_object = labels((2, 2))
    hit, kind = cache.lookup_outcome(KEY, frame, ~own_object)
    assert hit is None and kind == "rejection"
    refined = cache.refined_background(KEY, frame, ~own_object)
    np.testing.assert_array_equal(~refined, own_object | labels((0, 7)))
    assert refined[4, 4] and refined[4, 5]  # the entry's object units, background in this frame
    other_scene = BackgroundCache(1 << 24)
    other_scene.insert(KEY, texture(), entry_object, payload(1))
    assert other_scene.refined_background(KEY, texture(9), ~own_object) is None


def test_policy_rejects_unknown_modes():
    with pytest.raises(ValueError, match="'reuse' or 'exact'"):
        VerificationPolicy(mode="sometimes")


def test_disk_entries_of_other_weights_are_dropped(tmp_path, caplog):
    """Entries carry the model key; a cache opened under another key drops them at start (logged, counted)."""
    first = BackgroundCache(4096, disk_dir=tmp_path, namespace="weights-a")
    for seed in range(3):
        first.insert(KEY, texture(seed), NEAR, payload(seed))
    assert first.stats()["disk_entries"] >= 1
    on_disk = first.stats()["disk_entries"]
    same = BackgroundCache(4096, disk_dir=tmp_path, namespace="weights-a")
    assert same.stats()["disk_entries"] == on_disk and same.stats()["disk_stale"] == 0
    other = BackgroundCache(4096, disk_dir=tmp_path, namespace="weights-b")
    assert other.stats()["disk_entries"] == 0 and other.stats()["disk_stale"] == on_disk
    assert not list(tmp_path.glob("*.safetensors"))
    assert other.lookup(KEY, texture(0)) is None
