"""Background/object labels per token unit for the images of one sample, shared by the bgobj plugins."""

from __future__ import annotations

from collections import OrderedDict
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

from lf_ext.config import active_lf_args, active_settings
from lf_ext.masks.base import MaskError
from lf_ext.masks.geometry import TokenGrid
from lf_ext.masks.pipeline import ObjectMasker


def open_original(image: Any, index: int) -> tuple[Image.Image, str | None]:
    """Open an image as LLaMA-Factory accepts it (path, bytes, dict, PIL); return it and its path if known."""
    try:
        if isinstance(image, Image.Image):
            return image, getattr(image, "filename", None) or None
        if isinstance(image, dict):
            if image.get("bytes") is not None:
                return Image.open(BytesIO(image["bytes"])), image.get("path")
            image = image["path"]
        if isinstance(image, bytes):
            return Image.open(BytesIO(image)), None
        opened = Image.open(image)
        opened.load()
        return opened, str(image)
    except (OSError, ValueError, KeyError) as err:
        raise MaskError(f"image {index} ({str(image)[:200]}): cannot be read ({err})") from None


def is_placeholder(image: Image.Image, source: str | None) -> bool:
    """LLaMA-Factory's fake image for text-only batches: an in-memory white 64x64 square."""
    return source is None and image.size == (64, 64) and image.convert("RGB").getextrema() == ((255, 255),) * 3


class UnitLabeler:
    """Builds the configured ObjectMasker lazily and caches labels per (source, grid)."""

    CACHE_SIZE = 4096

    def __init__(self):
        self._masker: ObjectMasker | None = None
        self._key = None
        self._cache: OrderedDict = OrderedDict()

    def masker(self) -> ObjectMasker:
        settings = active_settings()
        if self._masker is None or self._key is not settings:
            self._masker, self._key = ObjectMasker.from_settings(settings, lf_args=active_lf_args()), settings
            self._cache.clear()
        return self._masker

    def labels(self, image: Image.Image, source: str | None, grid: TokenGrid) -> np.ndarray:
        """Object label per unit (rows, cols); all background for LLaMA-Factory's placeholder image."""
        if is_placeholder(image, source):
            return np.zeros(grid.shape, dtype=bool)
        masker = self.masker()
        key = (source, grid) if source else None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        labels = masker.labels(image, grid, source=source)
        if key is not None:
            self._cache[key] = labels
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return labels
