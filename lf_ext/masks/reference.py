"""Masks from a reference background: the object is what differs from the plate (fixed cameras, screens, video)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from lf_ext.masks.base import MaskError, MaskRequest, MissingMaskError
from lf_ext.masks.registry import register_mask_provider


def open_image(path: str | Path, what: str, sample: str) -> Image.Image:
    """Open an image file or raise a MaskError naming the sample and the file (its resolved path)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise MaskError(f"{sample}: {what} not found: {os.path.abspath(path)}") from None
    except OSError as err:
        raise MaskError(f"{sample}: {what} is not a readable image: {os.path.abspath(path)} ({err})") from None


@register_mask_provider("reference")
class ReferenceMaskProvider:
    """Object = pixels whose mean absolute RGB difference from the reference exceeds ``threshold``.

    The reference is the record's ``plate`` (a path, as the scenes provide) or else the
    ``reference`` image given here. It must have the original image's size; both go through the
    same processor geometry before they are compared, so an unchanged background compares equal.
    """

    CACHE_SIZE = 16

    def __init__(self, reference: str | Path | Image.Image | None = None, threshold: float = 12.0):
        if isinstance(reference, (str, Path)) and str(reference):
            reference = open_image(reference, "reference image", "bgobj_reference_image")
        self.reference = reference or None
        self.threshold = threshold
        self._cache: OrderedDict = OrderedDict()

    @classmethod
    def from_settings(cls, settings, **context) -> "ReferenceMaskProvider":
        plate = settings.bgobj_reference_image
        return cls(plate if plate not in ("", "median") else None, settings.bgobj_reference_threshold)  # median: clips only

    def _plate_at_geometry(self, request: MaskRequest) -> np.ndarray:
        """The reference, opened and resized like the image; cached per (plate, geometry)."""
        plate = request.record.get("plate")
        if not plate and self.reference is None:
            raise MissingMaskError(f"{request.describe()}: the reference provider needs bgobj_reference_image or a 'plate'")
        key = (str(plate) if plate else None, getattr(request.to_geometry, "__self__", request.to_geometry))
        if key not in self._cache:
            reference = open_image(plate, "reference plate", request.describe()) if plate else self.reference
            try:
                resized = request.to_geometry(reference.convert("RGB"))
            except ValueError as err:
                raise MaskError(f"{request.describe()}: reference image does not match the image ({err})") from None
            self._cache[key] = np.asarray(resized, np.int16)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def __call__(self, request: MaskRequest) -> np.ndarray:
        reference = self._plate_at_geometry(request)
        diff = np.abs(np.asarray(request.image.convert("RGB"), np.int16) - reference).sum(axis=2, dtype=np.int16)
        return (diff > 3 * self.threshold).astype(np.float32)  # mean over RGB > threshold
