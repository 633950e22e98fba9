"""A small log-scale line plot rendered with numpy and written as PNG with zlib + struct (no matplotlib).

The quality report needs one picture, error per denoising step with one line per candidate, in environments
(ComfyUI portable, headless servers) where plotting libraries are often missing. Text is a 5x7 bitmap font with
upper-case letters, digits and a few symbols; lower-case input is drawn upper-case.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Series", "PALETTE", "FLOOR_COLOR", "line_plot", "encode_png", "write_png"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207),
)
FLOOR_COLOR = (128, 128, 128)

# 5x7 glyphs: seven rows of five bits, bit 4 is the leftmost column.
_FONT: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    "-": (0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00), ".": (0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C),
    "+": (0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00), ":": (0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00),
    "/": (0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00), "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08), "_": (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F),
    "=": (0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00), "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    ",": (0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08), " ": (0,) * 7,
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04),
}
_GLYPH_W, _GLYPH_H, _ADVANCE = 5, 7, 6


@dataclass(frozen=True)
class Series:
    """One line: a value per step (inf/NaN are drawn on the INF row), its legend label, colour, dashed or not."""

    label: str
    values: Sequence[float]
    color: tuple[int, int, int]
    dashed: bool = False


def _text(img: np.ndarray, x: int, y: int, text: str, color: tuple[int, int, int], scale: int = 1) -> None:
    """Draw ``text`` with its top-left corner at (x, y), clipped to the image."""
    h, w, _ = img.shape
    for i, ch in enumerate(text.upper()):
        rows = _FONT.get(ch, _FONT["?"])
        gx = x + i * _ADVANCE * scale
        for r, bits in enumerate(rows):
            for c in range(_GLYPH_W):
                if bits >> (_GLYPH_W - 1 - c) & 1:
                    y0, x0 = y + r * scale, gx + c * scale
                    if 0 <= y0 and y0 + scale <= h and 0 <= x0 and x0 + scale <= w:
                        img[y0:y0 + scale, x0:x0 + scale] = color


def _text_width(text: str, scale: int = 1) -> int:
    return len(text) * _ADVANCE * scale


def _segment(img: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], color: tuple[int, int, int],
             dashed: bool, width: int = 2) -> None:
    """A thick straight segment (points stamped every pixel; dashes 6 px on, 4 px off)."""
    (x0, y0), (x1, y1) = p0, p1
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    h, w, _ = img.shape
    for k in range(n):
        if dashed and k % 10 >= 6:
            continue
        t = k / max(n - 1, 1)
        x, y = int(round(x0 + t * (x1 - x0))), int(round(y0 + t * (y1 - y0)))
        img[max(y - width // 2, 0):min(y + (width + 1) // 2, h), max(x - width // 2, 0):min(x + (width + 1) // 2, w)] \
            = color


def _log_range(series: Sequence[Series]) -> tuple[int, int]:
    """Whole decades covering every finite positive value."""
    vals = [v for s in series for v in s.values if math.isfinite(v) and v > 0]
    if not vals:
        return -6, 0
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    return lo, max(hi, lo + 1)


def line_plot(series: Sequence[Series], title: str, x_label: str = "step", width: int = 800,
              height: int = 420) -> np.ndarray:
    """Render the series on a log10 y axis over steps 0..n-1; returns ``[height, width, 3]`` uint8.

    Exact zeros get their own "0" row below the lowest decade and inf/NaN steps an "INF" row above the highest, so
    a bit-identical run and a broken one are both visible, never silently dropped or confused with small values.
    """
    if not series:
        raise ValueError("line_plot needs at least one series")
    n = max(len(s.values) for s in series)
    if n == 0:
        raise ValueError("line_plot: every series is empty")
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    legend_w = min(260, width // 3)
    left, right, top, bottom = 48, width - legend_w - 10, 28, height - 30
    if right - left < 50 or bottom - top < 50:
        raise ValueError(f"line_plot: {width}x{height} pixels is too small for a plot")
    lo, hi = _log_range(series)
    values = [v for s in series for v in s.values]
    zero_row = lo - 0.5 if any(v == 0 for v in values) else None
    inf_row = hi + 0.5 if any(not math.isfinite(v) for v in values) else None
    y_min, y_max = zero_row if zero_row is not None else lo, inf_row if inf_row is not None else hi
    dark, grid = (0, 0, 0), (225, 225, 225)

    def px(i: float) -> float:
        return left + (right - left) * (i / (n - 1) if n > 1 else 0.5)

    def py(v: float) -> float:
        e = y_max if not math.isfinite(v) else y_min if v <= 0 else min(max(math.log10(v), lo), hi)
        return bottom - (bottom - top) * (e - y_min) / (y_max - y_min)

    rows = [(10.0**e, f"1E{e}") for e in range(lo, hi + 1)]
    rows += [(0.0, "0")] if zero_row is not None else []
    rows += [(math.inf, "INF")] if inf_row is not None else []
    for v, label in rows:
        y = int(round(py(v)))
        img[y, left:right + 1] = grid
        _text(img, left - 4 - _text_width(label), y - 3, label, dark)
    stride = max(1, math.ceil(n / 12))
    for i in range(0, n, stride):
        x = int(round(px(i)))
        img[bottom:bottom + 4, x] = dark
        _text(img, x - _text_width(str(i)) // 2, bottom + 6, str(i), dark)
    img[top:bottom + 1, left] = dark
    img[bottom, left:right + 1] = dark
    _text(img, (left + right - _text_width(x_label)) // 2, bottom + 17, x_label, dark)
    _text(img, left, 8, title, dark)

    for s in series:
        pts = [(px(i), py(v)) for i, v in enumerate(s.values)]
        for a, b in zip(pts, pts[1:]):
            _segment(img, a, b, s.color, s.dashed)
        if not s.dashed:
            for x, y in pts:
                xi, yi = int(round(x)), int(round(y))
                img[max(yi - 2, 0):yi + 3, max(xi - 2, 0):xi + 3] = s.color

    lx, ly = right + 16, top
    max_chars = (width - lx - 20) // _ADVANCE
    for s in series:
        if ly + 12 > height:
            break
        if s.dashed:
            _segment(img, (lx, ly + 5), (lx + 11, ly + 5), s.color, dashed=False)
        else:
            img[ly:ly + 11, lx:lx + 11] = s.color
        _text(img, lx + 16, ly + 2, s.label[:max_chars], dark)
        ly += 16
    return img


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of a ``[H, W, 3]`` uint8 array (filter 0 on every row, zlib level 9)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_png needs a [H, W, 3] uint8 array, got {image.dtype} {image.shape}")
    h, w, _ = image.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), image.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write the PNG atomically (temp file + rename), so a crash never leaves a truncated plot behind."""
    path = Path(path)
    data = encode_png(image)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
