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

from ..fp8 import fused
from ..fp8.attention import QuantizedQ
from ..fp8.kernel_plan import Kernel
from .layers import NORM_EPS, rms_norm

_qk_norm_rope = torch.compiler.disable(fused.qk_norm_rope)  # a Triton kernel on GPUs: opaque to torch.compile
_qk_norm_rope_quant_q = torch.compiler.disable(fused.qk_norm_rope_quant_q)
# The fused prologue computes in fp32 and writes one of these dtypes.
FUSED_PROLOGUE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


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


def reference_rope_tables(grid: tuple[int, int, int], w_offset: int, axes_dim: tuple[int, int, int], theta: float,
                          device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Rotations of a reference latent's tokens (``ref_latent``, placed before the image tokens): every frame at time
    position -1, rows at 0.., columns shifted right by ``w_offset`` (the video's width in patches), as ComfyUI
    places them."""
    t, h, w = grid
    at = _axis_angles(2, axes_dim[0], theta, device)[1:].neg()[:, None, None, :].expand(t, h, w, -1)
    ah = _axis_angles(h, axes_dim[1], theta, device)[None, :, None, :].expand(t, h, w, -1)
    aw = _axis_angles(w + w_offset, axes_dim[2], theta, device)[w_offset:][None, None, :, :].expand(t, h, w, -1)
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


def split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, L, 3*H*D]`` -> q, k, v ``[B, H, L, D]`` (views, no copy)."""
    b, L, _ = qkv.shape
    q, k, v = qkv.view(b, L, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


class RopeTables:
    """The rotations of one forward and the q/k prologue that applies them to any run of tokens.

    Sequences are image tokens first, then text (the double block's text stream is text only). With ``fused`` the
    prologue is ``fp8.fused.qk_norm_rope`` (split, RMS norm in fp32, RoPE on the leading image tokens, one write
    of ``[B, H, L, D]``), run by the kernel the plan names; otherwise the eager ``norm_rope`` in ``norm_dtype``
    (ComfyUI's numerics, any dtype incl. float64).
    """

    def __init__(self, freqs: Tensor, n_txt: int, norm_dtype: torch.dtype, out_dtype: torch.dtype,
                 fused: bool) -> None:
        self.n_img = freqs.shape[0]
        self.norm_dtype, self.out_dtype = norm_dtype, out_dtype
        self.fused = fused and freqs.dtype == torch.complex64 and norm_dtype == torch.float32 \
            and out_dtype in FUSED_PROLOGUE_DTYPES
        if self.fused:
            self.cos, self.sin = freqs.real.contiguous(), freqs.imag.contiguous()
        else:
            self.joint = append_identity(freqs, n_txt)

    def qk_prologue(self, qkv: Tensor, heads: int, q_scale: Tensor, k_scale: Tensor, start: int, rotate: bool,
                    kernel: Kernel) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v ``[B, H, L, D]`` from ``qkv [B, L, 3*H*D]`` holding tokens ``start .. start+L`` of the
        image-first sequence; ``rotate=False`` for a text-only stream. q and k are normalised (and rotated where
        they are image tokens); v is passed through. All three in ``out_dtype``. ``kernel``: the plan's
        ``prologue``, for the fused prologue."""
        L = qkv.shape[1]
        if self.fused:
            n_rope, rows = self._rope_rows(start, L, rotate)
            q, k, v = _qk_norm_rope(qkv, q_scale, k_scale, self.cos[rows], self.sin[rows], n_rope, NORM_EPS, kernel)
            return q.to(self.out_dtype), k.to(self.out_dtype), v.to(self.out_dtype)  # no-ops unless a mode override
        q, k, v = split_heads(qkv, heads)
        freqs = self.joint[start:start + L] if rotate else None
        return (norm_rope(q, q_scale, freqs, self.norm_dtype, self.out_dtype),
                norm_rope(k, k_scale, freqs, self.norm_dtype, self.out_dtype), v.to(self.out_dtype))

    def qk_prologue_quantized(self, qkv: Tensor, q_scale: Tensor, k_scale: Tensor, start: int, rotate: bool,
                              q_out: QuantizedQ, kv_out: Tensor, row0: int, kernel: Kernel) -> None:  # fmt: skip
        """The fused prologue in front of FP8 attention (needs ``fused``): the tokens ``start .. start+L`` of
        ``qkv`` become rows ``row0 ..`` of the int8 queries ``q_out`` and of the k/v buffer ``kv_out``.
        ``kernel``: the plan's ``quant_prologue``."""
        n_rope, rows = self._rope_rows(start, qkv.shape[1], rotate)
        _qk_norm_rope_quant_q(qkv, q_scale, k_scale, self.cos[rows], self.sin[rows], n_rope, NORM_EPS, q_out, kv_out,
                              row0, kernel)  # fmt: skip

    def _rope_rows(self, start: int, n: int, rotate: bool) -> tuple[int, slice]:
        """How many of the tokens ``start .. start+n`` are image tokens to rotate, and their table rows."""
        n_rope = min(max(self.n_img - start, 0), n) if rotate else 0
        return n_rope, slice(start, start + n_rope)


__all__ = ["rope_tables", "reference_rope_tables", "append_identity", "apply_rope", "norm_rope", "split_heads",
           "RopeTables", "FUSED_PROLOGUE_DTYPES"]
