"""``motion``: video clips split by their pixels alone (the units that change between slices are object).

For a clip (:mod:`lf_ext.plugins.clip_labels`) every unit whose pixels move away from the first slice's
by more than ``bgobj_cache_unit_threshold`` becomes an object token of that slice (the EVS rule, here
used to split, not to drop); nothing else is object. A single image has no motion, so images are
refused with a clear error instead of being silently left unsplit.
"""

from __future__ import annotations

import numpy as np

from lf_ext.masks.base import MaskError, MaskRequest
from lf_ext.masks.registry import register_mask_provider


@register_mask_provider("motion")
class MotionMaskProvider:
    """No per-frame mask: a clip's split comes from its pixel changes (see the module docstring)."""

    def __call__(self, request: MaskRequest) -> np.ndarray:
        raise MaskError(f"{request.describe()}: the 'motion' provider splits video clips only; choose another "
                        "bgobj_mask_provider (or bgobj_mask_fallback) for images")  # fmt: skip
