"""Background plate renderers: textured rooms, wooden desks and phone app screens.

Every renderer takes a ``numpy.random.Generator`` plus the image width/height and
returns an ``(height, width, 3)`` uint8 RGB array. All randomness comes from the
generator, so the same generator state always yields the same plate.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND_KINDS: tuple[str, ...] = ("room", "desk", "screen")

Color = tuple[int, int, int]


# --------------------------------------------------------------------------- helpers
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (all in [0, 1]) to a float32 RGB vector in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _rgb(vec: np.ndarray) -> Color:
    """Float RGB vector to an int tuple usable by ``ImageDraw``."""
    r, g, b = np.clip(np.rint(vec), 0, 255).astype(int).tolist()
    return (r, g, b)


def _shape(draw: ImageDraw.ImageDraw, method: str, xy: list[float], **kwargs: object) -> None:
    """Draw a box-based primitive, silently skipping degenerate boxes (tiny images)."""
    x0, y0, x1, y1 = xy
    if x1 >= x0 and y1 >= y0:
        getattr(draw, method)([x0, y0, x1, y1], **kwargs)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row/column coordinate grids as float32."""
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float32), xx.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Band-limited noise (unit-ish variance) made by bicubic upsampling a random grid."""
    ch = max(2, round(cells * h / max(h, w)))
    cw = max(2, round(cells * w / max(h, w)))
    small = rng.standard_normal((ch, cw)).astype(np.float32)
    big = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _lighting(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """Soft radial light falloff from a random light position, shape ``(h, w, 1)``."""
    yy, xx = _grid(h, w)
    lx, ly = rng.uniform(-0.2, 1.2, size=2)
    dist = np.sqrt((xx / w - lx) ** 2 + (yy / h - ly) ** 2)
    return (1.0 + strength * (0.6 - dist)).clip(0.55, 1.35)[..., None]


def _finish(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add luminance + chroma per-pixel noise and quantise to uint8."""
    noise = rng.normal(0.0, sigma, img.shape[:2] + (1,)) + rng.normal(0.0, sigma * 0.4, img.shape)
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- room
def _wall_stripes(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, base: np.ndarray) -> np.ndarray:
    period, duty, amp = rng.uniform(16, 48), rng.uniform(0.3, 0.6), rng.uniform(0.06, 0.14)
    phase = (xx / period) % 1.0
    shade = np.where(phase < duty, 1.0 + amp, 1.0 - amp)
    shade = np.where(np.abs(phase - duty) < 1.2 / period, 1.0 - 2.5 * amp, shade)
    return base * shade[..., None]


def _wall_brick(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, base: np.ndarray) -> np.ndarray:
    bh = rng.uniform(10, 20)
    bw, mortar_w = bh * rng.uniform(2.0, 3.0), max(1.0, bh * 0.12)
    row = np.floor(yy / bh)
    xo = xx + (row % 2) * bw / 2
    col = np.floor(xo / bw)
    if rng.random() < 0.5:
        base = _hsv(rng.uniform(0.0, 0.06), rng.uniform(0.45, 0.7), rng.uniform(0.5, 0.75))
    tint = rng.uniform(0.82, 1.12, 1024)[(row * 131 + col * 17).astype(np.int64) % 1024]
    img = base * tint[..., None]
    mortar = ((yy % bh) < mortar_w) | ((xo % bw) < mortar_w)
    img[mortar] = _hsv(0.0, 0.0, rng.uniform(0.7, 0.85))
    return img


def _wall_damask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, base: np.ndarray) -> np.ndarray:
    period, amp = rng.uniform(18, 40), rng.uniform(0.06, 0.12)
    a = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
    b = np.cos(2 * np.pi * (xx + yy) / (period * 0.7))
    shade = 1.0 + amp * np.tanh(3.0 * a) + 0.35 * amp * b
    return base * shade[..., None]


def _wall(rng: np.random.Generator, hh: int, w: int) -> np.ndarray:
    """Wall region above the horizon: pattern times a vertical gradient."""
    yy, xx = _grid(hh, w)
    base = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.45), rng.uniform(0.65, 0.9))
    pattern = (_wall_stripes, _wall_brick, _wall_damask)[int(rng.integers(3))]
    img = pattern(rng, yy, xx, base)
    grad = 1.0 - rng.uniform(0.05, 0.2) * yy / hh + 0.04 * _smooth_noise(rng, hh, w, 6)
    return img * grad[..., None]


def _floor(rng: np.random.Generator, fh: int, w: int) -> np.ndarray:
    """Wooden floor boards receding to the horizon (simple perspective)."""
    yy, xx = _grid(fh, w)
    t = (yy + 1.0) / fh
    depth = 0.25 + 0.75 * t
    board_w = rng.uniform(0.08, 0.16) * w
    xp = (xx - w / 2) / depth / board_w
    board = np.floor(xp).astype(np.int64)
    seam = np.abs(xp - np.round(xp)) * board_w * depth < max(1.0, 0.004 * w)
    tint = rng.uniform(0.8, 1.15, 512)[board % 512]
    grain_period = rng.uniform(0.05, 0.12)
    grain = np.sin(2 * np.pi * xp / grain_period + 2.5 * _smooth_noise(rng, fh, w, 8))
    shade = tint * (1.0 + 0.07 * grain) * (0.7 + 0.3 * t)
    shade[seam] *= 0.55
    base = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.7))
    return base * shade[..., None]


def _window(rng: np.random.Generator, box: np.ndarray, frame: int) -> None:
    """Paint a window (frame, sky with clouds, mullions) into ``box`` in place."""
    bh, bw, _ = box.shape
    box[:] = _hsv(0.0, 0.0, 0.93) if rng.random() < 0.6 else _hsv(0.07, 0.5, 0.45)
    ih, iw = bh - 2 * frame, bw - 2 * frame
    yy, _ = _grid(ih, iw)
    top = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.4, 0.7), rng.uniform(0.8, 1.0))
    sky = top[None, None, :] * (1.0 - 0.25 * yy / ih)[..., None] + 60.0 * (yy / ih)[..., None]
    cloud = np.clip(_smooth_noise(rng, ih, iw, 5) - 0.5, 0.0, 1.0)[..., None]
    box[frame:-frame, frame:-frame] = sky * (1 - cloud) + 245.0 * cloud
    mid_x, mid_y, bar = bw // 2, bh // 2, max(2, frame // 2)
    box[:, mid_x - bar // 2: mid_x + bar - bar // 2] = box[0, 0]
    box[mid_y - bar // 2: mid_y + bar - bar // 2, :] = box[0, 0]


def _picture(rng: np.random.Generator, box: np.ndarray, frame: int) -> None:
    """Paint a framed landscape picture (sky, mountain, ground, sun) into ``box``."""
    bh, bw, _ = box.shape
    box[:] = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.45))
    ih, iw = bh - 2 * frame, bw - 2 * frame
    yy, xx = _grid(ih, iw)
    art = np.empty((ih, iw, 3), np.float32)
    art[:] = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.2, 0.6), rng.uniform(0.7, 1.0))
    peak_x, slope = rng.uniform(0.2, 0.8) * iw, rng.uniform(0.5, 1.2)
    art[yy > ih * 0.3 + slope * np.abs(xx - peak_x)] = _hsv(rng.uniform(0.6, 0.8), 0.3, 0.5)
    art[yy > ih * rng.uniform(0.6, 0.75)] = _hsv(rng.uniform(0.2, 0.35), 0.6, 0.55)
    sx, sy, sr = rng.uniform(0.15, 0.85) * iw, rng.uniform(0.1, 0.3) * ih, 0.08 * min(ih, iw) + 2
    art[(xx - sx) ** 2 + (yy - sy) ** 2 < sr**2] = _hsv(0.13, 0.8, 1.0)
    box[frame:-frame, frame:-frame] = art


def _wall_feature(rng: np.random.Generator, img: np.ndarray, horizon: int) -> None:
    """Add a window or a framed picture (with a drop shadow) to the wall."""
    h, w, _ = img.shape
    fw, fh = int(w * rng.uniform(0.2, 0.35)), int(horizon * rng.uniform(0.35, 0.55))
    x0 = int(rng.uniform(0.05, 0.95) * (w - fw))
    y0 = int(rng.uniform(0.08, 0.3) * horizon)
    fh = min(fh, horizon - y0 - 8)
    frame = max(3, int(0.07 * min(fw, fh)))
    sh = max(2, frame // 2)
    img[y0 + sh: y0 + fh + sh, x0 + sh: x0 + fw + sh] *= 0.8
    painter = _window if rng.random() < 0.5 else _picture
    painter(rng, img[y0: y0 + fh, x0: x0 + fw], frame)


def render_room(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A room: patterned wall, baseboard, perspective wooden floor, window or picture."""
    horizon = int(height * rng.uniform(0.55, 0.72))
    img = np.empty((height, width, 3), np.float32)
    img[:horizon] = _wall(rng, horizon, width)
    img[horizon:] = _floor(rng, height - horizon, width)
    board = max(3, int(0.025 * height))
    img[horizon - board: horizon] = _hsv(0.08, rng.uniform(0.0, 0.5), rng.uniform(0.3, 0.95))
    img[horizon - board] *= 1.15
    _wall_feature(rng, img, horizon)
    img *= _lighting(rng, height, width, rng.uniform(0.2, 0.4))
    return _finish(img, rng, rng.uniform(2.5, 5.0))


# --------------------------------------------------------------------------- desk
def _wood(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Wood texture: warped sinusoidal grain, fibre noise and plank seams."""
    yy, xx = _grid(h, w)
    theta = rng.uniform(-0.2, 0.2) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta) + 2.0 * (h + w)
    warp = _smooth_noise(rng, h, w, 5) * rng.uniform(6, 16)
    warp += np.sin(u * rng.uniform(0.005, 0.02)) * rng.uniform(3, 10)
    grain = np.sin(2 * np.pi * (v + warp) / rng.uniform(5, 12))
    fibre = _smooth_noise(rng, h, w, max(8, w // 6))
    plank_w = rng.uniform(0.18, 0.35) * max(h, w)
    plank = np.floor(v / plank_w).astype(np.int64)
    tint = rng.uniform(0.85, 1.12, 64)[plank % 64]
    shade = tint * (1.0 + 0.11 * grain + 0.05 * fibre)
    shade[(v % plank_w) < max(1.0, 0.004 * w)] *= 0.5
    base = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.75))
    return base * shade[..., None]


def _keyboard(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    kw, kh = int(w * rng.uniform(0.5, 0.7)), int(h * rng.uniform(0.15, 0.2))
    x0 = int(rng.uniform(0.05, 0.95) * (w - kw))
    y0 = int(h * 0.04) if rng.random() < 0.5 else int(h * 0.96) - kh
    shell = rng.uniform(25, 70)
    _shape(draw, "rounded_rectangle", [x0, y0, x0 + kw, y0 + kh], radius=max(2, kh // 10), fill=_rgb(np.full(3, shell)))
    rows, cols = 4, int(rng.integers(11, 15))
    pad = max(2, kh // 12)
    kx, ky = (kw - 2 * pad) / cols, (kh - 2 * pad) / rows
    key = _rgb(np.full(3, shell + rng.uniform(40, 120)))
    for r in range(rows):
        for c in range(cols):
            bx, by = x0 + pad + c * kx, y0 + pad + r * ky
            _shape(draw, "rectangle", [bx + 1, by + 1, bx + kx - 2, by + ky - 2], fill=key)


def _desk_props(rng: np.random.Generator, img: Image.Image) -> None:
    """Optional desk mat, keyboard, notebook and pen drawn onto ``img``."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.6:
        x0, y0 = rng.uniform(0.05, 0.3) * w, rng.uniform(0.1, 0.35) * h
        x1, y1 = rng.uniform(0.7, 0.95) * w, rng.uniform(0.7, 0.95) * h
        mat = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.5), rng.uniform(0.15, 0.35))
        _shape(draw, "rounded_rectangle", [x0, y0, x1, y1], radius=int(0.03 * w), fill=_rgb(mat))
    if rng.random() < 0.6:
        _keyboard(rng, draw, w, h)
    if rng.random() < 0.5:
        nx0, ny0 = rng.uniform(0.0, 0.7) * w, rng.uniform(0.0, 0.6) * h
        nx1, ny1 = nx0 + rng.uniform(0.2, 0.3) * w, ny0 + rng.uniform(0.25, 0.4) * h
        _shape(draw, "rectangle", [nx0, ny0, nx1, ny1], fill=(242, 240, 230))
        step = max(4, int(h / 40))
        for y in range(int(ny0) + 2 * step, int(ny1) - step, step):
            draw.line([nx0 + 2, y, nx1 - 2, y], fill=(150, 180, 220), width=1)
        draw.line([nx0 + 0.15 * (nx1 - nx0), ny0, nx0 + 0.15 * (nx1 - nx0), ny1], fill=(220, 120, 120))
    if rng.random() < 0.5:
        px, py = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.3) * w
        end = (px + length * np.cos(ang), py + length * np.sin(ang))
        pen = _hsv(rng.uniform(0, 1), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.8))
        draw.line([px, py, *end], fill=_rgb(pen), width=max(3, int(0.012 * w)))


def render_desk(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A wooden desk top seen from above, with optional props and a lighting gradient."""
    wood = np.clip(np.rint(_wood(rng, height, width)), 0, 255).astype(np.uint8)
    pil = Image.fromarray(wood)
    _desk_props(rng, pil)
    img = np.asarray(pil, dtype=np.float32)
    yy, xx = _grid(height, width)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * xx / width + np.sin(ang) * yy / height)
    img = img * (1.0 + rng.uniform(0.1, 0.25) * (ramp - ramp.mean()))[..., None]
    img *= _lighting(rng, height, width, rng.uniform(0.1, 0.3))
    return _finish(img, rng, rng.uniform(2.5, 4.5))


# --------------------------------------------------------------------------- screen
def _status_bar(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int, accent: np.ndarray) -> int:
    """Status bar with clock, signal bars and battery; returns its bottom y."""
    sb = int(0.045 * h)
    _shape(draw, "rectangle", [0, 0, w, sb], fill=_rgb(accent * 0.7))
    fg, u = (240, 240, 240), max(2, sb // 5)
    _shape(draw, "rectangle", [u * 2, u * 2, u * 2 + int(0.08 * w), sb - u * 2], fill=fg)
    for i in range(4):
        x = w - int(0.25 * w) + i * (u + 2)
        _shape(draw, "rectangle", [x, sb - u * 2 - (i + 1) * u // 2 - 1, x + u, sb - u * 2], fill=fg)
    bx = w - int(0.12 * w)
    _shape(draw, "rectangle", [bx, u * 2, bx + int(0.07 * w), sb - u * 2], outline=fg, width=1)
    _shape(draw, "rectangle", [bx + 2, u * 2 + 2, bx + int(0.07 * w * rng.uniform(0.3, 0.95)), sb - u * 2 - 2], fill=fg)
    return sb


def _header(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int, top: int,
            accent: np.ndarray) -> int:
    """App bar with menu icon, title-like bar and an action icon; returns bottom y."""
    hh = int(0.085 * h)
    _shape(draw, "rectangle", [0, top, w, top + hh], fill=_rgb(accent))
    u, fg = max(2, hh // 8), (250, 250, 250)
    for i in range(3):
        y = top + hh // 2 - u + i * u
        _shape(draw, "rectangle", [u * 2, y, u * 2 + hh // 3, y + max(1, u // 2)], fill=fg)
    tw = int(w * rng.uniform(0.25, 0.5))
    _shape(draw, "rounded_rectangle", [hh, top + hh // 2 - u, hh + tw, top + hh // 2 + u], radius=u // 2, fill=fg)
    _shape(draw, "ellipse", [w - hh + u, top + hh // 2 - 2 * u, w - hh + 5 * u, top + hh // 2 + 2 * u], outline=fg, width=2)
    return top + hh


def _list_row(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, y: int, rh: int, theme: dict) -> None:
    """One list row: icon square, two text-like bars, separator and a trailing widget."""
    pad = max(3, rh // 6)
    icon = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 0.8), rng.uniform(0.6, 0.95))
    _shape(draw, "rounded_rectangle", [pad, y + pad, rh - pad, y + rh - pad], radius=rh // 6, fill=_rgb(icon))
    x = rh + pad
    t1 = x + int(w * rng.uniform(0.25, 0.55))
    t2 = x + int(w * rng.uniform(0.15, 0.4))
    bar = max(2, rh // 9)
    _shape(draw, "rounded_rectangle", [x, y + rh // 3 - bar, t1, y + rh // 3 + bar], radius=bar // 2, fill=theme["text"])
    _shape(draw, "rounded_rectangle", [x, y + 2 * rh // 3 - bar // 2, t2, y + 2 * rh // 3 + bar // 2], radius=1, fill=theme["sub"])
    draw.line([x, y + rh - 1, w, y + rh - 1], fill=theme["sep"], width=1)
    cx, cy = w - rh // 2, y + rh // 2
    if rng.random() < 0.4:
        on = rng.random() < 0.5
        _shape(draw, "rounded_rectangle", [cx - rh // 3, cy - rh // 7, cx + rh // 4, cy + rh // 7], radius=rh // 7,
                               fill=theme["accent"] if on else theme["sep"])
        kx = cx + rh // 10 if on else cx - rh // 4
        _shape(draw, "ellipse", [kx - rh // 8, cy - rh // 8, kx + rh // 8, cy + rh // 8], fill=(255, 255, 255))
    else:
        draw.line([cx - bar, cy - 2 * bar, cx + bar, cy, cx - bar, cy + 2 * bar], fill=theme["sub"], width=2)


def _bottom_nav(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int, theme: dict) -> int:
    """Bottom navigation bar with 3-5 icons, one highlighted; returns its top y."""
    nh = int(0.085 * h)
    top = h - nh
    _shape(draw, "rectangle", [0, top, w, h], fill=theme["nav"])
    draw.line([0, top, w, top], fill=theme["sep"], width=1)
    n = int(rng.integers(3, 6))
    active = int(rng.integers(n))
    s = nh // 4
    for i in range(n):
        cx = int((i + 0.5) * w / n)
        fill = theme["accent"] if i == active else theme["sub"]
        _shape(draw, "rounded_rectangle", [cx - s, top + s // 2, cx + s, top + s // 2 + 2 * s], radius=s // 2, fill=fill)
        _shape(draw, "rectangle", [cx - s, top + 3 * s, cx + s, top + 3 * s + max(2, s // 3)], fill=fill)
    return top


def _screen_theme(rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Random light/dark UI theme colours and the background base colour."""
    accent = _hsv(rng.uniform(0, 1), rng.uniform(0.5, 0.85), rng.uniform(0.55, 0.9))
    dark = rng.random() < 0.35
    bg = np.full(3, 30.0 if dark else 246.0) + rng.uniform(-6, 6, 3)
    theme = {
        "accent": _rgb(accent),
        "text": (225, 225, 230) if dark else (45, 45, 55),
        "sub": (130, 130, 140) if dark else (160, 160, 168),
        "sep": (60, 60, 66) if dark else (215, 215, 220),
        "nav": _rgb(bg + (12 if dark else -10)),
        "bg": bg,
        "accent_vec": accent,
    }
    return theme, bg


def render_screen(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A phone app screen: status bar, header, list rows, a button and a bottom nav."""
    theme, bg = _screen_theme(rng)
    yy, _ = _grid(height, width)
    base = bg[None, None, :] * (1.0 - 0.05 * yy / height)[..., None]
    pil = Image.fromarray(np.clip(np.rint(base), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    y = _status_bar(rng, draw, width, height, theme["accent_vec"])
    y = _header(rng, draw, width, height, y, theme["accent_vec"])
    nav_top = _bottom_nav(rng, draw, width, height, theme)
    button = rng.random() < 0.6
    limit = nav_top - (int(0.1 * height) if button else 0)
    rh = int(height * rng.uniform(0.09, 0.13))
    y += int(0.015 * height)
    while y + rh <= limit:
        _list_row(rng, draw, width, y, rh, theme)
        y += rh
    if button:
        by, bh = nav_top - int(0.085 * height), int(0.06 * height)
        _shape(draw, "rounded_rectangle", [int(0.08 * width), by, int(0.92 * width), by + bh], radius=bh // 2, fill=theme["accent"])
        _shape(draw, "rectangle", [int(0.38 * width), by + bh // 2 - 2, int(0.62 * width), by + bh // 2 + 2], fill=(255, 255, 255))
    img = np.asarray(pil, dtype=np.float32) * _lighting(rng, height, width, 0.08)
    return _finish(img, rng, 1.5)


# --------------------------------------------------------------------------- dispatch
def render_background(kind: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Render a plate of ``kind`` (one of :data:`BACKGROUND_KINDS`)."""
    renderers: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
        "room": render_room,
        "desk": render_desk,
        "screen": render_screen,
    }
    if kind not in renderers:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUND_KINDS}")
    return renderers[kind](rng, width, height)
