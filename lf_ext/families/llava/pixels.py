"""Token units as uint8 pixels in a LLaVA-1.5 processor's ``pixel_values`` ``(images, 3, H, W)``, and back.

One unit is one ``patch x patch`` square (14 px) of the processed image; undoing the normalisation
recovers what the tower sees (to rounding), as the cache's verification needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lf_ext.families.base import NormalisedPixelUnits
from lf_ext.layout import ImageLayout


@dataclass(frozen=True)
class LlavaPixelUnits(NormalisedPixelUnits):
    """One unit per ``patch`` square of the processed image."""

    @classmethod
    def from_image_processor(cls, ip, patch: int = 14) -> "LlavaPixelUnits":
        return cls(tuple(float(v) for v in ip.image_mean), tuple(float(v) for v in ip.image_std),
                   float(getattr(ip, "rescale_factor", 1 / 255)), int(patch))  # fmt: skip

    @property
    def unit(self) -> int:
        return self.patch

    def item_pixels(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int) -> torch.Tensor:
        return pixel_values[item : item + 1]

    def units(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int) -> np.ndarray:
        """``(1, rows, cols, patch, patch, 3)`` uint8 of one image."""
        _, rows, cols = layout.grids[item]
        image = pixel_values[item].detach().float()
        if image.shape != (3, rows * self.patch, cols * self.patch):
            raise ValueError(f"pixel_values image {tuple(image.shape)} does not hold {rows}x{cols} patches of {self.patch} px")
        scale, offset = self.denormaliser((3, 1, 1))
        values = image * scale + offset
        values = values.round_().clamp_(0, 255).to(torch.uint8)
        units = values.view(3, rows, self.patch, cols, self.patch).permute(1, 3, 2, 4, 0)
        return units.reshape(1, rows, cols, self.patch, self.patch, 3).numpy()

    def replace(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int, donor: torch.Tensor,
                where: torch.Tensor) -> torch.Tensor:  # fmt: skip
        _, rows, cols = layout.grids[item]
        where = torch.as_tensor(where, dtype=torch.bool).reshape(rows, cols)
        mask = where.repeat_interleave(self.patch, 0).repeat_interleave(self.patch, 1)  # (H, W)
        out = pixel_values.clone()
        out[item] = torch.where(mask, donor.reshape(out[item].shape).to(out.dtype), out[item])
        return out
