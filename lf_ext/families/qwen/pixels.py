"""Token units as uint8 pixels in a Qwen2-VL processor's ``pixel_values``, and back.

The cache verifies what the model actually sees: the image after the processor's resize, one
``(merge * patch)``-pixel square per visual token. ``pixel_values`` hold exactly those pixels,
rescaled and normalised, so undoing the normalisation recovers them (to rounding) without the
original image. Patch layout (``Qwen2VLImageProcessor``): per item ``(t, h/m, w/m, m, m)`` patches,
each flattened as ``(channels, temporal_patch_size, patch, patch)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lf_ext.families.base import NormalisedPixelUnits
from lf_ext.layout import ImageLayout


@dataclass(frozen=True)
class QwenPixelUnits(NormalisedPixelUnits):
    """The processor settings that place and normalise the units."""

    merge: int = 2
    temporal: int = 2

    @classmethod
    def from_image_processor(cls, ip) -> "QwenPixelUnits":
        return cls(tuple(float(v) for v in ip.image_mean), tuple(float(v) for v in ip.image_std),
                   float(getattr(ip, "rescale_factor", 1 / 255)), int(ip.patch_size), int(ip.merge_size),
                   int(ip.temporal_patch_size))  # fmt: skip

    @property
    def unit(self) -> int:
        return self.merge * self.patch

    def _rows(self, layout: ImageLayout, item: int) -> slice:
        per_unit = self.merge**2
        start = layout.offset(item) * per_unit
        return slice(start, start + layout.sizes[item] * per_unit)

    def item_pixels(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int) -> torch.Tensor:
        return pixel_values[self._rows(layout, item)]

    def units(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int) -> np.ndarray:
        """``(slices, rows, cols, u, u, 3)`` uint8 of one item (the first frame of each temporal slice)."""
        return self._frames(pixel_values, layout, item, first_only=True)

    def frame_units(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int) -> np.ndarray:
        """``(slices * temporal, rows, cols, u, u, 3)`` uint8: every frame of one item, in order (a clip's
        frames as the model sees them)."""
        return self._frames(pixel_values, layout, item, first_only=False)

    def _frames(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int, first_only: bool) -> np.ndarray:
        m, p, t = self.merge, self.patch, self.temporal
        slices, rows, cols = layout.grids[item]
        block = self.item_pixels(pixel_values, layout, item).detach()
        if block.shape[0] != slices * rows * cols * m * m or block.shape[1] != 3 * t * p * p:
            raise ValueError(f"pixel_values block {tuple(block.shape)} does not hold a {slices}x{rows}x{cols}-unit item "
                             f"of {m}x{m} patches with {3 * t * p * p} values each")  # fmt: skip
        scale, offset = self.denormaliser((1, 3, 1, 1, 1))
        frames = block.reshape(-1, 3, t, p, p)[:, :, :1 if first_only else t].float()  # (patches, 3, frames, p, p)
        values = torch.addcmul(offset, frames, scale).round_().clamp_(0, 255).to(torch.uint8)  # quantise, then move bytes
        f = values.shape[2]
        units = values.view(slices, rows, cols, m, m, 3, f, p, p).permute(0, 6, 1, 2, 3, 7, 4, 8, 5)
        return units.reshape(slices * f, rows, cols, m * p, m * p, 3).numpy()

    def replace(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int, donor: torch.Tensor,
                where: torch.Tensor) -> torch.Tensor:  # fmt: skip
        rows = self._rows(layout, item)
        where = torch.as_tensor(where, dtype=torch.bool).reshape(-1)
        per_unit = self.merge**2
        out = pixel_values.clone()
        block = out[rows].view(where.numel(), per_unit, -1)
        block[where] = donor.to(out.dtype).reshape(where.numel(), per_unit, -1)[where]
        return out
