"""Redis tier: backgrounds shared by the replicas of one model (``bgobj_cache_redis_*`` keys).

Keys (``NS`` = the cache's namespace, the model key; in a hash tag, so a Redis Cluster keeps a
namespace in one slot; replicas with other weights never see each other's keys)::

    lfx:bg:{NS}:g:<group>  hash    entry id -> the entry's safetensors header: the index of one
                                   (context key, grid) group (probe fingerprint, background set, digests)
    lfx:bg:{NS}:e:<id>     string  the entry (:mod:`lf_ext.cache.codec` bytes), with the TTL if any
    lfx:bg:{NS}:lru        zset    entry id -> last write or fetch (Redis clock, ms): eviction order
    lfx:bg:{NS}:exp        zset    entry id -> expiry deadline (ms), with a TTL
    lfx:bg:{NS}:meta       hash    entry id -> "<bytes>|<group key>"
    lfx:bg:{NS}:bytes      string  bytes of the namespace: every entry's blob + header

Every change is one Lua script, atomic: an insert of an id already present only renews it (two
replicas inserting the same background leave one entry), evicts least recently used entries until
the namespace fits ``max_bytes`` and purges expired ones; a lookup purges expired entries and reads
one group; a fetch reads a blob and refreshes its LRU score; a corrupt or missing blob is dropped
only if it is still what the caller read.

Faults never reach the caller: every call has a socket timeout; an error (refused, reset, timeout,
a Redis error reply) is counted and opens a back-off (doubling from ``backoff_s[0]`` to
``backoff_s[1]``) during which calls are skipped (counted) instead of tried; after it one call
probes Redis, and a success closes it. Corrupt or truncated bytes fail the codec's checks: counted,
dropped from Redis, never served. A caller sees None / False and serves the request locally.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from lf_ext.cache.codec import CorruptEntryError, EntryRecord, decode, encode, header_length, read_header, record_of
from lf_ext.cache.entry import CacheEntry, IndexKey
from lf_ext.log import get_logger

COUNTERS = ("redis_errors", "redis_skipped", "redis_corrupt", "redis_missing", "redis_writes", "redis_present",
            "redis_too_large", "redis_evictions", "redis_expired")  # fmt: skip
FAILED = object()  # a call that did not reach Redis (error or back-off)

_PRELUDE = """
local LRU, EXP, META, BYTES, BLOBS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop(id)
  local meta = redis.call('HGET', META, id)
  if meta then
    local bar = string.find(meta, '|', 1, true)
    redis.call('DECRBY', BYTES, tonumber(string.sub(meta, 1, bar - 1)))
    redis.call('HDEL', string.sub(meta, bar + 1), id)
    redis.call('HDEL', META, id)
  end
  redis.call('DEL', BLOBS .. id)
  redis.call('ZREM', LRU, id)
  redis.call('ZREM', EXP, id)
end
local function purge(now)
  local expired = redis.call('ZRANGEBYSCORE', EXP, '-inf', now)
  for _, id in ipairs(expired) do drop(id) end
  return #expired
end
"""

_SCRIPTS = {
    # KEYS[5] group
    "group": "purge(now_ms())\nreturn redis.call('HGETALL', KEYS[5])",
    # KEYS[5] blob; ARGV[2] id
    "fetch": """
local blob = redis.call('GET', KEYS[5])
if blob then redis.call('ZADD', LRU, 'XX', now_ms(), ARGV[2]) end
return blob""",
    # KEYS[5] group, KEYS[6] blob; ARGV[2] id, [3] header, [4] blob, [5] bytes, [6] max bytes (0: none), [7] ttl ms (0: none)
    "insert": """
local now, id, max, ttl = now_ms(), ARGV[2], tonumber(ARGV[6]), tonumber(ARGV[7])
local expired = purge(now)
local present = redis.call('HEXISTS', META, id) == 1 and redis.call('EXISTS', KEYS[6]) == 1
if not present then
  drop(id)
  redis.call('SET', KEYS[6], ARGV[4])
  redis.call('HSET', KEYS[5], id, ARGV[3])
  redis.call('HSET', META, id, ARGV[5] .. '|' .. KEYS[5])
  redis.call('INCRBY', BYTES, ARGV[5])
end
redis.call('ZADD', LRU, now, id)
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[6], ttl)
  redis.call('ZADD', EXP, now + ttl, id)
end
local total, evicted = tonumber(redis.call('GET', BYTES) or '0'), 0
while max > 0 and total > max do
  local oldest = redis.call('ZRANGE', LRU, 0, 0)[1]
  if not oldest or oldest == id then break end
  drop(oldest)
  evicted = evicted + 1
  total = tonumber(redis.call('GET', BYTES) or '0')
end
return {present and 0 or 1, total, evicted, expired}""",
    # KEYS[5] blob, KEYS[6] group; ARGV[2] id, [3] 'blob' or 'index', [4] sha1 of what was read ('' = missing)
    "drop_if": """
local current
if ARGV[3] == 'blob' then current = redis.call('GET', KEYS[5]) else current = redis.call('HGET', KEYS[6], ARGV[2]) end
if (current and redis.sha1hex(current) or '') ~= ARGV[4] then return 0 end
drop(ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
return 1""",
}


@dataclass(frozen=True)
class RedisConfig:
    """Where the shared tier lives and how it is bounded (see the ``bgobj_cache_redis_*`` keys)."""

    url: str
    max_bytes: int = 0  # 0: unbounded
    ttl_s: float = 0.0  # 0: entries never expire
    timeout_s: float = 0.25  # socket timeout of every call
    backoff_s: tuple[float, float] = (0.25, 5.0)  # first and longest pause after an error


def redacted(url: str) -> str:
    """``url`` without its password (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _sha1(data: bytes | None) -> str:
    return hashlib.sha1(data).hexdigest() if data is not None else ""


class RedisTier:
    """The Redis keys of one namespace; thread-safe. Every method returns instead of raising on a fault."""

    def __init__(self, config: RedisConfig, namespace: str = "") -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as err:
            raise ImportError("bgobj_cache_redis_url needs the 'redis' package (pip install redis)") from err
        self.config, self.namespace = config, namespace
        self._errors = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(config.url, socket_timeout=config.timeout_s, retry=Retry(NoBackoff(), 0),
                                            socket_connect_timeout=config.timeout_s)  # fmt: skip
        self._base = f"lfx:bg:{{{namespace}}}"
        self._common = [f"{self._base}:{name}" for name in ("lru", "exp", "meta", "bytes")]
        self._scripts = {name: self._client.register_script(_PRELUDE + body) for name, body in _SCRIPTS.items()}
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._bytes = 0  # the namespace's bytes, as last reported by Redis
        self._failures, self._retry_at, self._probing = 0, 0.0, False

    # ----------------------------------------------------------------- keys
    def group_key(self, key: IndexKey) -> str:
        return f"{self._base}:g:{hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:32]}"

    def blob_key(self, entry_id: str) -> str:
        return f"{self._base}:e:{entry_id}"

    # ----------------------------------------------------------------- operations
    def records(self, key: IndexKey) -> list[EntryRecord]:
        """Index records of the group ``key`` ([] when Redis is unavailable); corrupt ones are dropped."""
        group = self.group_key(key)
        raw = self._call(lambda: self._script("group", [group]))
        if raw is FAILED:
            return []
        records = []
        for entry_id, header in zip(raw[::2], raw[1::2]):
            try:
                record = record_of(read_header(header), len(header))
                if (record.entry_id.encode(), record.key, record.namespace) != (entry_id, key, self.namespace):
                    raise CorruptEntryError("index record of another entry")
            except CorruptEntryError as err:
                self._drop_corrupt(entry_id, group, "index", header, err)
                continue
            records.append(record)
        return records

    def fetch(self, record: EntryRecord) -> CacheEntry | None:
        """The checked entry of ``record``, or None (unavailable, missing or corrupt: counted)."""
        blob = self.blob_key(record.entry_id)
        data = self._call(lambda: self._script("fetch", [blob], record.entry_id))
        if data is FAILED:
            return None
        if data is None:
            self._count("redis_missing")
            self._call(lambda: self._script("drop_if", [blob, self.group_key(record.key)], record.entry_id, "blob", ""))
            return None
        try:
            return decode(data, record)
        except CorruptEntryError as err:
            self._drop_corrupt(record.entry_id, self.group_key(record.key), "blob", data, err)
            return None

    def put(self, entry: CacheEntry) -> bool:
        """Write ``entry`` through to Redis (or renew it if present); False if it did not reach Redis."""
        if not self._available():  # skip the encoding too
            self._count("redis_skipped")
            return False
        data = encode(entry, self.namespace)
        header = data[: header_length(data)]
        size = len(data) + len(header)
        if self.config.max_bytes and size > self.config.max_bytes:
            self._count("redis_too_large")
            return False
        args = (entry.entry_id, header, data, size, self.config.max_bytes, int(self.config.ttl_s * 1000))
        result = self._call(lambda: self._script("insert", [self.group_key(entry.key), self.blob_key(entry.entry_id)], *args))
        if result is FAILED:
            return False
        written, total, evicted, expired = (int(v) for v in result)
        with self._lock:
            self._counts["redis_writes" if written else "redis_present"] += 1
            self._counts["redis_evictions"] += evicted
            self._counts["redis_expired"] += expired
            self._bytes = total
        return True

    def usage(self) -> dict[str, int] | None:
        """Entries and bytes of the namespace in Redis (None when unavailable)."""

        def read():
            with self._client.pipeline(transaction=False) as pipe:
                return pipe.zcard(self._common[0]).get(self._common[3]).execute()

        found = self._call(read)
        return None if found is FAILED else {"entries": int(found[0]), "bytes": int(found[1] or 0)}

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts, redis_bytes=self._bytes, redis_up=int(self._failures == 0))

    # ----------------------------------------------------------------- plumbing
    def _script(self, name: str, keys: list[str], *args):
        return self._scripts[name](keys=self._common + keys, args=[f"{self._base}:e:", *args])

    def _drop_corrupt(self, entry_id: str | bytes, group: str, where: str, data: bytes, err: Exception) -> None:
        """Count and delete an entry whose bytes (``where``: "blob" or "index") failed their checks; the
        raw id (any bytes an index field holds) is what the script deletes."""
        name = entry_id.decode(errors="replace") if isinstance(entry_id, bytes) else entry_id
        get_logger().warning("background cache: dropping corrupt Redis entry %s (%s): %s", name, where, err)
        self._count("redis_corrupt")
        self._call(lambda: self._script("drop_if", [self.blob_key(name), group], entry_id, where, _sha1(data)))

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _call(self, fn):
        """``fn()``, or FAILED when Redis is backing off or the call fails (both counted)."""
        if not self._admit():
            self._count("redis_skipped")
            return FAILED
        try:
            result = fn()
        except self._errors as err:
            self._failed(err)
            return FAILED
        with self._lock:
            recovered, self._failures, self._probing = self._failures > 0, 0, False
        if recovered:
            get_logger().info("background cache: Redis at %s is back", redacted(self.config.url))
        return result

    def _available(self) -> bool:
        """Whether a call would be let through now (no state change)."""
        with self._lock:
            return self._failures == 0 or (not self._probing and time.monotonic() >= self._retry_at)

    def _admit(self) -> bool:
        """Whether a call may go to Redis now: always when healthy; after an error, one probe per back-off."""
        with self._lock:
            if self._failures == 0:
                return True
            if self._probing or time.monotonic() < self._retry_at:
                return False
            self._probing = True  # the others skip while this call probes
            return True

    def _failed(self, err: Exception) -> None:
        with self._lock:
            self._counts["redis_errors"] += 1
            if self._failures and not self._probing:
                return  # a call already in flight when an earlier one failed: no extra doubling
            self._failures, self._probing = self._failures + 1, False
            self._retry_at = time.monotonic() + self._backoff()
            first = self._failures == 1
        if first:
            get_logger().warning("background cache: Redis at %s unavailable (%s: %s); serving locally, retrying with "
                                 "back-off up to %.0f s", redacted(self.config.url), type(err).__name__, err,
                                 self.config.backoff_s[1])  # fmt: skip

    def _backoff(self) -> float:
        low, high = self.config.backoff_s
        return min(high, low * 2 ** max(0, self._failures - 1))
