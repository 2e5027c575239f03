"""``lf-ext show-mask``: the five pictures that show whether a mask lines up with the tokens."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from lf_ext.masks.geometry import TokenGrid

PANEL_HEIGHT = 320
OBJECT_RGB, BACKGROUND_RGB = (230, 60, 40), (40, 110, 230)


def _fit(image: Image.Image, height: int = PANEL_HEIGHT) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image.convert("RGB").resize((width, height), Image.NEAREST)


def unit_overlay(image: Image.Image, labels: np.ndarray, unit: int, kept: np.ndarray | None = None) -> Image.Image:
    """The processor-sized image with each token unit tinted by its label and the unit grid drawn; units a
    token budget drops (``kept`` False) are greyed out and crossed."""
    colours = np.where(labels[..., None], np.array(OBJECT_RGB), np.array(BACKGROUND_RGB)).astype(np.uint8)
    tint = Image.fromarray(np.repeat(np.repeat(colours, unit, axis=0), unit, axis=1))
    base = image.convert("RGB").crop((0, 0, tint.width, tint.height))
    out = Image.blend(base, tint, 0.45)
    draw = ImageDraw.Draw(out)
    for r, c in np.argwhere(~kept) if kept is not None else []:
        box = [c * unit, r * unit, (c + 1) * unit - 1, (r + 1) * unit - 1]
        draw.rectangle(box, fill=(70, 70, 70))
        draw.line([tuple(box[:2]), tuple(box[2:])], fill=(160, 160, 160))
    for x in range(0, out.width + 1, unit):
        draw.line([(x, 0), (x, out.height)], fill=(255, 255, 255), width=1)
    for y in range(0, out.height + 1, unit):
        draw.line([(0, y), (out.width, y)], fill=(255, 255, 255), width=1)
    return out


def five_panels(original: Image.Image, mask_at_geometry: np.ndarray, labels: np.ndarray, grid: TokenGrid,
                title: str = "", kept: np.ndarray | None = None) -> Image.Image:  # fmt: skip
    """Original | mask on the original | image as the processor resized it | mask at that size | unit labels
    (with ``kept``: the units a token budget keeps)."""
    resized = grid.to_geometry(original.convert("RGB"))
    mask_img = Image.fromarray((np.clip(mask_at_geometry, 0, 1) * 255).astype(np.uint8))
    mask_on_original = mask_img.resize(original.size, Image.NEAREST) if grid.crop is None else mask_img
    panels = [
        ("original %dx%d" % original.size, original),
        ("object mask", mask_on_original),
        ("processor input %dx%d" % resized.size, resized),
        ("mask at processor size", mask_img),
        ("token units %dx%d: %d object / %d%s" % (*grid.shape[::-1], labels.sum(), labels.size,
                                                 "" if kept is None else f", {int(kept.sum())} kept"),
         unit_overlay(resized, labels, grid.unit, kept)),
    ]  # fmt: skip
    fitted = [(name, _fit(img)) for name, img in panels]
    header = 40 if title else 22
    sheet = Image.new("RGB", (sum(img.width for _, img in fitted) + 10 * (len(fitted) + 1), PANEL_HEIGHT + header + 10), "white")
    draw, x = ImageDraw.Draw(sheet), 10
    if title:
        draw.text((10, 4), title, fill=(0, 0, 0))
    for name, img in fitted:
        draw.text((x, header - 16), name, fill=(0, 0, 0))
        sheet.paste(img, (x, header))
        x += img.width + 10
    return sheet
