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


CACHED_RGB = (40, 110, 230)  # a background token (first slice) and the units it stands for later


def clip_panels(frames: list[Image.Image], groups: np.ndarray, unit: int, title: str = "", per_row: int = 4) -> Image.Image:
    """One panel per temporal slice (its first frame as the tower sees it): blue = background, one token in
    the first slice standing for the unit in every slice (dimmed later); red = an object token of that
    slice; dark = an object unit with no token there (unchanged since its last token)."""
    from lf_ext.layout import Group

    panels = []
    for t, frame in enumerate(frames):
        g = groups[t]
        colours = np.zeros((*g.shape, 3), np.uint8)
        colours[g == int(Group.BACKGROUND)] = CACHED_RGB
        colours[g == int(Group.DROPPED)] = (20, 50, 110)
        colours[g == int(Group.OBJECT)] = OBJECT_RGB
        colours[g == int(Group.DROPPED_OBJECT)] = (30, 30, 30)
        tint = Image.fromarray(np.repeat(np.repeat(colours, unit, axis=0), unit, axis=1))
        base = frame.convert("RGB").crop((0, 0, tint.width, tint.height))
        panel = Image.blend(base, tint, 0.5)
        draw = ImageDraw.Draw(panel)
        for x in range(0, panel.width + 1, unit):
            draw.line([(x, 0), (x, panel.height)], fill=(255, 255, 255), width=1)
        for y in range(0, panel.height + 1, unit):
            draw.line([(0, y), (panel.width, y)], fill=(255, 255, 255), width=1)
        tokens = int((g == int(Group.BACKGROUND)).sum() + (g == int(Group.OBJECT)).sum())
        panels.append((f"slice {t}: {tokens} tokens", _fit(panel, 220)))
    width, height = panels[0][1].size
    rows = -(-len(panels) // per_row)
    header = 40 if title else 22
    sheet = Image.new("RGB", (10 + min(len(panels), per_row) * (width + 10), header + rows * (height + 26)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((10, 4), title, fill=(0, 0, 0))
    for index, (name, img) in enumerate(panels):
        x, y = 10 + (index % per_row) * (width + 10), header + (index // per_row) * (height + 26)
        draw.text((x, y), name, fill=(0, 0, 0))
        sheet.paste(img, (x, y + 16))
    return sheet
