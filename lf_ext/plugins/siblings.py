"""Training on reused backgrounds (``bgobj_sibling_prob``): serve an image the background of a sibling.

What a cache hit serves at inference. For a new image X and a cached sibling S with background unit
set B_S, the background group is S's encoding of S's own pixels on B_S, and every unit outside B_S is
encoded from X as the object group. The entry is used only if every unit of B_S of X is within
``bgobj_cache_unit_threshold`` (mean absolute difference, 0-255, of the processor's pixels) of S's,
and only backgrounds covering at least ``bgobj_cache_min_coverage`` of the units are cached.

What training does with probability ``bgobj_sibling_prob``: the same thing, exactly. X's
``pixel_values`` rows of the units in B_S are replaced by S's rows (so the composite is S's processed
pixels on B_S and X's elsewhere, at the processor's geometry: no resampling is involved), and X's unit
labels become NOT B_S. B_S is the sibling's background *without X's object units*: the entry a cache
would need to serve X (an entry whose background contains X's object never verifies), and the one
``lf-ext bench accuracy`` forces. Background tokens depend only on background patches (separated encoding), so
the composite's background tokens are S's, bit for bit, and its object tokens are what the hit would
encode from X. A sibling is used only if it passes the cache's verification: same token grid, B_S
non-empty and covering ``bgobj_cache_min_coverage``, and every unit of B_S within the threshold: the
:class:`~lf_ext.cache.policy.VerificationPolicy` the cache itself applies (the cache's probe
fingerprints only pre-select entries and never decide). Otherwise the image is left unchanged (counted).

Candidates, from the training datasets (``dataset`` of the LLaMA-Factory arguments, read like the
dataset masks, see :mod:`lf_ext.masks.dataset`; eval datasets and chat uploads are never touched):

- the other images of the record's ``meta.sibling_group`` (up to ``MAX_TRIES``, in a random order);
- for an image without a group: the last ``FALLBACK_IMAGES`` ungrouped images of
  the same original size before it in dataset order (looking back at most ``FALLBACK_WINDOW`` images),
  nearest first: the images a cache filled in dataset order would hold. Each gets the exact per-unit
  check above.

Determinism. The plugin computes an image's tensors twice per sample (token counting during dataset
preprocessing, perhaps in another process, then the collator's tensors, every epoch), and DDP ranks
must agree. So the decision is a pure function of (LLaMA-Factory ``seed``, the image's path as written in
the dataset, the dataset, the settings and the pixels): a ``random.Random`` seeded from a SHA-256 of the
seed and the path draws whether the image gets a sibling and which candidates to try. It is the same in
every epoch: a given image always gets the same sibling, or always none. Decisions are memoised per
process (bounded LRU); the counts logged every ``LOG_EVERY`` decisions and at exit are per process.
"""

from __future__ import annotations

import hashlib
import random
import weakref
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from PIL import Image

from lf_ext.cache.policy import VerificationPolicy
from lf_ext.config import Settings
from lf_ext.eval.datasets import dataset_names, path_key, read_datasets, record_images
from lf_ext.log import get_logger

logger = get_logger()

MAX_TRIES = 4  # candidates verified per image at most
FALLBACK_IMAGES = 8  # same-size images before an ungrouped image in dataset order
FALLBACK_WINDOW = 64  # how far back in dataset order to look for them
LOG_EVERY = 1000


def _log_counts(counts: dict[str, int], logged: list[int]) -> None:
    """Log a sampler's counts if they changed since the last log (skipped once the log stream is closed)."""
    if counts["drawn"] == logged[0]:
        return
    if any(getattr(getattr(handler, "stream", None), "closed", False) for handler in logger.handlers):
        return
    logged[0] = counts["drawn"]
    logger.info("bgobj_sibling_prob: %d images drawn, %d served a sibling's background, %d kept theirs "
                "(no verified sibling)", counts["drawn"], counts["with_sibling"], counts["without"])  # fmt: skip


# ------------------------------------------------------------------------------------------ the index


@dataclass
class SiblingIndex:
    """The training images in dataset order, their names as written in the dataset and their groups."""

    paths: list[str] = field(default_factory=list)  # image paths in dataset order (first occurrence)
    names: list[str] = field(default_factory=list)  # the same images as written in their records
    group_of: dict[str, str] = field(default_factory=dict)  # path_key -> sibling group
    members: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # group -> positions
    position: dict[str, int] = field(default_factory=dict)  # path_key -> position

    def __len__(self) -> int:
        return len(self.paths)

    def add_records(self, records: Iterable[Mapping[str, Any]], base_dir: str | Path) -> "SiblingIndex":
        """Add each record's images (``meta.sibling_group`` applies to every image of the record)."""
        for record in records:
            group = (record.get("meta") or {}).get("sibling_group")
            for name, path in zip(record.get("images") or [], record_images(record, base_dir)):
                key = path_key(path)
                if key not in self.position:
                    self.position[key] = len(self.paths)
                    self.paths.append(path)
                    self.names.append(str(name))
                if group and key not in self.group_of:
                    self.group_of[key] = str(group)
                    self.members[str(group)].append(self.position[key])
        return self

    @classmethod
    def from_dataset(cls, dataset_dir: str | Path, names: Iterable[str]) -> "SiblingIndex":
        index = cls()
        for _, records in read_datasets(dataset_dir, names):
            index.add_records(records, dataset_dir)
        return index

    @classmethod
    def from_lf_args(cls, lf_args: Mapping[str, Any]) -> "SiblingIndex":
        """The training datasets (``dataset``, not ``eval_dataset``) of LLaMA-Factory arguments."""
        dataset_dir = Path(lf_args.get("dataset_dir", "data"))
        names = dataset_names(lf_args, keys=("dataset",))
        if not names or not (dataset_dir / "dataset_info.json").is_file():
            return cls()
        return cls.from_dataset(dataset_dir, names)

    def candidates(self, key: str, rng: random.Random) -> list[str]:
        """Paths to try for the image ``key``: its group's other images in random order, else its
        same-size predecessors in dataset order (nearest first)."""
        at = self.position[key]
        group = self.group_of.get(key)
        if group is not None:
            others = [p for p in self.members[group] if p != at]
            return [self.paths[p] for p in rng.sample(others, min(MAX_TRIES, len(others)))]
        size, found = image_size(self.paths[at]), []
        for p in range(at - 1, max(-1, at - 1 - FALLBACK_WINDOW), -1):
            if len(found) == FALLBACK_IMAGES:
                break
            if path_key(self.paths[p]) not in self.group_of and image_size(self.paths[p]) == size:
                found.append(self.paths[p])
        return found


@lru_cache(maxsize=65536)
def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file header, None if unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Sibling:
    """A candidate encoded at an image's grid: its path, its single-item ``pixel_values``, its units
    (rows, cols, u, u, 3) uint8 and the background set it would be served with (rows, cols) bool."""

    source: str
    pixel_values: torch.Tensor
    units: np.ndarray
    background: np.ndarray

    def without(self, units: np.ndarray) -> "Sibling":
        """The same sibling with ``units`` (rows, cols) bool taken out of its background."""
        return Sibling(self.source, self.pixel_values, self.units, self.background & ~np.asarray(units, bool))


Load = Callable[[str], "Sibling | None"]  # path -> the candidate at this image's grid (None: unusable)


class SiblingSampler:
    """Decides, per training image, whether and from which sibling its background is served. Holds the
    index, a bounded memo of decisions and the counts."""

    MEMO_SIZE = 65536

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.policy = VerificationPolicy.from_settings(self.settings.keys)
        self._index: SiblingIndex | None = None
        self._memo: OrderedDict[tuple, str | None] = OrderedDict()
        self.counts = {"drawn": 0, "with_sibling": 0, "without": 0}
        self._logged = [0]
        weakref.finalize(self, _log_counts, self.counts, self._logged)  # the final counts: when dropped, or at exit

    def __getstate__(self):  # dataset workers get a fresh sampler with the same settings
        return {"settings": self.settings}

    def __setstate__(self, state):
        self.__init__(state["settings"])

    def enabled(self) -> bool:
        """True when ``bgobj_sibling_prob`` > 0 and this command trains (not chat/api/export)."""
        return self.settings.keys.bgobj_sibling_prob > 0 and self.settings.training

    def index(self) -> SiblingIndex:
        if self._index is None:
            self._index = SiblingIndex.from_lf_args(self.settings.lf_args)
            logger.info("bgobj_sibling_prob=%s: %d training images, %d in sibling groups",
                        self.settings.keys.bgobj_sibling_prob, len(self._index), len(self._index.group_of))  # fmt: skip
        return self._index

    def choose(self, source: str | None, units: np.ndarray, grid: tuple[int, int, int], own_object: np.ndarray,
               load: Load) -> Sibling | None:  # fmt: skip
        """The sibling whose background this image gets, or None. Pure in its inputs (see module doc).

        ``units`` (rows, cols, u, u, 3): this image's; ``own_object`` (rows, cols) bool: its object
        units, taken out of the sibling's background (the entry a stream holding both images would
        need; without it a sibling whose background contains this image's object can never verify)."""
        index = self.index()
        key = path_key(source) if source else None
        if key is None or key not in index.position:
            return None  # not a training image of the datasets (e.g. an in-memory picture)

        def served(candidate: str) -> Sibling | None:
            sibling = load(candidate)
            if sibling is None:
                return None
            sibling = sibling.without(own_object)
            return sibling if self.policy.admits(sibling.background) else None

        memo_key = (key, tuple(grid))
        if memo_key in self._memo:
            self._memo.move_to_end(memo_key)
            chosen = self._memo[memo_key]
            return None if chosen is None else served(chosen)
        digest = hashlib.sha256(f"{self.settings.lf('seed', 42)}\0{index.names[index.position[key]]}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        sibling = None
        if rng.random() < self.settings.keys.bgobj_sibling_prob:
            for candidate in index.candidates(key, rng):
                sibling = served(candidate)
                if sibling is not None and self.policy.verifies(_stored(sibling), units, np.flatnonzero(sibling.background)):
                    break
                sibling = None
            self._count(sibling is not None)
        self._memo[memo_key] = None if sibling is None else sibling.source
        while len(self._memo) > self.MEMO_SIZE:
            self._memo.popitem(last=False)
        return sibling

    def sibling_of(self, source: str, grid) -> str | None:
        """The sibling already chosen for ``source`` at this grid in this process (None if none or undecided)."""
        return self._memo.get((path_key(source), tuple(grid)))

    def _count(self, found: bool) -> None:
        self.counts["drawn"] += 1
        self.counts["with_sibling" if found else "without"] += 1
        if self.counts["drawn"] - self._logged[0] >= LOG_EVERY:
            self.log_counts()

    def log_counts(self) -> None:
        _log_counts(self.counts, self._logged)


def _stored(sibling: Sibling) -> np.ndarray:
    """The sibling's units on its background set, as a cache entry stores them (|B|, u, u, 3)."""
    flat = sibling.units.reshape(-1, *sibling.units.shape[2:])
    return flat[np.flatnonzero(sibling.background)]
