"""Cache entries, hits and input validation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lf_ext.cache.fingerprint import fingerprint, masked_fingerprint

if TYPE_CHECKING:
    from lf_ext.cache.policy import VerificationPolicy

IndexKey = tuple[str, int, int, int]  # (context key, rows, cols, unit side)


@dataclass(frozen=True)
class CacheHit:
    """A verified reuse. ``background`` (rows, cols) bool is the entry's unit set B: the caller
    encodes every unit outside B as the object group. Payload tensors are shared with the
    cache: read them, never modify them in place."""

    entry_id: str
    background: np.ndarray
    payload: dict[str, torch.Tensor]
    max_unit_distance: float
    source: str  # "memory", "disk" or "redis"

    @property
    def object_labels(self) -> np.ndarray:
        """(rows, cols) bool, True = unit the caller must encode as object."""
        return ~self.background


@dataclass
class CacheEntry:
    """One stored background: the pixels of its units B and the caller's payload."""

    entry_id: str
    context_key: str
    background: np.ndarray  # (rows, cols) bool, read-only
    units: np.ndarray  # (|B|, u, u, 3) uint8, read-only, B in row-major order
    probes: np.ndarray  # (P,) int16 masked fingerprint
    payload: dict[str, torch.Tensor]
    nbytes: int

    @property
    def index(self) -> np.ndarray:
        """Flat row-major positions of the units of B."""
        return np.flatnonzero(self.background.ravel())

    @property
    def key(self) -> IndexKey:
        rows, cols = self.background.shape
        return self.context_key, rows, cols, self.units.shape[1]

    def verified_units(self, units: np.ndarray, policy: "VerificationPolicy") -> np.ndarray:
        """(rows, cols) bool: the units of B whose pixels in ``units`` pass ``policy``'s per-unit check."""
        verified = np.zeros(self.background.size, bool)
        verified[self.index] = policy.verified(self.units, units, self.index)
        return verified.reshape(self.background.shape)


def check_units(units: np.ndarray) -> np.ndarray:
    """Validate a (rows, cols, u, u, 3) uint8 unit array; returns it C-contiguous."""
    if not isinstance(units, np.ndarray) or units.dtype != np.uint8:
        raise TypeError(f"units must be a uint8 numpy array, got {type(units).__name__} {getattr(units, 'dtype', '')}")
    if units.ndim != 5 or units.shape[2] != units.shape[3] or units.shape[4] != 3 or 0 in units.shape:
        raise ValueError(f"units must have shape (rows, cols, u, u, 3) with no zero sizes, got {units.shape}")
    return np.ascontiguousarray(units)


def payload_nbytes(payload: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in payload.values())


def check_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Validate (rows, cols) bool labels, True = object."""
    labels = np.asarray(labels)
    if labels.dtype != bool or labels.shape != tuple(shape):
        raise ValueError(f"labels must be bool of shape {tuple(shape)} (rows, cols), got {labels.dtype} {labels.shape}")
    return labels


def check_payload(payload: dict[str, torch.Tensor]) -> None:
    """Raise unless ``payload`` is a dict of dense tensors with non-empty string names."""
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict of torch tensors, got {type(payload).__name__}")
    for name, tensor in payload.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"payload keys must be non-empty strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
            raise TypeError(f"payload[{name!r}] must be a dense torch tensor, got {type(tensor).__name__}")


def copy_payload(payload: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous copies, so later in-place edits by the caller cannot reach the cache."""
    return {name: t.detach().clone(memory_format=torch.contiguous_format) for name, t in payload.items()}


def entry_id(context_key: str, background: np.ndarray, bg_units: np.ndarray) -> str:
    """Content id: identical (context key, B, pixels of B) give the same id."""
    key = context_key.encode()
    digest = hashlib.sha256(len(key).to_bytes(8, "little") + key)
    digest.update(np.asarray(background.shape + bg_units.shape, np.int64).tobytes())
    digest.update(np.packbits(background).tobytes())
    digest.update(bg_units.tobytes())
    return digest.hexdigest()[:32]


def build_entry(context_key: str, units: np.ndarray, labels: np.ndarray, payload: dict[str, torch.Tensor],
                probes: int) -> CacheEntry:  # fmt: skip
    """An entry from an image's units and its labels (True = object)."""
    if not isinstance(context_key, str):
        raise TypeError(f"context_key must be a str, got {type(context_key).__name__}")
    units = check_units(units)
    background = ~check_labels(labels, units.shape[:2])
    bg_units = units.reshape(-1, *units.shape[2:])[np.flatnonzero(background.ravel())]
    background.setflags(write=False)
    bg_units.setflags(write=False)
    check_payload(payload)
    stored = copy_payload(payload)
    return CacheEntry(
        entry_id=entry_id(context_key, background, bg_units), context_key=context_key, background=background,
        units=bg_units, probes=masked_fingerprint(fingerprint(units, probes), background, probes), payload=stored,
        nbytes=payload_nbytes(stored) + bg_units.nbytes,
    )  # fmt: skip
