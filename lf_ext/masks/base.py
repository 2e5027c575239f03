"""The mask provider interface: object masks at the processor's geometry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np
from PIL import Image


class MaskError(ValueError):
    """A mask cannot be made for a sample; the message names the sample and the problem."""


class MissingMaskError(MaskError):
    """The provider has no mask for this image (``bgobj_mask_fallback`` decides what happens)."""


@dataclass(frozen=True)
class MaskRequest:
    """One image to split, already resized (and cropped) exactly as the model's processor does.

    Args:
        image: RGB image at the processor's geometry (its size is a whole number of token units).
        unit: side of one token unit in pixels at that geometry (28 for Qwen2-VL, 14 for LLaVA-1.5).
        to_geometry: applies the same resize/crop to another picture of the original's size
            (a mask, a reference plate); masks should be passed as mode "L".
        source: path of the original image when known (datasets), else None (chat/api uploads).
        record: extra per-image fields from the dataset (e.g. ``mask``, ``boxes``, ``polygons``).
        original_size: (width, height) of the original image, before any resize.
    """

    image: Image.Image
    unit: int
    to_geometry: Callable[[Image.Image], Image.Image]
    source: str | None = None
    record: Mapping[str, Any] = field(default_factory=dict)
    original_size: tuple[int, int] | None = None

    def describe(self) -> str:
        """The image as error messages name it: its resolved path, or its size when it has none."""
        return os.path.abspath(self.source) if self.source else f"<in-memory image {self.image.width}x{self.image.height}>"


class MaskProvider(Protocol):
    """Returns the object mask of one image: float32 in [0, 1], shape (H, W) of ``request.image``.

    All zeros means no object (everything is background); all ones means no background.
    """

    def __call__(self, request: MaskRequest) -> np.ndarray: ...
