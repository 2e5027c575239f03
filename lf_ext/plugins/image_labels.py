"""Opening images as LLaMA-Factory accepts them, and one background/object label per token unit."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

from lf_ext.config import Settings
from lf_ext.inference.metrics import observe_component
from lf_ext.masks.base import MaskError
from lf_ext.masks.geometry import TokenGrid
from lf_ext.masks.pipeline import ObjectMasker

REQUEST_KEY = "bgobj_request"  # an image dict may carry a request id (see lf_ext.inference.runtime)


@dataclass(frozen=True)
class OpenedImage:
    """An image of a sample: the picture, its path when known, and the request id it carries, if any."""

    image: Image.Image
    source: str | None
    request: int | None = None


def open_original(image: Any, index: int) -> OpenedImage:
    """Open an image as LLaMA-Factory accepts it (path, bytes, ``{"path"|"bytes"}`` dict, PIL); a dict may
    also hold the picture itself under ``"image"`` and a request id under ``"bgobj_request"``."""
    request = None
    try:
        if isinstance(image, dict):
            request = image.get(REQUEST_KEY)
            if image.get("image") is not None:
                return OpenedImage(image["image"], image.get("path"), request)
            if image.get("bytes") is not None:
                return OpenedImage(Image.open(BytesIO(image["bytes"])), image.get("path"), request)
            image = image["path"]
        if isinstance(image, Image.Image):
            return OpenedImage(image, getattr(image, "filename", None) or None, request)
        if isinstance(image, bytes):
            return OpenedImage(Image.open(BytesIO(image)), None, request)
        opened = Image.open(image)
        opened.load()
        return OpenedImage(opened, str(image), request)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MaskError(f"{_shown(image)}: cannot be read ({err})") from None


def _shown(image: Any) -> str:
    """How an unreadable image is named: its (absolute) path, or what it is."""
    if isinstance(image, dict):
        image = image.get("path") or ("<in-memory bytes>" if image.get("bytes") is not None else "<image dict>")
    if isinstance(image, (str, os.PathLike)):
        return os.path.abspath(image)
    return f"<in-memory {type(image).__name__}>"


def is_placeholder(image: Image.Image, source: str | None) -> bool:
    """LLaMA-Factory's fake image for text-only batches: an in-memory white 64x64 square."""
    return source is None and image.size == (64, 64) and image.convert("RGB").getextrema() == ((255, 255),) * 3


class UnitLabeler:
    """The settings' ObjectMasker (built on first use) and a bounded cache of labels per (source, grid)."""

    CACHE_SIZE = 4096

    def __init__(self, settings: Settings):
        self.settings = settings
        self._masker: ObjectMasker | None = None
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self):  # dataset workers get a copy without the (maybe unpicklable) masker
        return {"settings": self.settings, "_masker": None, "_cache": OrderedDict()}

    def masker(self) -> ObjectMasker:
        if self._masker is None:
            self._masker = ObjectMasker.from_settings(self.settings.keys, training=self.settings.training,
                                                      lf_args=self.settings.lf_args)  # fmt: skip
        return self._masker

    def labels(self, image: Image.Image, source: str | None, grid: TokenGrid) -> np.ndarray:
        """Object label per unit (rows, cols); all background for LLaMA-Factory's placeholder image."""
        if is_placeholder(image, source):
            return np.zeros(grid.shape, dtype=bool)
        key = (source, grid) if source else None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        started = time.perf_counter()
        labels = self.masker().labels(image, grid, source=source)
        observe_component("mask", time.perf_counter() - started)
        if key is not None:
            self._cache[key] = labels
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return labels
