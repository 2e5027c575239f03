"""From an image to one background/object label per token unit, with the configured provider."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageFilter

from lf_ext.log import get_logger
from lf_ext.masks.base import MaskError, MaskRequest, MissingMaskError
from lf_ext.masks.geometry import TokenGrid, unit_labels
from lf_ext.masks.registry import build_mask_provider

logger = get_logger()


def dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    """Grow the object region (mask > 0.5) by ``margin`` pixels in every direction."""
    if margin <= 0:
        return mask
    grown = Image.fromarray(((mask > 0.5) * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(2 * margin + 1))
    return np.maximum(mask, np.asarray(grown, dtype=np.float32) / 255.0)


def check_mask(mask: Any, request: MaskRequest, provider: str) -> np.ndarray:
    """A provider's output must be a finite (H, W) array in [0, 1] at the request's geometry."""
    expected = (request.image.height, request.image.width)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != expected:
        raise MaskError(f"{request.describe()}: provider '{provider}' returned a mask of shape {mask.shape}, expected {expected}")
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise MaskError(f"{request.describe()}: provider '{provider}' returned values outside [0, 1]")
    return mask


INFERENCE_FALLBACK = "entropy"  # what 'auto' means in chat, api, webchat and LlamaBoard's chat


def fallback_for(provider: str, fallback: str, inference: bool) -> str:
    """Resolve ``bgobj_mask_fallback: auto``: ``entropy`` for inference commands, ``none`` otherwise.

    Training keeps ``none`` (a sample without a mask is all background, as it always was); at inference an
    image without a mask is usually an upload (chat, api, the board's Chat tab: in-memory images the
    ``dataset`` provider cannot look up), which the unsupervised ``entropy`` provider splits instead.
    """
    if fallback != "auto":
        return fallback
    return INFERENCE_FALLBACK if inference and provider not in (INFERENCE_FALLBACK, "none") else "none"


class ObjectMasker:
    """The configured provider, its fallback, the margin and the coverage rule, in one callable.

    The fallback takes over when the provider has no mask for an image (:class:`MissingMaskError`)
    and, with ``fallback_on_errors`` (inference: chat, api, webchat), when it fails on an image
    (any :class:`MaskError`, e.g. an upload whose size differs from the reference plate). In training
    a broken mask stays an error naming the sample. Each fallback is logged (first, 10th, 100th...).
    """

    def __init__(self, provider, provider_name: str, fallback=None, fallback_name: str = "error",
                 margin: int = 0, coverage: float = 0.0, fallback_on_errors: bool = False):  # fmt: skip
        self.provider, self.provider_name = provider, provider_name
        self.fallback, self.fallback_name = fallback, fallback_name
        self.margin, self.coverage = margin, coverage
        self.fallback_on_errors = fallback_on_errors
        self.fallbacks = 0

    @classmethod
    def from_settings(cls, settings, training: bool | None = None, **context: Any) -> "ObjectMasker":
        """The masker of ``bgobj_*`` settings; ``training=False`` marks an inference command (see :func:`fallback_for`)."""
        name = settings.bgobj_mask_provider
        fallback = fallback_for(name, settings.bgobj_mask_fallback, inference=training is False)
        return cls(
            build_mask_provider(name, settings, **context), name,
            None if fallback == "error" else build_mask_provider(fallback, settings, **context), fallback,
            settings.bgobj_mask_margin, settings.bgobj_unit_coverage, fallback_on_errors=training is False,
        )  # fmt: skip

    def mask(self, request: MaskRequest) -> np.ndarray:
        """Object mask at the request's geometry, after fallback and margin."""
        try:
            mask, used = self.provider(request), self.provider_name
        except MaskError as err:
            if self.fallback is None or not (isinstance(err, MissingMaskError) or self.fallback_on_errors):
                raise
            self.fallbacks += 1
            if self.fallbacks in (1, 10, 100, 1000):
                logger.warning("no '%s' mask for %s (%s): using '%s' (%d so far)", self.provider_name,
                               request.describe(), err, self.fallback_name, self.fallbacks)  # fmt: skip
            mask, used = self.fallback(request), self.fallback_name
        binary = (check_mask(mask, request, used) >= 0.5).astype(np.float32)  # a pixel is object if half covered
        return dilate(binary, self.margin)

    def mask_and_labels(self, image: Image.Image, grid: TokenGrid, source: str | None = None,
                        record: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Object mask at the processor's geometry and the label per token unit (rows, cols)."""
        request = MaskRequest(image=grid.to_geometry(image.convert("RGB")), unit=grid.unit, to_geometry=grid.to_geometry,
                              source=source, record=record or {}, original_size=image.size)  # fmt: skip
        mask = self.mask(request)
        return mask, unit_labels(mask, grid.unit, self.coverage)

    def labels(self, image: Image.Image, grid: TokenGrid, source: str | None = None,
               record: Mapping[str, Any] | None = None) -> np.ndarray:  # fmt: skip
        """Object label per token unit (rows, cols) for an original image and its token grid."""
        return self.mask_and_labels(image, grid, source, record)[1]
