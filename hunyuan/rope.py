"""3-D rotary position embedding of HunyuanVideo, numerically as in ComfyUI.

Each head dim is split into (t, h, w) parts (``axes_dim``, [16, 56, 56] for the
released model); each part rotates interleaved pairs ``(x[2i], x[2i+1])`` by
``pos * theta ** (-2i / d)``. Angles and cos/sin are computed in float64 and stored
in fp32 (ComfyUI's ``flux/math.py: rope`` does the same), so fp32 tables match it
bit for bit. A table is one complex tensor ``cos + i sin`` so applying it is one
complex multiply (``.real``/``.imag`` give cos and sin to a fused kernel). Text tokens
have position 0 in ComfyUI, i.e. the identity rotation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layers import rms_norm


def _axis_angles(n: int, dim: int, theta: float, device) -> Tensor:
    """Angles ``[n, dim // 2]`` (float64) for positions 0..n-1 along one axis."""
    exponent = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=device)
    omega = 1.0 / torch.pow(theta, exponent)
    return torch.arange(n, dtype=torch.float64, device=device)[:, None] * omega[None]


def rope_tables(grid: tuple[int, int, int], axes_dim: tuple[int, int, int], theta: float, device,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Rotations ``cos + i sin`` ``[T*H*W, head_dim // 2]`` (complex of ``dtype``) for a token grid (t, h, w),
    tokens in t-h-w order."""
    t, h, w = grid
    at = _axis_angles(t, axes_dim[0], theta, device)[:, None, None, :].expand(t, h, w, -1)
    ah = _axis_angles(h, axes_dim[1], theta, device)[None, :, None, :].expand(t, h, w, -1)
    aw = _axis_angles(w, axes_dim[2], theta, device)[None, None, :, :].expand(t, h, w, -1)
    angles = torch.cat([at, ah, aw], dim=-1).reshape(t * h * w, -1)
    return torch.complex(torch.cos(angles).to(dtype), torch.sin(angles).to(dtype))


def append_identity(freqs: Tensor, n: int) -> Tensor:
    """Extend a table by ``n`` identity rows (text tokens sit at position 0: no rotation)."""
    return torch.cat([freqs, freqs.new_ones(n, freqs.shape[1])])


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` of ``x [B, H, L, D]`` by ``freqs [L, D/2]``, in its precision."""
    xc = torch.view_as_complex(x.to(freqs.real.dtype).unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * freqs).flatten(-2)


def norm_rope(x: Tensor, scale: Tensor, rope: Tensor | None, norm_dtype: torch.dtype,
              out_dtype: torch.dtype) -> Tensor:
    """RMS q/k norm then RoPE (if tables are given), one cast to ``out_dtype`` at the end.

    ``x`` is ``[B, H, L, D]``; this is the step a fused norm+RoPE+FP8 kernel replaces.
    """
    y = rms_norm(x, scale, norm_dtype)
    if rope is not None:
        y = apply_rope(y, rope)
    return y.to(out_dtype)


__all__ = ["rope_tables", "append_identity", "apply_rope", "norm_rope"]
