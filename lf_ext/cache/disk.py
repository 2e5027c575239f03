"""Disk tier: one safetensors file per entry (never pickle), integrity-checked on every read.

File ``bg-<entry_id>.safetensors`` holds the tensors ``background`` (rows, cols) bool, ``units``
(|B|, u, u, 3) uint8 and ``payload.<name>`` for each payload tensor. Its string metadata holds the
format tag, the namespace (the model key: files written under other weights are dropped at
start-up), entry id, context key, grid, the background set and the masked probe fingerprint (so the
in-memory disk index can be rebuilt from headers alone), ``header_sha256`` (a digest of that
metadata, checked when the index is rebuilt at start-up) and ``sha256``: a digest of the metadata
and of every tensor's name,
dtype, shape and bytes (checked on every read). Files are written to a temporary name and renamed, so a
reader never sees half a file from this process; anything that fails to parse or to match its
digest raises :class:`CorruptEntryError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from lf_ext.cache.entry import CacheEntry, IndexKey, entry_id
from lf_ext.log import get_logger

FORMAT = "lf_ext.bgcache.v2"
PREFIX, SUFFIX = "bg-", ".safetensors"
META_KEYS = ("format", "namespace", "entry_id", "context_key", "rows", "cols", "unit", "background", "probes", "payload")
DIGESTS = ("header_sha256", "sha256")


class CorruptEntryError(Exception):
    """A cache file that cannot be parsed or fails its integrity check."""


@dataclass(frozen=True)
class DiskRecord:
    """What the in-memory disk index knows about one file."""

    entry_id: str
    key: IndexKey
    background: np.ndarray  # (rows, cols) bool: the entry's background set (the policy ranks by it)
    probes: np.ndarray  # (P,) int16 masked fingerprint
    nbytes: int  # file size
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


def _read_header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file's leading bytes."""
    if len(data) < 8:
        raise CorruptEntryError("file shorter than the safetensors length prefix")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8 or size > 1 << 26:
        raise CorruptEntryError(f"header length {size} exceeds the file")
    try:
        meta = json.loads(data[8 : 8 + size]).get("__metadata__")
    except (ValueError, AttributeError) as err:
        raise CorruptEntryError(f"unreadable header: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not all(isinstance(meta.get(k), str) for k in META_KEYS + DIGESTS):
        raise CorruptEntryError("missing or foreign metadata")
    if _header_digest(meta) != meta["header_sha256"]:
        raise CorruptEntryError("header sha256 mismatch")
    return meta


def _record(meta: dict[str, str], nbytes: int) -> DiskRecord:
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
    return DiskRecord(meta["entry_id"], key, background, probes, nbytes, meta["namespace"])


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class DiskTier:
    """Reads and writes entry files under one directory (one cache per directory)."""

    def __init__(self, directory: str | Path, namespace: str = "") -> None:
        self.directory = Path(directory)
        self.namespace = namespace
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, entry_id_: str) -> Path:
        return self.directory / f"{PREFIX}{entry_id_}{SUFFIX}"

    def write(self, entry: CacheEntry) -> DiskRecord:
        """Write ``entry`` atomically; returns its index record."""
        rows, cols = entry.background.shape
        tensors = {"background": torch.from_numpy(entry.background.copy()), "units": torch.from_numpy(entry.units.copy())}
        tensors.update({f"payload.{k}": v.detach().cpu().contiguous() for k, v in entry.payload.items()})
        meta = {"format": FORMAT, "namespace": self.namespace, "entry_id": entry.entry_id, "context_key": entry.context_key,
                "rows": str(rows), "cols": str(cols), "unit": str(entry.units.shape[1]),
                "background": np.packbits(entry.background.reshape(-1)).tobytes().hex(),
                "probes": json.dumps(entry.probes.tolist()), "payload": json.dumps(sorted(entry.payload))}  # fmt: skip
        meta["header_sha256"] = _header_digest(meta)
        meta["sha256"] = _digest(meta, tensors)
        data = safetensors.torch.save(tensors, metadata=meta)
        path = self.path(entry.entry_id)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return DiskRecord(entry.entry_id, entry.key, entry.background, entry.probes, len(data), self.namespace)

    def read(self, record: DiskRecord) -> CacheEntry:
        """Load and check one entry. Raises OSError (e.g. FileNotFoundError) or CorruptEntryError."""
        data = self.path(record.entry_id).read_bytes()
        try:
            entry = self._parse(data)
        except CorruptEntryError:
            raise
        except Exception as err:  # whatever a damaged file triggers is corruption, never a crash
            raise CorruptEntryError(f"malformed file: {err}") from err
        if (entry.entry_id, entry.key) != (record.entry_id, record.key):
            raise CorruptEntryError("file holds a different entry than its name says")
        return entry

    def _parse(self, data: bytes) -> CacheEntry:
        meta = _read_header(data)
        tensors = safetensors.torch.load(data)
        if _digest(meta, tensors) != meta["sha256"]:
            raise CorruptEntryError("sha256 mismatch")
        return self._entry(meta, tensors)

    def _entry(self, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> CacheEntry:
        record = _record(meta, 0)
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

    def scan(self) -> tuple[list[DiskRecord], list[Path]]:
        """Records of readable headers (oldest file first), and paths whose header is corrupt
        (not deleted here)."""
        records, corrupt = [], []
        for path in sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"), key=_mtime):
            try:
                with path.open("rb") as fh:
                    head = fh.read(8)
                    size = int.from_bytes(head, "little") if len(head) == 8 else 0
                    meta = _read_header(head + fh.read(min(size, 1 << 26)))
                record = _record(meta, path.stat().st_size)
                if path.name != f"{PREFIX}{record.entry_id}{SUFFIX}":
                    raise CorruptEntryError("file name does not match its entry id")
                records.append(record)
            except (OSError, CorruptEntryError):
                corrupt.append(path)
        return records, corrupt

    def remove(self, entry_id_: str) -> None:
        self.remove_path(self.path(entry_id_))

    def remove_path(self, path: Path) -> None:
        """Delete ``path`` if present; a failure is logged, never raised."""
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            get_logger().warning("background cache: cannot delete %s: %s", path, err)
