"""One entry as safetensors bytes (never pickle), integrity-checked: the format of the disk and Redis tiers.

The bytes hold the tensors ``background`` (rows, cols) bool, ``units`` (|B|, u, u, 3) uint8 and
``payload.<name>`` for each payload tensor. Their string metadata holds the format tag, the
namespace (the model key), entry id, context key, grid, the background set and the masked probe
fingerprint (so an index can be built from headers alone), ``header_sha256`` (a digest of that
metadata, checked whenever a header is read) and ``sha256``: a digest of the metadata and of every
tensor's name, dtype, shape and bytes (checked on every decode). Anything that fails to parse or to
match its digest raises :class:`CorruptEntryError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import safetensors.torch
import torch

from lf_ext.cache.entry import CacheEntry, IndexKey, entry_id

FORMAT = "lf_ext.bgcache.v3"  # v3: LLaVA raster positions (v2 prefixes were computed with sequential ones)
META_KEYS = ("format", "namespace", "entry_id", "context_key", "rows", "cols", "unit", "background", "probes", "payload")
DIGESTS = ("header_sha256", "sha256")
MAX_HEADER = 1 << 26


class CorruptEntryError(Exception):
    """Entry bytes that cannot be parsed or fail their integrity check."""


@dataclass(frozen=True)
class EntryRecord:
    """What an index knows about one stored entry (from its header alone)."""

    entry_id: str
    key: IndexKey
    background: np.ndarray  # (rows, cols) bool: the entry's background set (the policy ranks by it)
    probes: np.ndarray  # (P,) int16 masked fingerprint
    nbytes: int  # stored size
    namespace: str = ""


def _header_digest(meta: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps({k: meta[k] for k in META_KEYS}, sort_keys=True).encode()).hexdigest()


def _digest(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(_header_digest(meta).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def encode(entry: CacheEntry, namespace: str) -> bytes:
    """The safetensors bytes of ``entry`` under ``namespace``."""
    rows, cols = entry.background.shape
    tensors = {"background": torch.from_numpy(entry.background.copy()), "units": torch.from_numpy(entry.units.copy())}
    tensors.update({f"payload.{k}": v.detach().cpu().contiguous() for k, v in entry.payload.items()})
    meta = {"format": FORMAT, "namespace": namespace, "entry_id": entry.entry_id, "context_key": entry.context_key,
            "rows": str(rows), "cols": str(cols), "unit": str(entry.units.shape[1]),
            "background": np.packbits(entry.background.reshape(-1)).tobytes().hex(),
            "probes": json.dumps(entry.probes.tolist()), "payload": json.dumps(sorted(entry.payload))}  # fmt: skip
    meta["header_sha256"] = _header_digest(meta)
    meta["sha256"] = _digest(meta, tensors)
    return safetensors.torch.save(tensors, metadata=meta)


def header_length(data: bytes) -> int:
    """Length of the leading length prefix + JSON header of safetensors bytes (may exceed ``data``)."""
    if len(data) < 8:
        raise CorruptEntryError("shorter than the safetensors length prefix")
    size = int.from_bytes(data[:8], "little")
    if size > MAX_HEADER:
        raise CorruptEntryError(f"header length {size} is implausible")
    return 8 + size


def read_header(data: bytes) -> dict[str, str]:
    """The checked ``__metadata__`` dict of safetensors bytes (the header is enough)."""
    end = header_length(data)
    if end > len(data):
        raise CorruptEntryError(f"header length {end - 8} exceeds the data")
    try:
        meta = json.loads(data[8:end]).get("__metadata__")
    except (ValueError, AttributeError) as err:
        raise CorruptEntryError(f"unreadable header: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not all(isinstance(meta.get(k), str) for k in META_KEYS + DIGESTS):
        raise CorruptEntryError("missing or foreign metadata")
    if _header_digest(meta) != meta["header_sha256"]:
        raise CorruptEntryError("header sha256 mismatch")
    return meta


def record_of(meta: dict[str, str], nbytes: int) -> EntryRecord:
    """The index record described by checked metadata."""
    try:
        key = (meta["context_key"], int(meta["rows"]), int(meta["cols"]), int(meta["unit"]))
        probes = np.asarray(json.loads(meta["probes"]), np.int16)
        if min(key[1:]) < 1:
            raise ValueError("empty grid")
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(meta["background"]), np.uint8))
        background = bits[: key[1] * key[2]].astype(bool).reshape(key[1], key[2])
    except (ValueError, TypeError, OverflowError) as err:
        raise CorruptEntryError(f"bad metadata: {err}") from err
    if probes.ndim != 1:
        raise CorruptEntryError("bad probe fingerprint in metadata")
    return EntryRecord(meta["entry_id"], key, background, probes, nbytes, meta["namespace"])


def decode(data: bytes, record: EntryRecord) -> CacheEntry:
    """The entry in ``data``, checked against its digests and against the index ``record`` it was
    found by (id, key, namespace). Raises CorruptEntryError, never anything else."""
    try:
        meta = read_header(data)
        tensors = safetensors.torch.load(data)
        if _digest(meta, tensors) != meta["sha256"]:
            raise CorruptEntryError("sha256 mismatch")
        entry = _entry(meta, tensors)
    except CorruptEntryError:
        raise
    except Exception as err:  # whatever damaged bytes trigger is corruption, never a crash
        raise CorruptEntryError(f"malformed entry: {err}") from err
    if (entry.entry_id, entry.key, meta["namespace"]) != (record.entry_id, record.key, record.namespace):
        raise CorruptEntryError("the bytes hold another entry than the index says")
    return entry


def _entry(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> CacheEntry:
    record = record_of(meta, 0)
    names = json.loads(meta["payload"])
    if set(tensors) != {"background", "units", *(f"payload.{n}" for n in names)}:
        raise CorruptEntryError("tensor names do not match the metadata")
    background, units = tensors["background"].numpy(), tensors["units"].numpy()
    _, rows, cols, unit = record.key
    if background.dtype != bool or background.shape != (rows, cols) or units.shape != (int(background.sum()), unit, unit, 3):
        raise CorruptEntryError("tensor shapes do not match the metadata")
    if entry_id(record.key[0], background, units) != record.entry_id or not np.array_equal(background, record.background):
        raise CorruptEntryError("content does not match the entry id")
    background.setflags(write=False)
    units.setflags(write=False)
    payload = {n: tensors[f"payload.{n}"] for n in names}
    nbytes = units.nbytes + sum(t.numel() * t.element_size() for t in payload.values())
    return CacheEntry(record.entry_id, record.key[0], background, units, record.probes, payload, nbytes)
