"""Disk tier: one safetensors file per entry (:mod:`lf_ext.cache.codec`), integrity-checked on every read.

File ``bg-<entry_id>.safetensors`` holds one encoded entry. The header digest is checked when the
index is rebuilt at start-up, the full digest on every read. Files are written to a temporary name
and renamed, so a reader never sees half a file from this process.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from lf_ext.cache.codec import CorruptEntryError, EntryRecord, decode, encode, header_length, read_header, record_of
from lf_ext.cache.entry import CacheEntry
from lf_ext.log import get_logger

PREFIX, SUFFIX = "bg-", ".safetensors"


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

    def write(self, entry: CacheEntry) -> EntryRecord:
        """Write ``entry`` atomically; returns its index record."""
        data = encode(entry, self.namespace)
        path = self.path(entry.entry_id)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return EntryRecord(entry.entry_id, entry.key, entry.background, entry.probes, len(data), self.namespace)

    def read(self, record: EntryRecord) -> CacheEntry:
        """Load and check one entry. Raises OSError (e.g. FileNotFoundError) or CorruptEntryError."""
        return decode(self.path(record.entry_id).read_bytes(), record)

    def scan(self) -> tuple[list[EntryRecord], list[Path]]:
        """Records of readable headers (oldest file first), and paths whose header is corrupt
        (not deleted here)."""
        records, corrupt = [], []
        for path in sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"), key=_mtime):
            try:
                with path.open("rb") as fh:
                    head = fh.read(8)
                    meta = read_header(head + fh.read(header_length(head) - 8))
                record = record_of(meta, path.stat().st_size)
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
