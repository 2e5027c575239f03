"""Token units as uint8 pixels, recovered from a Qwen2-VL processor's ``pixel_values``.

The cache verifies what the model actually sees: the image after the processor's resize, one
``(merge * patch)``-pixel square per visual token. ``pixel_values`` hold exactly those pixels,
rescaled and normalised, so undoing the normalisation recovers them (to rounding) without the
original image. Patch layout (``Qwen2VLImageProcessor``): per image ``(t, h/m, w/m, m, m)``
patches, each flattened as ``(channels, temporal_patch_size, patch, patch)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PixelNorm:
    """The processor settings needed to undo its normalisation."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    patch: int = 14
    merge: int = 2
    temporal: int = 2

    @classmethod
    def from_image_processor(cls, ip) -> "PixelNorm":
        return cls(tuple(float(v) for v in ip.image_mean), tuple(float(v) for v in ip.image_std),
                   float(getattr(ip, "rescale_factor", 1 / 255)), int(ip.patch_size), int(ip.merge_size),
                   int(ip.temporal_patch_size))  # fmt: skip


def image_units(pixel_values: torch.Tensor, grid_thw: torch.Tensor, norm: PixelNorm) -> list[np.ndarray]:
    """One ``(rows, cols, u, u, 3)`` uint8 array per image (``u = merge * patch``), from ``pixel_values``."""
    m, p, t = norm.merge, norm.patch, norm.temporal
    scale = torch.tensor(norm.std).view(1, 3, 1, 1) / norm.rescale
    offset = torch.tensor(norm.mean).view(1, 3, 1, 1) / norm.rescale
    out, offset_rows = [], 0
    for frames, h, w in grid_thw.tolist():
        if frames != 1:
            raise ValueError(f"image_units is for single images, got a grid with t={frames}")
        rows, cols = h // m, w // m
        block = pixel_values[offset_rows : offset_rows + h * w].detach()
        if block.shape[1] != 3 * t * p * p:
            raise ValueError(f"pixel_values rows have {block.shape[1]} values, expected {3 * t * p * p}")
        first = block.view(h * w, 3, t, p, p)[:, :, 0].float()  # first temporal copy: (patches, 3, p, p)
        values = torch.addcmul(offset, first, scale).round_().clamp_(0, 255).to(torch.uint8)  # quantise, then move bytes
        units = values.view(rows, cols, m, m, 3, p, p).permute(0, 1, 2, 5, 3, 6, 4)
        out.append(units.reshape(rows, cols, m * p, m * p, 3).numpy())
        offset_rows += h * w
    return out
