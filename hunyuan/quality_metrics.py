"""Numpy-only comparison metrics for the quality report: relative L2, cosine, PSNR, SSIM.

Everything is computed in float64 so the metric itself adds no error to the FP8-vs-bf16 figures it reports.
No scikit-image or scipy: SSIM is the Wang et al. (2004) definition written out with a separable Gaussian window.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rel_l2", "cosine", "psnr", "ssim", "SSIM_WINDOW", "SSIM_SIGMA"]

SSIM_WINDOW = 11  # Wang et al.: 11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def _pair(a: np.ndarray, ref: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if a.shape != ref.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs reference {ref.shape}")
    if a.size == 0:
        raise ValueError(f"{what}: empty arrays")
    return a, ref


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """``||a - ref|| / ||ref||``; NaN/inf anywhere gives inf (a broken run must never look accurate)."""
    a, ref = _pair(a, ref, "rel_l2")
    if not (np.isfinite(a).all() and np.isfinite(ref).all()):
        return math.inf
    num = float(np.linalg.norm((a - ref).ravel()))
    den = float(np.linalg.norm(ref.ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def cosine(a: np.ndarray, ref: np.ndarray) -> float:
    """Cosine similarity of the flattened arrays; NaN input gives NaN, two zero arrays count as identical (1)."""
    a, ref = _pair(a, ref, "cosine")
    if not (np.isfinite(a).all() and np.isfinite(ref).all()):
        return math.nan
    na, nr = float(np.linalg.norm(a.ravel())), float(np.linalg.norm(ref.ravel()))
    if na == 0.0 or nr == 0.0:
        return 1.0 if na == nr else 0.0
    return float(np.dot(a.ravel(), ref.ravel()) / (na * nr))


def _frames(a: np.ndarray, ref: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames as ``[F, H, W, C]`` float64 (a single ``[H, W, C]`` image is one frame)."""
    a, ref = _pair(a, ref, what)
    if a.ndim == 3:
        a, ref = a[None], ref[None]
    if a.ndim != 4:
        raise ValueError(f"{what}: expected frames [F, H, W, C] or an image [H, W, C], got shape {a.shape}")
    return a, ref


def psnr(a: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB from one MSE over the whole clip (per-frame averaging would turn one identical frame into inf).

    inf when the clips are identical; NaN/inf input gives 0 dB so a broken run never looks good.
    """
    a, ref = _frames(a, ref, "psnr")
    if not (np.isfinite(a).all() and np.isfinite(ref).all()):
        return 0.0
    mse = float(np.mean((a - ref) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter2d_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over axes 0 and 1 of ``[H, W, C]``."""
    n = g.size
    x = np.lib.stride_tricks.sliding_window_view(x, n, axis=0) @ g  # [H-n+1, W, C]
    return np.lib.stride_tricks.sliding_window_view(x, n, axis=1) @ g  # [H-n+1, W-n+1, C]


def ssim(a: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM (Gaussian 11x11, sigma 1.5, per channel, 'valid' windows), averaged over frames and channels.

    Frames are processed one at a time so a long 720p clip needs a few frames' worth of memory, not the whole clip.
    """
    a, ref = _frames(a, ref, "ssim")
    _, h, w, _ = a.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    if not (np.isfinite(a).all() and np.isfinite(ref).all()):
        return 0.0
    g = _gaussian(SSIM_WINDOW, SSIM_SIGMA)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    per_frame = []
    for x, y in zip(a, ref):
        mx, my = _filter2d_valid(x, g), _filter2d_valid(y, g)
        sxx = _filter2d_valid(x * x, g) - mx * mx
        syy = _filter2d_valid(y * y, g) - my * my
        sxy = _filter2d_valid(x * y, g) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        per_frame.append(float(s.mean()))
    return float(np.mean(per_frame))
