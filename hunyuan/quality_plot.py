"""The quality report's picture: error per denoising step on a log scale, one line per run, drawn with Pillow.

Pillow ships with ComfyUI; for the command line it is an optional dependency (``pip install pillow``), and
:func:`line_plot` says so when it is missing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Series", "PALETTE", "FLOOR_COLOR", "PILLOW_MISSING", "line_plot", "png_bytes"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207),
)
FLOOR_COLOR = (128, 128, 128)
PILLOW_MISSING = "the quality plot needs Pillow: pip install pillow (ComfyUI ships it)"
_DARK, _GRID = (0, 0, 0), (225, 225, 225)


@dataclass(frozen=True)
class Series:
    """One line: a value per step (inf/NaN are drawn on the INF row), its legend label, colour, dashed or not."""

    label: str
    values: Sequence[float]
    color: tuple[int, int, int]
    dashed: bool = False


def _pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError(PILLOW_MISSING) from None
    return Image, ImageDraw, ImageFont


def _log_range(series: Sequence[Series]) -> tuple[int, int]:
    """Whole decades covering every finite positive value."""
    vals = [v for s in series for v in s.values if math.isfinite(v) and v > 0]
    if not vals:
        return -6, 0
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    return lo, max(hi, lo + 1)


def _dashed(draw, p0: tuple[float, float], p1: tuple[float, float], color, width: int = 2) -> None:
    """6 px on, 4 px off along the segment."""
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    start = 0.0
    while start < length:
        a, b = start / length, min(start + 6, length) / length
        draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=color,
                  width=width)
        start += 10


def _text(draw, x: float, y: float, text: str, font, align: str = "left") -> None:
    """Text whose left edge (or right edge / centre top, with ``align`` "right" / "centre") is at x, vertically
    centred on y for "right"; without text anchors, which bitmap fonts of older Pillow lack."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    if align == "right":
        x, y = x - w, y - h / 2
    elif align == "centre":
        x -= w / 2
    draw.text((x - left, y - top), text, fill=_DARK, font=font)


def line_plot(series: Sequence[Series], title: str, x_label: str = "step", width: int = 800,
              height: int = 420) -> np.ndarray:
    """Render the series on a log10 y axis over steps 0..n-1; returns ``[height, width, 3]`` uint8.

    Exact zeros get their own "0" row below the lowest decade and inf/NaN steps an "inf" row above the highest, so
    a bit-identical run and a broken one are both visible, never silently dropped or confused with small values.
    """
    if not series:
        raise ValueError("line_plot needs at least one series")
    n = max(len(s.values) for s in series)
    if n == 0:
        raise ValueError("line_plot: every series is empty")
    legend_w = min(260, width // 3)
    left, right, top, bottom = 56, width - legend_w - 10, 28, height - 34
    if right - left < 50 or bottom - top < 50:
        raise ValueError(f"line_plot: {width}x{height} pixels is too small for a plot")
    Image, ImageDraw, ImageFont = _pillow()
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    lo, hi = _log_range(series)
    values = [v for s in series for v in s.values]
    zero_row = lo - 0.5 if any(v == 0 for v in values) else None
    inf_row = hi + 0.5 if any(not math.isfinite(v) for v in values) else None
    y_min, y_max = zero_row if zero_row is not None else lo, inf_row if inf_row is not None else hi

    def px(i: float) -> float:
        return left + (right - left) * (i / (n - 1) if n > 1 else 0.5)

    def py(v: float) -> float:
        e = y_max if not math.isfinite(v) else y_min if v <= 0 else min(max(math.log10(v), lo), hi)
        return bottom - (bottom - top) * (e - y_min) / (y_max - y_min)

    rows = [(10.0**e, f"1e{e}") for e in range(lo, hi + 1)]
    rows += [(0.0, "0")] if zero_row is not None else []
    rows += [(math.inf, "inf")] if inf_row is not None else []
    for v, label in rows:
        y = py(v)
        draw.line([(left, y), (right, y)], fill=_GRID)
        _text(draw, left - 6, y, label, font, "right")
    for i in range(0, n, max(1, math.ceil(n / 12))):
        x = px(i)
        draw.line([(x, bottom), (x, bottom + 4)], fill=_DARK)
        _text(draw, x, bottom + 6, str(i), font, "centre")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=_DARK)
    _text(draw, (left + right) / 2, bottom + 20, x_label, font, "centre")
    _text(draw, left, 8, title, font)

    for s in series:
        pts = [(px(i), py(v)) for i, v in enumerate(s.values)]
        for a, b in zip(pts, pts[1:]):
            _dashed(draw, a, b, s.color) if s.dashed else draw.line([a, b], fill=s.color, width=2)
        if not s.dashed:
            for x, y in pts:
                draw.rectangle([x - 2, y - 2, x + 2, y + 2], fill=s.color)

    lx, ly = right + 16, top
    for s in series:
        if ly + 12 > height:
            break
        if s.dashed:
            draw.line([(lx, ly + 5), (lx + 11, ly + 5)], fill=s.color, width=2)
        else:
            draw.rectangle([lx, ly, lx + 10, ly + 10], fill=s.color)
        _text(draw, lx + 16, ly, s.label[:40], font)
        ly += 16
    return np.asarray(img, dtype=np.uint8).copy()


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB PNG of a ``[H, W, 3]`` uint8 array."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"png_bytes needs a [H, W, 3] uint8 array, got {image.dtype} {image.shape}")
    Image, _, _ = _pillow()
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
