"""The Redis tier: backgrounds shared by replicas (two BackgroundCaches = two replicas), bounds, and faults.

Each test starts its own redis-server on 127.0.0.1 (free port, temporary folder, no persistence).
"""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch
from test_cache_store import KEY, assert_same_payload, object_labels, payload_for, probe_mask, texture

from lf_ext.cache import BackgroundCache
from lf_ext.cache.redis_tier import RedisConfig

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (apt-get install redis-server; scripts/setup.sh does it as root)")  # fmt: skip

NS = "model-a"
FAST = dict(timeout_s=0.2, backoff_s=(0.05, 0.2))  # quick back-off so reconnection is testable in seconds


@pytest.fixture
def redis_server():
    from lf_ext.bench.servers import RedisServer

    with RedisServer() as server:
        yield server


BYTES_KEY, LRU_KEY = f"lfx:bg:{{{NS}}}:bytes", f"lfx:bg:{{{NS}}}:lru"


def replica(url: str, namespace: str = NS, **redis) -> BackgroundCache:
    """One replica's cache: empty memory, the shared Redis tier."""
    return BackgroundCache(1 << 24, namespace=namespace, redis=RedisConfig(url, **{**FAST, **redis}))


def redis_stats(cache: BackgroundCache) -> dict:
    return {k: v for k, v in cache.stats().items() if k.startswith("redis_")}


def namespace_keys(server, namespace: str = NS) -> list[bytes]:
    return sorted(server.client().keys(f"lfx:bg:{{{namespace}}}:*"))


# ----------------------------------------------------------------------------- sharing
def test_entry_inserted_by_one_replica_is_a_verified_hit_in_another(redis_server):
    a, b = replica(redis_server.url), replica(redis_server.url)
    units, labels = texture(0), object_labels()
    entry_id = a.insert(KEY, units, labels, payload_for(7))
    assert redis_stats(a)["redis_writes"] == 1 and len(b) == 0
    query = units.copy()
    query[labels] = 255 - query[labels]  # another object in the entry's object units
    hit = b.lookup(KEY, query)
    assert hit is not None and hit.source == "redis" and hit.entry_id == entry_id and hit.max_unit_distance == 0.0
    assert_same_payload(hit.payload, payload_for(7))
    assert np.array_equal(hit.background, ~labels)
    assert entry_id in b and b.lookup(KEY, units).source == "memory"  # promoted
    stats = b.stats()
    assert (stats["hits"], stats["redis_hits"], stats["promotions"], stats["redis_misses"]) == (2, 1, 1, 0)

    c = replica(redis_server.url)  # verification happens in the serving replica, per unit
    changed = units.copy()
    r, col = np.argwhere(~probe_mask() & ~labels)[0]  # a unit no probe sees
    changed[r, col] += np.uint8(16)
    hit, kind = c.lookup_outcome(KEY, changed)
    assert hit is None and kind == "rejection" and c.stats()["verifications"] == 1 and len(c) == 0


def test_entry_promoted_by_a_concurrent_request_still_hits(redis_server, monkeypatch):
    """Between a lookup's memory search and its Redis search, another request promotes the entry into
    memory: the lookup still hits (it skips only the candidates it already tried)."""
    a, b = replica(redis_server.url), replica(redis_server.url)
    units = texture(15)
    a.insert(KEY, units, object_labels(), payload_for(15))
    records, concurrent = b.redis.records, []

    def promoted_meanwhile(key):
        if not concurrent:
            concurrent.append(None)
            concurrent[0] = b.lookup(KEY, units)  # the other request: a Redis hit, promoted
        return records(key)

    monkeypatch.setattr(b.redis, "records", promoted_meanwhile)
    hit = b.lookup(KEY, units)
    assert concurrent[0].source == "redis" and hit is not None and hit.source == "redis"
    assert b.stats()["hits"] == 2 and len(b) == 1


def test_keys_never_mix_across_namespaces_contexts_or_grids(redis_server):
    a = replica(redis_server.url)
    units, labels = texture(1), object_labels()
    a.insert(KEY, units, labels, payload_for(1))
    other_weights = replica(redis_server.url, namespace="model-b")
    assert other_weights.lookup(KEY, units) is None
    b = replica(redis_server.url)
    assert b.lookup(KEY + "|other-text", units) is None
    assert b.lookup(KEY, units[:, :-1].copy()) is None  # same key string, other grid
    assert b.stats()["misses"] == 2 and other_weights.stats()["misses"] == 1
    assert all(key.startswith(b"lfx:bg:{model-a}:") for key in redis_server.client().keys("*"))


# ----------------------------------------------------------------------------- bounds
def test_ttl_expires_entries(redis_server):
    a = replica(redis_server.url, ttl_s=0.4)
    units = texture(2)
    a.insert(KEY, units, object_labels(), payload_for(2))
    assert replica(redis_server.url).lookup(KEY, units).source == "redis"
    time.sleep(0.6)
    late = replica(redis_server.url)
    assert late.lookup(KEY, units) is None and late.stats()["misses"] == 1
    assert namespace_keys(redis_server) == [BYTES_KEY.encode()]  # blob expired; index and LRU purged by the lookup
    assert redis_server.client().get(BYTES_KEY) == b"0"


def test_byte_bound_evicts_least_recently_used(redis_server):
    probe = replica(redis_server.url, namespace="probe")
    probe.insert(KEY, texture(31), object_labels(), payload_for(0))
    size = probe.redis.usage()["bytes"]  # entries of this shape differ by a few bytes of metadata
    a = replica(redis_server.url, max_bytes=2 * size + size // 2)
    ids = [a.insert(KEY, texture(31 + i), object_labels(), payload_for(i)) for i in range(2)]
    time.sleep(0.01)
    assert replica(redis_server.url).lookup(KEY, texture(31)).entry_id == ids[0]  # a fetch refreshes ids[0]
    ids.append(a.insert(KEY, texture(33), object_labels(), payload_for(2)))  # evicts ids[1], the least recently used
    usage = a.redis.usage()
    assert usage["entries"] == 2 and usage["bytes"] == redis_stats(a)["redis_bytes"] <= a.redis.config.max_bytes
    assert redis_stats(a)["redis_evictions"] == 1
    fresh = replica(redis_server.url)
    assert fresh.lookup(KEY, texture(32)) is None
    assert [fresh.lookup(KEY, texture(t)).entry_id for t in (31, 33)] == [ids[0], ids[2]]
    assert redis_server.client().exists(a.redis.blob_key(ids[1])) == 0


# ----------------------------------------------------------------------------- concurrency
def test_concurrent_inserts_of_one_background_leave_one_entry(redis_server):
    caches = [replica(redis_server.url) for _ in range(8)]
    units, labels = texture(3), object_labels()
    start, ids = threading.Barrier(len(caches)), []

    def insert(cache):
        start.wait()
        ids.append(cache.insert(KEY, units, labels, payload_for(3)))

    threads = [threading.Thread(target=insert, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    writes = [redis_stats(c) for c in caches]
    assert sum(s["redis_writes"] for s in writes) == 1 and sum(s["redis_present"] for s in writes) == 7
    tier = caches[0].redis
    usage = tier.usage()
    assert usage["entries"] == 1 and {s["redis_bytes"] for s in writes} == {usage["bytes"]}
    assert redis_server.client().hlen(tier.group_key((KEY, 12, 12, 4))) == 1
    hit = replica(redis_server.url).lookup(KEY, units)
    assert hit is not None and hit.source == "redis"
    assert_same_payload(hit.payload, payload_for(3))


# ----------------------------------------------------------------------------- faults
def _flip_byte(data: bytes) -> bytes:
    data = bytearray(data)
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("damage", [_flip_byte, lambda d: d[: len(d) // 2], lambda d: d[:5], lambda d: b""],
                         ids=["flipped", "truncated", "truncated-to-5-bytes", "empty"])  # fmt: skip
def test_corrupt_or_truncated_blob_is_a_counted_miss_and_removed(redis_server, damage):
    a = replica(redis_server.url)
    units = texture(4)
    entry_id = a.insert(KEY, units, object_labels(), payload_for(4))
    client, blob = redis_server.client(), a.redis.blob_key(entry_id)
    client.set(blob, damage(client.get(blob)))
    b = replica(redis_server.url)
    hit, kind = b.lookup_outcome(KEY, units)
    assert hit is None and kind == "miss"
    stats = redis_stats(b)
    assert (stats["redis_corrupt"], stats["redis_misses"], stats["redis_hits"], stats["redis_errors"]) == (1, 1, 0, 0)
    assert namespace_keys(redis_server) == [BYTES_KEY.encode()] and client.get(BYTES_KEY) == b"0"


def test_corrupt_index_record_and_missing_blob_are_counted_misses(redis_server):
    a = replica(redis_server.url)
    entry_ids = [a.insert(KEY, texture(5 + i), object_labels(), payload_for(i)) for i in range(2)]
    client, group = redis_server.client(), a.redis.group_key((KEY, 12, 12, 4))
    client.hset(group, entry_ids[0], b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    client.hset(group, b"\xff\xfe", b"garbage")  # a field that is no entry id at all
    client.delete(a.redis.blob_key(entry_ids[1]))
    b = replica(redis_server.url)
    assert b.lookup(KEY, texture(5)) is None and b.lookup(KEY, texture(6)) is None
    stats = redis_stats(b)
    assert (stats["redis_corrupt"], stats["redis_missing"], stats["redis_misses"]) == (2, 1, 2)
    assert client.hlen(group) == 0 and client.zcard(LRU_KEY) == 0


def test_redis_down_at_start_serves_locally_without_a_reconnect_storm():
    from lf_ext.bench.servers import RedisServer, free_port

    port = free_port()
    cache = replica(f"redis://127.0.0.1:{port}/0")
    units, labels = texture(6), object_labels()
    assert cache.lookup(KEY, units) is None
    assert cache.insert(KEY, units, labels, payload_for(6)) is not None
    assert cache.lookup(KEY, units).source == "memory"  # local tiers work
    for seed in range(100):
        cache.lookup(KEY, texture(100 + seed))
    stats = redis_stats(cache)
    assert stats["redis_errors"] <= 5 and stats["redis_skipped"] >= 90 and stats["redis_up"] == 0
    with RedisServer(port=port):
        time.sleep(0.25)  # the longest back-off of FAST
        cache.insert(KEY, texture(7), labels, payload_for(7))
        assert redis_stats(cache)["redis_up"] == 1 and redis_stats(cache)["redis_writes"] == 1
        assert replica(f"redis://127.0.0.1:{port}/0").lookup(KEY, texture(7)).source == "redis"


def test_redis_killed_mid_run_then_restarted(redis_server):
    a, b = replica(redis_server.url), replica(redis_server.url)
    a.insert(KEY, texture(8), object_labels(), payload_for(8))
    redis_server.stop()
    assert b.lookup(KEY, texture(8)) is None  # no exception: a miss, served locally
    assert a.insert(KEY, texture(9), object_labels(), payload_for(9)) is not None
    assert b.lookup(KEY, texture(9)) is None
    assert redis_stats(b)["redis_errors"] >= 1 and redis_stats(b)["redis_misses"] == 2
    redis_server.start()  # empty, same port
    time.sleep(0.25)
    a.insert(KEY, texture(10), object_labels(), payload_for(10))
    assert redis_stats(a)["redis_writes"] == 2
    assert b.lookup(KEY, texture(10)).source == "redis" and redis_stats(b)["redis_up"] == 1


def test_slow_redis_does_not_stall_a_request_beyond_the_timeout(redis_server):
    a = replica(redis_server.url)
    a.insert(KEY, texture(11), object_labels(), payload_for(11))
    b = replica(redis_server.url, timeout_s=0.2, backoff_s=(2.0, 2.0))
    redis_server.pause()
    try:
        start = time.perf_counter()
        assert b.lookup(KEY, texture(11)) is None
        b.insert(KEY, texture(12), object_labels(), payload_for(12))
        assert b.lookup(KEY, texture(13)) is None
        elapsed = time.perf_counter() - start
    finally:
        redis_server.resume()
    stats = redis_stats(b)
    assert stats["redis_errors"] == 1 and stats["redis_skipped"] == 2  # one timed-out call, then back-off: the rest skip Redis
    assert elapsed < 1.5  # bounded by the 0.2 s timeout (a paused server without one never answers); loose for a loaded CI machine


# ----------------------------------------------------------------------------- configuration
def test_redis_keys_are_validated_and_wired(redis_server):
    from lf_ext.config import BgObjConfigError, parse_bgobj_args
    from lf_ext.inference.runtime import cache_from_settings

    for url in ("localhost:6379", "http://127.0.0.1/0", "redis://127.0.0.1:notaport/0", "redis://127.0.0.1/db0"):
        with pytest.raises(BgObjConfigError, match="bgobj_cache_redis_url"):
            parse_bgobj_args({"bgobj_cache_redis_url": url})
    with pytest.raises(BgObjConfigError, match="bgobj_cache_redis_timeout_s"):
        parse_bgobj_args({"bgobj_cache_redis_timeout_s": 0})
    keys = parse_bgobj_args({"bgobj_cache_redis_url": redis_server.url, "bgobj_cache_redis_max_mb": "2",
                             "bgobj_cache_redis_ttl_s": "30", "bgobj_cache_redis_timeout_s": "0.5"})  # fmt: skip
    cache = cache_from_settings(keys, namespace=NS)
    assert cache.redis.config == RedisConfig(redis_server.url, 2 << 20, 30.0, 0.5)
    assert cache_from_settings(parse_bgobj_args({}), namespace=NS).redis is None
    cache.insert(KEY, texture(14), object_labels(), payload_for(14))
    assert 0 < redis_server.client().pttl(cache.redis.blob_key(cache.entry_ids()[0])) <= 30_000


# ----------------------------------------------------------------------------- model level
def test_remote_hit_logits_equal_recompute(tiny_dir, tmp_path, redis_server):
    """Replica B serves a background that replica A computed: its logits equal a full forward of B's own
    image with the hit's layout (no cache involved)."""
    from bgobj_helpers import encode, load_for_inference, masked_dataset

    from lf_ext.families import family_of
    from lf_ext.inference.reuse import BackgroundReuse
    from lf_ext.layout import LAYOUT_KEY, ImageLayout

    data = masked_dataset(tmp_path / "data", count=2)
    tokenizer_module, template, model = load_for_inference(tiny_dir("qwen2_vl"), data)
    family = family_of(model)
    pixels = family.pixel_units(tokenizer_module["processor"].image_processor)
    replicas = [BackgroundReuse(model, family, replica(redis_server.url), pixels) for _ in range(2)]

    def inputs(name):
        ids, found = encode(tokenizer_module, template, [str(data / name)])
        return ids, found["pixel_values"], ImageLayout.unpack(found[LAYOUT_KEY])

    first = replicas[0].prefill(*inputs("img0.png"))
    assert first.outcome.kind == "miss" and first.outcome.inserted
    ids, pixel_values, layout = inputs("img1.png")
    hit = replicas[1].prefill(ids, pixel_values, layout)
    assert (hit.outcome.kind, hit.outcome.source, hit.outcome.entry_id) == ("hit", "redis", first.outcome.entry_id)
    positions = family.positions(model, hit.input_ids, hit.layout)
    with torch.no_grad():
        out = model(input_ids=hit.input_ids, pixel_values=pixel_values, bgobj_layout=hit.layout.pack(), position_ids=positions)
    torch.testing.assert_close(hit.logits, out.logits[:, -1].float(), rtol=0, atol=1e-5)
