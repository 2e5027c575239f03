"""Foreground objects: specs, renderers, placement and compositing onto a plate.

An object is rendered as an RGBA patch whose alpha is strictly binary (0 or 255),
so the ground-truth mask is exactly the set of pixels that were painted. Shapes are
rasterised at 4x and box-downsampled, then the coverage is thresholded at 50%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

OBJECT_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "digit", "clock")

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 0),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

# Approximate object area / bounding-box area, used to size objects to a target area.
FILL_RATIO: dict[str, float] = {
    "circle": 0.785, "square": 1.0, "triangle": 0.5, "star": 0.33, "digit": 0.97, "clock": 0.785,
}
# Minimum bounding-box side as a fraction of the shorter image side (legibility).
MIN_SIDE: dict[str, float] = {
    "circle": 0.07, "square": 0.06, "triangle": 0.08, "star": 0.1, "digit": 0.14, "clock": 0.2,
}
_SS = 4  # supersampling factor


@dataclass(frozen=True)
class ObjectSpec:
    """One object: kind, palette colour name, square bbox (side ``size`` at ``x, y``)."""

    kind: str
    color: str
    size: int
    x: int
    y: int
    digit: int | None = None
    time: str | None = None


def ink_for(color: str) -> tuple[int, int, int]:
    """Contrasting detail colour (digit glyph, clock hands) for a fill colour."""
    return (20, 20, 20) if color in ("yellow", "white", "orange", "green") else (245, 245, 245)


def sample_clock_time(rng: np.random.Generator) -> str:
    """Random ``h:mm`` (h in 1..12, minutes multiple of 5) with clearly separated hands."""
    while True:
        hour, minute = int(rng.integers(1, 13)), int(rng.integers(0, 12)) * 5
        hour_angle, minute_angle = (hour % 12) * 30 + minute * 0.5, minute * 6
        diff = abs(hour_angle - minute_angle) % 360
        if min(diff, 360 - diff) >= 20:
            return f"{hour}:{minute:02d}"


# --------------------------------------------------------------------------- shapes
def _star_points(side: int, inner: float = 0.45) -> list[tuple[float, float]]:
    radius = side / 2
    cx, cy = side / 2, side / 2 + 0.095 * radius
    pts = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * inner
        a = math.pi * i / 5
        pts.append((cx + r * math.sin(a), cy - r * math.cos(a)))
    return pts


def _draw_shape(kind: str, side: int) -> Image.Image:
    """Binary ("L", 0/255) silhouette of ``kind`` on a ``side``-sized square canvas."""
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    if kind in ("circle", "clock"):
        draw.ellipse([0, 0, side - 1, side - 1], fill=255)
    elif kind == "square":
        draw.rectangle([0, 0, side - 1, side - 1], fill=255)
    elif kind == "triangle":
        draw.polygon([(side / 2, 0), (0, side - 1), (side - 1, side - 1)], fill=255)
    elif kind == "star":
        draw.polygon(_star_points(side), fill=255)
    elif kind == "digit":
        draw.rounded_rectangle([0, 0, side - 1, side - 1], radius=side // 7, fill=255)
    else:
        raise ValueError(f"unknown object kind {kind!r}")
    return img


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable TrueType font (bundled with Pillow>=10.1), else a bitmap fallback."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        try:
            return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
        except (OSError, ImportError):
            return ImageFont.load_default()


def _digit_glyph(digit: int, side: int) -> Image.Image:
    """An "L" mask of a bold digit centred on a ``side`` square; bitmap fonts are scaled."""
    font = _font(int(side * 0.78))
    glyph = Image.new("L", (side, side), 0)
    gd = ImageDraw.Draw(glyph)
    if isinstance(font, ImageFont.FreeTypeFont):
        stroke = max(1, side // 28)
        x0, y0, x1, y1 = gd.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
        pos = ((side - (x1 - x0)) / 2 - x0, (side - (y1 - y0)) / 2 - y0)
        gd.text(pos, str(digit), font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        return glyph
    x0, y0, x1, y1 = gd.textbbox((0, 0), str(digit), font=font)
    small = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(small).text((1 - x0, 1 - y0), str(digit), font=font, fill=255)
    scale = side * 0.7 / max(small.size)
    small = small.resize((max(1, int(small.width * scale)), max(1, int(small.height * scale))))
    glyph.paste(small, ((side - small.width) // 2, (side - small.height) // 2))
    return glyph


def _draw_digit(canvas: Image.Image, digit: int, ink: tuple[int, int, int]) -> None:
    """Draw a large bold digit centred on ``canvas``."""
    canvas.paste(ink, (0, 0), _digit_glyph(digit, canvas.size[0]))


def _draw_clock(canvas: Image.Image, time: str, ink: tuple[int, int, int]) -> None:
    """Draw 12 ticks, hour/minute hands and a hub for ``time`` ("h:mm") on ``canvas``."""
    side = canvas.size[0]
    draw = ImageDraw.Draw(canvas)
    c, r = side / 2, side / 2

    def polar(angle_deg: float, radius: float) -> tuple[float, float]:
        a = math.radians(angle_deg)
        return (c + radius * math.sin(a), c - radius * math.cos(a))

    draw.ellipse([r * 0.08, r * 0.08, side - r * 0.08, side - r * 0.08], outline=ink, width=max(2, int(r * 0.05)))
    for k in range(12):
        major = k % 3 == 0
        draw.line([polar(k * 30, r * (0.66 if major else 0.74)), polar(k * 30, r * 0.84)],
                  fill=ink, width=max(2, int(r * (0.08 if major else 0.04))))
    hour, minute = (int(p) for p in time.split(":"))
    draw.line([(c, c), polar((hour % 12) * 30 + minute * 0.5, r * 0.48)], fill=ink, width=max(3, int(r * 0.11)))
    draw.line([(c, c), polar(minute * 6, r * 0.76)], fill=ink, width=max(2, int(r * 0.055)))
    hub = r * 0.09
    draw.ellipse([c - hub, c - hub, c + hub, c + hub], fill=ink)


def _outline(rgb: np.ndarray, mask: np.ndarray, color: str) -> np.ndarray:
    """Darken a thin band along the inside of the mask boundary."""
    side = mask.shape[0]
    width = max(1, side // 45)
    eroded = Image.fromarray(mask.astype(np.uint8) * 255)
    for _ in range(width):  # repeated 3x3 erosion == (2w+1)x(2w+1) erosion, much faster
        eroded = eroded.filter(ImageFilter.MinFilter(3))
    band = mask & (np.asarray(eroded) == 0)
    fill = np.array(PALETTE[color], np.float32)
    edge = np.array([80, 80, 80], np.float32) if color == "black" else fill * 0.55
    out = rgb.copy()
    out[band] = np.rint(edge).astype(np.uint8)
    return out


def render_object(spec: ObjectSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render ``spec`` to an ``(s, s, 4)`` uint8 RGBA patch and an ``(s, s)`` bool mask.

    Alpha is exactly ``mask * 255``; ``s == spec.size``.
    """
    big = spec.size * _SS
    silhouette = _draw_shape(spec.kind, big)
    detail = Image.new("RGB", (big, big), PALETTE[spec.color])
    if spec.kind == "digit":
        _draw_digit(detail, int(spec.digit or 0), ink_for(spec.color))
    elif spec.kind == "clock":
        _draw_clock(detail, spec.time or "12:00", ink_for(spec.color))
    small = (spec.size, spec.size)
    mask = np.asarray(silhouette.resize(small, Image.Resampling.BOX)) >= 128
    rgb = np.asarray(detail.resize(small, Image.Resampling.BOX))
    rgb = _outline(rgb, mask, spec.color)
    alpha = mask.astype(np.uint8) * 255
    return np.dstack([rgb, alpha]), mask


# --------------------------------------------------------------------------- placement
def _boxes_overlap(a: tuple[int, int, int], b: tuple[int, int, int], gap: int) -> bool:
    (ax, ay, asz), (bx, by, bsz) = a, b
    return not (ax + asz + gap <= bx or bx + bsz + gap <= ax or ay + asz + gap <= by or by + bsz + gap <= ay)


def _try_place(rng: np.random.Generator, side: int, width: int, height: int,
               placed: list[tuple[int, int, int]], centre: bool) -> tuple[int, int] | None:
    """Random top-left for a ``side`` box not overlapping ``placed`` (60 tries)."""
    gap = max(2, min(width, height) // 50)
    for _ in range(60):
        if centre:
            jitter = 0.06 * np.array([width, height])
            x, y = (np.array([width, height]) - side) / 2 + rng.uniform(-1, 1, 2) * jitter
        else:
            x, y = rng.uniform(0, width - side + 1), rng.uniform(0, height - side + 1)
        x, y = int(np.clip(x, 0, width - side)), int(np.clip(y, 0, height - side))
        if not any(_boxes_overlap((x, y, side), p, gap) for p in placed):
            return x, y
    return None


def place_objects(rng: np.random.Generator, pairs: list[tuple[str, str]], width: int,
                  height: int) -> list[ObjectSpec] | None:
    """Size and place non-overlapping objects; ``pairs[0]`` gets the largest area.

    Total target area is 6%-34% of the image; later objects get 25%-55% of the
    first object's area. Returns ``None`` when the objects could not be placed.
    """
    short = min(width, height)
    shares = np.concatenate([[1.0], rng.uniform(0.25, 0.55, len(pairs) - 1)])
    areas = rng.uniform(0.06, 0.34) * width * height * shares / shares.sum()
    specs: list[ObjectSpec] = []
    placed: list[tuple[int, int, int]] = []
    for i, ((kind, color), area) in enumerate(zip(pairs, areas)):
        side = int(np.clip(math.sqrt(area / FILL_RATIO[kind]), max(12, MIN_SIDE[kind] * short), 0.85 * short))
        spot = _try_place(rng, side, width, height, placed, centre=i == 0 and rng.random() < 0.3)
        if spot is None:
            return None
        placed.append((spot[0], spot[1], side))
        digit = int(rng.integers(10)) if kind == "digit" else None
        time = sample_clock_time(rng) if kind == "clock" else None
        specs.append(ObjectSpec(kind, color, side, spot[0], spot[1], digit, time))
    return specs


# --------------------------------------------------------------------------- compositing
def paint_objects(plate: np.ndarray, specs: list[ObjectSpec]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Paint ``specs`` onto a copy of ``plate``.

    Returns ``(image uint8 HxWx3, mask uint8 HxW in {0, 255}, per-object stats)``; stats
    hold the tight pixel ``box`` ``[x0, y0, x1, y1]`` (x1/y1 exclusive), ``area`` in
    pixels and ``centroid`` ``[cx, cy]`` (pixel centres), in ``specs`` order.
    """
    image = plate.copy()
    union = np.zeros(plate.shape[:2], dtype=bool)
    stats = []
    for spec in specs:
        rgba, mask = render_object(spec)
        window = (slice(spec.y, spec.y + spec.size), slice(spec.x, spec.x + spec.size))
        image[window][mask] = rgba[..., :3][mask]
        union[window] |= mask
        ys, xs = np.nonzero(mask)
        stats.append({
            "box": [int(spec.x + xs.min()), int(spec.y + ys.min()), int(spec.x + xs.max() + 1), int(spec.y + ys.max() + 1)],
            "area": int(mask.sum()),
            "centroid": [round(float(spec.x + xs.mean() + 0.5), 1), round(float(spec.y + ys.mean() + 0.5), 1)],
        })
    return image, union.astype(np.uint8) * 255, stats
