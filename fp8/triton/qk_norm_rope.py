"""Attention prologue in one pass: split the fused qkv projection, RMS-normalise q and k per head, rotate the
image tokens' q and k (RoPE), and write q, k, v head-first ``[B, H, L, D]`` for SDPA.

One program per token handles all heads, so each token's cos/sin row is read once and the ``[B, L, 3HD] ->
[3, B, H, L, D]`` transpose happens in the store. ``rms_norm_rope_heads`` returns the rotated tile in fp32
registers: a quantizing variant (FP8 attention inputs) only has to reduce its amax before the store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import MAX_HEAD_TILE, check_qkv, prologue_fits, row_num_warps

__all__ = ["qk_norm_rope_triton", "rms_norm_rope_heads"]

@triton.jit
def rms_norm_rope_heads(x, w_ptr, cos, sin, eps, BLOCK_H: tl.constexpr, D: tl.constexpr):
    """``x`` ``[BLOCK_H, D]``: RMS norm over D (fp32, learnable weight), then rotate pairs ``(2i, 2i+1)`` by angle i:
    ``(e, o) -> (e cos - o sin, e sin + o cos)``, ComfyUI's ``apply_rope`` convention. Identity when cos=1, sin=0."""
    x = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    w = tl.load(w_ptr + tl.arange(0, D)).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    even, odd = tl.split(tl.reshape(y, (BLOCK_H, D // 2, 2)))
    rot_even = even * cos[None, :] - odd * sin[None, :]
    rot_odd = even * sin[None, :] + odd * cos[None, :]
    return tl.reshape(tl.join(rot_even, rot_odd), (BLOCK_H, D))


@triton.jit
def _qk_norm_rope_kernel(
    qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, out_ptr,
    L, n_rope, stride_b, stride_l, plane, eps,
    H: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    tok = row - b * L
    plane = plane.to(tl.int64)  # 2 * plane passes 2**31 from B = 3 at 720p
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, D)[None, :]
    mask = heads < H
    src = qkv_ptr + b * stride_b + tok * stride_l + heads * D + dims
    dst = out_ptr + b * (H * L * D) + heads * (L * D) + tok * D + dims
    half = tl.arange(0, D // 2)
    rope = (half < D // 2) & (tok < n_rope)  # text tokens (after the image tokens) get the identity rotation
    cos = tl.load(cos_ptr + tok * (D // 2) + half, mask=rope, other=1.0)
    sin = tl.load(sin_ptr + tok * (D // 2) + half, mask=rope, other=0.0)
    q = rms_norm_rope_heads(tl.load(src, mask=mask, other=0.0), qw_ptr, cos, sin, eps, BLOCK_H, D)
    tl.store(dst, q.to(out_ptr.dtype.element_ty), mask=mask)
    k = rms_norm_rope_heads(tl.load(src + H * D, mask=mask, other=0.0), kw_ptr, cos, sin, eps, BLOCK_H, D)
    tl.store(dst + plane, k.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + 2 * plane, tl.load(src + 2 * H * D, mask=mask), mask=mask)


def qk_norm_rope_triton(
    qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    n_rope_tokens: int, eps: float = 1e-6, *, out: torch.Tensor | None = None, num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv`` ``[B, L, 3*H*D]`` -> ``(q, k, v)`` each ``[B, H, L, D]`` in qkv's dtype (views of one
    ``[3, B, H, L, D]`` buffer, ``out`` when given). Only the first ``n_rope_tokens`` tokens are rotated."""
    B, L, H, D = check_qkv(qkv, q_weight, k_weight, cos, sin, n_rope_tokens)
    if not prologue_fits(H, D):
        raise ValueError(f"the Triton prologue needs a power-of-two head_dim and heads*head_dim <= {MAX_HEAD_TILE}, "
                         f"got H={H}, D={D}: use fp8.fused.qk_norm_rope, which falls back to the torch reference")
    shape = (3, B, H, L, D)
    if out is None:
        out = torch.empty(shape, dtype=qkv.dtype, device=qkv.device)
    elif tuple(out.shape) != shape or out.dtype != qkv.dtype or out.device != qkv.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {qkv.dtype} {list(shape)} tensor on {qkv.device}, "
                         f"got {out.dtype} {list(out.shape)} on {out.device} (contiguous={out.is_contiguous()})")
    block_h = triton.next_power_of_2(H)
    if n_rope_tokens == 0:  # nothing is read from the tables; give the kernel a valid fp32 address anyway
        cos = sin = torch.empty((1, D // 2), dtype=torch.float32, device=qkv.device)
    if B * L:
        _qk_norm_rope_kernel[(B * L,)](
            qkv, q_weight, k_weight, cos, sin, out, L, n_rope_tokens, qkv.stride(0), qkv.stride(1), B * H * L * D,
            float(eps), H=H, D=D, BLOCK_H=block_h, num_warps=num_warps or row_num_warps(block_h * D),
        )
    q, k, v = out.unbind(0)
    return q, k, v
