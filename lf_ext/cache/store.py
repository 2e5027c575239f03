"""``BackgroundCache``: byte-bounded LRU store of verified background reuse (DESIGN.md §3.4, §7).

Policy. An entry keeps its background unit set B, the pixels of B and an opaque payload. A new
image hits it only if every unit of B is within ``unit_threshold`` (mean absolute difference,
0-255) of the stored pixels, under the same exact context key and grid. Lookup:

1. fingerprint the new image's probe units (outside the lock);
2. under the lock, :class:`~lf_ext.cache.index.ProbeIndex` finds the entries no probe proves wrong
   (exact candidates) and counts the *near* ones (at most ``1 - candidate_match`` of their
   background probes violated);
3. the policy (:class:`~lf_ext.cache.policy.VerificationPolicy`, ``exact`` or ``reuse``) picks which
   exact candidates may serve the request's own split, and their order (closest split first);
4. outside the lock, verify up to ``max_candidates`` of them in that order against the full stored
   pixels; the first that passes is the hit;
5. on a memory miss the disk index is searched the same way, then the Redis index (if any); a disk or
   Redis hit is promoted to memory.

A lookup is a *hit*, a *rejection* (near entries existed but none verified) or a *miss* (none).
After a rejection, :meth:`BackgroundCache.refined_background` gives the request's own background
minus the units that fail verification in the near entries' B (the caller may answer with that split
and insert it).

Insert rules: B must cover ``min_coverage`` of the grid and the entry (payload bytes + B pixels)
must fit ``max_bytes``, else nothing is stored, the skip is counted and None is returned. The
entry id is a digest of (context key, B, pixels of B): inserting an identical background again
replaces the payload of the existing entry (counted as ``replaced``) instead of duplicating it.
Payload tensors are copied on insert and shared (read-only) with every hit.

Disk tier (``disk_dir``): entries evicted from memory are written there; a disk hit moves the
entry back to memory and deletes its file, so each entry lives in exactly one tier. Files are
written and read outside the lock; index changes and file deletions happen under it, so the
directory and the disk index agree whenever no call is in flight. The disk index is rebuilt from
file headers at start-up (one cache per directory). ``disk_max_bytes`` bounds the directory
(oldest file deleted first). A corrupt, truncated or missing file is a miss (counted, file
deleted), never an exception and never a payload. Memory entries are not written at exit.

Redis tier (``redis``, :mod:`lf_ext.cache.redis_tier`): shared by every cache with the same namespace
(replicas of one model). Inserts write through to it; a lookup that misses memory and disk asks its
index for the group (context key, grid), ranks and verifies the candidates exactly as local ones (the
verification always happens here, in the replica that serves) and promotes a hit to memory; the
entry stays in Redis. Candidates the local tiers already tried in the lookup are not fetched again. Redis faults (down, slow,
corrupt bytes) are counted and the request is served locally. :meth:`clear` and :meth:`withheld`
do not touch Redis, and refinement looks at memory entries only.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from lf_ext.cache.codec import CorruptEntryError, EntryRecord
from lf_ext.cache.disk import DiskTier
from lf_ext.cache.entry import (
    CacheEntry,
    CacheHit,
    IndexKey,
    build_entry,
    check_labels,
    check_payload,
    check_units,
    payload_nbytes,
)
from lf_ext.cache.fingerprint import (
    DEFAULT_PROBES,
    fingerprint,
    probe_positions,
    probe_tolerance,
)
from lf_ext.cache.policy import VerificationPolicy
from lf_ext.cache.redis_tier import COUNTERS as REDIS_COUNTERS
from lf_ext.cache.redis_tier import RedisConfig, RedisTier
from lf_ext.cache.tier import Tier
from lf_ext.log import get_logger

COUNTERS = ("lookups", "hits", "misses", "rejections", "verifications", "inserts", "replaced", "promotions", "evictions",
            "skipped_low_coverage", "skipped_too_large", "disk_hits", "disk_misses", "disk_corrupt",
            "disk_missing", "disk_stale", "disk_writes", "disk_write_errors", "disk_evictions", "redis_hits",
            "redis_misses")  # fmt: skip


class BackgroundCache:
    """Thread-safe background cache; see the module docstring for the policy."""

    def __init__(self, max_bytes: int, *, unit_threshold: float = 4.0, min_coverage: float = 0.3,
                 disk_dir: str | Path | None = None, max_candidates: int = 4, candidate_match: float = 0.75,
                 disk_max_bytes: int | None = None, policy: VerificationPolicy | None = None,
                 namespace: str = "", redis: RedisConfig | None = None) -> None:  # fmt: skip
        """``policy`` (or ``unit_threshold`` and ``min_coverage``): what a hit is, see :mod:`lf_ext.cache.policy`;
        ``namespace``: the model key, written into disk entries (entries of another namespace are dropped)
        and into every Redis key; ``redis``: the shared tier, if any."""
        if max_bytes < 0 or max_candidates < 1 or not 0 <= candidate_match <= 1:
            raise ValueError("need max_bytes >= 0, max_candidates >= 1, 0 <= candidate_match <= 1")
        self.policy = policy if policy is not None else VerificationPolicy(float(unit_threshold), float(min_coverage))
        self.max_bytes, self.max_candidates, self.disk_max_bytes = int(max_bytes), max_candidates, disk_max_bytes
        self._probes = DEFAULT_PROBES
        self._lock = threading.Lock()
        tolerance = probe_tolerance(self.policy.unit_threshold)
        self._memory = Tier(tolerance, candidate_match)  # least recently used first
        self._on_disk = Tier(tolerance, candidate_match)  # oldest write first
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._disk = DiskTier(disk_dir, namespace) if disk_dir is not None else None
        if self._disk is not None:
            self._load_disk_index()
        self._remote = RedisTier(redis, namespace) if redis is not None else None
        self._lower_tiers = [search for search, on in ((self._lookup_disk, self._disk), (self._lookup_remote, self._remote))
                             if on is not None]  # fmt: skip

    # ----------------------------------------------------------------- public API
    def lookup(self, context_key: str, units: np.ndarray, own_background: np.ndarray | None = None) -> CacheHit | None:
        """A verified hit for ``units`` (rows, cols, u, u, 3) uint8 under ``context_key``, or None;
        ``own_background`` (rows, cols) bool, the request's own split, lets the policy choose."""
        return self.lookup_outcome(context_key, units, own_background)[0]

    def lookup_outcome(self, context_key: str, units: np.ndarray, own_background: np.ndarray | None = None
                       ) -> tuple[CacheHit | None, str]:  # fmt: skip
        """Like :meth:`lookup`, plus what the lookup was: "hit", "miss" or "rejection" (entries near the
        image existed, and could have served it under the policy, but none verified)."""
        if not isinstance(context_key, str):
            raise TypeError(f"context_key must be a str, got {type(context_key).__name__}")
        units = check_units(units)
        if own_background is not None:
            own_background = check_labels(np.asarray(own_background), units.shape[:2])
        key = (context_key, units.shape[0], units.shape[1], units.shape[2])
        fp = fingerprint(units, self._probes)
        with self._lock:
            candidates, near = self._query(self._memory, key, fp, own_background)
        hit, tried = self._verify(self._choose(candidates, own_background), units, "memory")
        seen = {entry.entry_id for entry in candidates}  # considered already: a lower tier skips them
        for search in self._lower_tiers:
            if hit is not None:
                break
            hit, tier_near, tier_tried = search(key, fp, units, own_background, seen)
            near, tried = near + tier_near, tried + tier_tried
        with self._lock:
            self._count_lookup(hit, near, tried)
        return hit, "hit" if hit is not None else "rejection" if near > 0 else "miss"

    def refined_background(self, context_key: str, units: np.ndarray, own_background: np.ndarray) -> np.ndarray | None:
        """After a rejection: the request's own background minus every unit that fails verification in the
        background set B of a near memory entry (the regions that changed: a clock, a cursor), as
        (rows, cols) bool; None if no entry is near. Only entries of the same scene count: those whose B
        verifies on at least half of its units (a near entry of another scene fails almost everywhere)."""
        units = check_units(units)
        own = check_labels(np.asarray(own_background), units.shape[:2])
        key = (context_key, units.shape[0], units.shape[1], units.shape[2])
        fp = fingerprint(units, self._probes)
        with self._lock:
            entries = self._memory.nearest(key, fp, self.max_candidates)
        changed, same_scene = np.zeros_like(own), False
        for entry in entries:
            verified = entry.verified_units(units, self.policy)
            if verified.sum() * 2 >= entry.background.sum():
                changed |= entry.background & ~verified
                same_scene = True
        return own & ~changed if same_scene else None

    def insert(self, context_key: str, units: np.ndarray, labels: np.ndarray, payload: dict[str, torch.Tensor]) -> str | None:
        """Store ``payload`` for the background (``labels`` False) of ``units``; returns the entry id,
        or None when B covers less than ``min_coverage`` or the entry exceeds ``max_bytes``."""
        units = check_units(units)
        background = ~check_labels(labels, units.shape[:2])
        check_payload(payload)
        nbytes = payload_nbytes(payload) + int(background.sum()) * units[0, 0].nbytes
        skip = "skipped_low_coverage" if not self.policy.admits(background) else "skipped_too_large" if nbytes > self.max_bytes else None
        if skip:
            with self._lock:
                self._counts[skip] += 1
            return None
        entry = build_entry(context_key, units, labels, payload, self._probes)
        self._admit(entry, "inserts")
        if self._remote is not None:
            self._remote.put(entry)  # write through (outside the lock)
        return entry.entry_id

    def stats(self) -> dict[str, int | float]:
        """Counters and sizes. ``lookups == hits + misses + rejections``; ``verifications`` counts
        exact pixel checks; ``disk_hits``/``redis_hits`` are included in ``hits``; ``disk_misses``/
        ``redis_misses`` count lookups that also found nothing on disk / in Redis; ``promotions`` are
        disk or Redis hits moved into memory; ``bytes``/``disk_bytes`` are the payload + B-pixel bytes in
        memory / the file sizes on disk. The ``redis_*`` counters of faults and writes and ``redis_bytes``
        (the namespace's bytes in Redis, as last reported) are described in :mod:`lf_ext.cache.redis_tier`."""
        remote = self._remote.stats() if self._remote is not None else dict.fromkeys((*REDIS_COUNTERS, "redis_bytes", "redis_up"), 0)
        with self._lock:
            out: dict[str, int | float] = dict(self._counts, **remote)
            out.update(entries=len(self._memory), bytes=self._memory.nbytes, max_bytes=self.max_bytes,
                       disk_entries=len(self._on_disk), disk_bytes=self._on_disk.nbytes)  # fmt: skip
        out["hit_rate"] = out["hits"] / out["lookups"] if out["lookups"] else 0.0
        return out

    def clear(self) -> None:
        """Drop every entry, in memory and on disk (not in Redis: other replicas share it); counters are kept."""
        with self._lock:
            self._memory.clear()
            for record in self._on_disk.clear():
                self._disk.remove(record.entry_id)

    @contextmanager
    def withheld(self, entry_ids: Iterable[str]) -> Iterator[None]:
        """Take entries out of memory for the duration of a block (leave-one-out evaluation), then put
        them back; not counted as evictions or inserts."""
        with self._lock:
            taken = [entry for entry in (self._memory.pop(i) for i in set(entry_ids)) if entry is not None]
        try:
            yield
        finally:
            with self._lock:
                for entry in taken:
                    if entry.entry_id not in self._memory:
                        self._memory.add(entry)

    @property
    def redis(self) -> RedisTier | None:
        """The shared Redis tier, if configured."""
        return self._remote

    def entry_ids(self) -> list[str]:
        """Ids of the entries in memory, least recently used first."""
        with self._lock:
            return list(self._memory.items)

    def __len__(self) -> int:
        """Number of entries in memory (``stats()['disk_entries']`` counts the disk tier)."""
        with self._lock:
            return len(self._memory)

    def __contains__(self, entry_id: str) -> bool:
        with self._lock:
            return entry_id in self._memory

    # ----------------------------------------------------------------- lookup helpers
    def _query(self, tier: Tier, key: IndexKey, fp: np.ndarray, own_background: np.ndarray | None) -> tuple[list, int]:
        """(exact candidates, near count) of ``tier``; under ``exact`` only entries with the own split are near."""
        candidates, near = tier.query(key, fp)
        if self.policy.mode == "exact" and own_background is not None:
            near = len(self.policy.candidates(tier.nearest(key, fp, None), own_background))
        return candidates, near

    def _choose(self, candidates: list, own_background: np.ndarray | None) -> list:
        """The candidates the policy allows, in its order, at most ``max_candidates`` of them."""
        return self.policy.candidates(candidates, own_background)[: self.max_candidates]

    def _verify(self, candidates: list[CacheEntry], units: np.ndarray, source: str) -> tuple[CacheHit | None, int]:
        """First candidate whose every B unit is within the threshold; (hit or None, number tried)."""
        for tried, entry in enumerate(candidates, 1):
            distance = self.policy.distance(entry.units, units, entry.index)
            if distance <= self.policy.unit_threshold:
                return CacheHit(entry.entry_id, entry.background, entry.payload, distance, source), tried
        return None, len(candidates)

    def _lookup_disk(self, key: IndexKey, fp: np.ndarray, units: np.ndarray, own_background: np.ndarray | None,
                     seen: set[str]) -> tuple[CacheHit | None, int, int]:  # fmt: skip
        with self._lock:
            records, near = self._query(self._on_disk, key, fp, own_background)
        seen.update(record.entry_id for record in records)
        return self._fetch_verified(records, near, units, own_background, self._read, "disk")

    def _lookup_remote(self, key: IndexKey, fp: np.ndarray, units: np.ndarray, own_background: np.ndarray | None,
                       seen: set[str]) -> tuple[CacheHit | None, int, int]:  # fmt: skip
        """Search the Redis index of the group, but for the candidates the local tiers considered in this
        lookup (an entry another request promoted meanwhile is not skipped)."""
        tier = Tier(self._memory.tolerance, self._memory.candidate_match)
        for record in self._remote.records(key):
            if record.entry_id not in seen and self._fits(record):
                tier.add(record)
        records, near = self._query(tier, key, fp, own_background)
        return self._fetch_verified(records, near, units, own_background, self._remote.fetch, "redis")

    def _fetch_verified(self, records: list[EntryRecord], near: int, units: np.ndarray, own_background: np.ndarray | None,
                        read, source: str) -> tuple[CacheHit | None, int, int]:  # fmt: skip
        """Read (``read(record)`` -> entry or None) and verify the policy's candidates in order; a hit is
        promoted to memory. Returns (hit or None, near count without unreadable records, number tried)."""
        tried = 0
        for record in self._choose(records, own_background):
            entry = read(record)
            if entry is None:
                near -= 1  # an unreadable entry is no candidate: the lookup may end as a miss
                continue
            hit, n = self._verify([entry], units, source)
            tried += n
            if hit is not None:
                if entry.nbytes <= self.max_bytes:  # promote to memory (this drops a disk copy)
                    self._admit(entry, "promotions")
                return hit, near, tried
        return None, near, tried

    def _read(self, record: EntryRecord) -> CacheEntry | None:
        """The entry of ``record``, or None (counted, and the file removed) if missing or corrupt."""
        try:
            return self._disk.read(record)
        except CorruptEntryError as err:
            counter, reason = "disk_corrupt", err
        except OSError as err:  # FileNotFoundError included
            counter, reason = "disk_missing", err
        with self._lock:
            if self._on_disk.items.get(record.entry_id) is record:  # else another thread moved it meanwhile
                get_logger().warning("background cache: dropping disk entry %s (%s): %s", record.entry_id, counter, reason)
                self._counts[counter] += 1
                self._on_disk.pop(record.entry_id)
                self._disk.remove(record.entry_id)
        return None

    def _count_lookup(self, hit: CacheHit | None, near: int, tried: int) -> None:
        c = self._counts
        c["lookups"] += 1
        c["verifications"] += tried
        if hit is not None:
            c["hits"] += 1
            c["disk_hits"] += hit.source == "disk"
            c["redis_hits"] += hit.source == "redis"
            self._memory.touch(hit.entry_id)
            return
        c["rejections" if near > 0 else "misses"] += 1
        c["disk_misses"] += self._disk is not None
        c["redis_misses"] += self._remote is not None

    # ----------------------------------------------------------------- storage
    def _admit(self, entry: CacheEntry, counter: str) -> None:
        """Add or replace ``entry`` in memory, evict least recently used entries to fit, spill them."""
        evicted = []
        with self._lock:
            replaced = self._memory.add(entry)
            self._counts["replaced" if replaced is not None else counter] += 1
            if self._on_disk.pop(entry.entry_id) is not None:
                self._disk.remove(entry.entry_id)
            while self._memory.nbytes > self.max_bytes:  # never reaches entry: it fits max_bytes alone
                evicted.append(self._memory.pop_oldest())
                self._counts["evictions"] += 1
        self._spill(evicted)

    def _spill(self, evicted: list[CacheEntry]) -> None:
        """Write entries evicted from memory to the disk tier, if there is one (lock not held)."""
        if self._disk is None:
            return
        for entry in evicted:
            try:
                record = self._disk.write(entry)
            except OSError as err:
                get_logger().warning("background cache: cannot write entry %s: %s", entry.entry_id, err)
                with self._lock:
                    self._counts["disk_write_errors"] += 1
                continue
            with self._lock:
                self._counts["disk_writes"] += 1
                if entry.entry_id in self._memory:  # re-inserted while we were writing
                    self._disk.remove(entry.entry_id)
                else:
                    self._on_disk.add(record)
                    self._trim_disk()

    def _trim_disk(self) -> None:
        """Delete the oldest disk entries beyond ``disk_max_bytes`` (lock held)."""
        while self.disk_max_bytes is not None and self._on_disk.nbytes > self.disk_max_bytes:
            self._disk.remove(self._on_disk.pop_oldest().entry_id)
            self._counts["disk_evictions"] += 1

    def _load_disk_index(self) -> None:
        """Index the files already in ``disk_dir``; unreadable headers are counted and deleted."""
        records, corrupt = self._disk.scan()
        for path in corrupt:
            get_logger().warning("background cache: removing unreadable file %s", path)
            self._disk.remove_path(path)
        self._counts["disk_corrupt"] += len(corrupt)
        stale = [record for record in records if record.namespace != self._disk.namespace]
        for record in stale:
            self._disk.remove(record.entry_id)
        if stale:
            get_logger().warning("background cache: dropped %d disk entries written by other weights (model key "
                                 "differs from %s)", len(stale), self._disk.namespace or "''")  # fmt: skip
        self._counts["disk_stale"] += len(stale)
        for record in records:
            if record.namespace != self._disk.namespace:
                continue
            if not self._fits(record):
                self._counts["disk_corrupt"] += 1
                self._disk.remove(record.entry_id)
                continue
            self._on_disk.add(record)
        self._trim_disk()

    def _fits(self, record: EntryRecord) -> bool:
        """Whether a stored record's fingerprint has this cache's probe count for its grid."""
        _, rows, cols, _ = record.key
        return len(record.probes) == len(probe_positions(rows, cols, self._probes)[0])
