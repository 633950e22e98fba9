"""Attention prologue in one pass: split the fused qkv projection, RMS-normalise q and k per head, rotate the
image tokens' q and k (RoPE), and write q, k, v head-first ``[B, H, L, D]`` for SDPA.

One program per token handles all heads, so each token's cos/sin row is read once and the ``[B, L, 3HD] ->
[3, B, H, L, D]`` transpose happens in the store.

The quantizing variant (``qk_norm_rope_quant_q_triton``, in front of FP8 attention) takes ``BLOCK_T`` tokens per
program and ends the query tile as the attention quantizer would: Hadamard rotation (one tensor-core dot of the
``[BLOCK_T * heads, D]`` tile), softmax scale folded in, int8 with one scale per token and head, written straight into
the attention's :class:`~..attention.quantize_qkv.QuantizedQ` buffers; K and V go, normalised and rotated, into
the rows of a joint ``[2, B, H, L_total, D]`` buffer. So Q is written once, and the joint sequence needs no copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..attention.quantize_qkv import LOG2E, QuantizedQ, hadamard, round_to_int8
from ..formats import SCALE_FLOOR
from . import MAX_HEAD_TILE, QUANT_Q_PROLOGUE_DTYPES, check_qkv, check_quant_q_outputs, prologue_fits, row_num_warps

__all__ = ["qk_norm_rope_triton", "qk_norm_rope_quant_q_triton", "rms_norm_rope_heads"]

# Tokens and warps per program of the quantizing prologue: a [2 * 32, 128] query tile for the rotation dot, the
# fastest of the variants in bench/results/prologue-2026-11-29-h200.md.
QUANT_TOKENS = 2
QUANT_WARPS = 8


@triton.jit
def rms_norm_rope_heads(x, w_ptr, cos, sin, eps, BLOCK_H: tl.constexpr, D: tl.constexpr):
    """``x`` ``[BLOCK_H, D]``: RMS norm over D (fp32, learnable weight), then rotate pairs ``(2i, 2i+1)`` by angle i:
    ``(e, o) -> (e cos - o sin, e sin + o cos)``, ComfyUI's ``apply_rope`` convention. Identity when cos=1, sin=0.
    ``cos``/``sin`` are ``[1, D/2]`` (one token) or ``[BLOCK_H, D/2]`` (a row each)."""
    x = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    w = tl.load(w_ptr + tl.arange(0, D)).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    even, odd = tl.split(tl.reshape(y, (BLOCK_H, D // 2, 2)))
    rot_even = even * cos - odd * sin
    rot_odd = even * sin + odd * cos
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
    cos, sin = cos[None, :], sin[None, :]
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


@triton.jit
def _qk_norm_rope_quant_q_kernel(
    qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, h_ptr, q8_ptr, qs_ptr, kv_ptr,
    L, n_rope, row0, L_total, Lq_pad, stride_b, stride_l, kv_plane, eps, scale_mult,
    H: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, FLOOR: tl.constexpr,
):  # fmt: skip
    """Rows of the tile are (token, head) pairs: row r is head ``r % BLOCK_H`` of token ``r // BLOCK_H``."""
    b = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, BLOCK_T * BLOCK_H)
    tok = tl.program_id(0) * BLOCK_T + r // BLOCK_H
    head = r % BLOCK_H
    ok = ((tok < L) & (head < H))[:, None]
    tok = tok.to(tl.int64)[:, None]
    head = head.to(tl.int64)[:, None]
    dims = tl.arange(0, D)[None, :]
    src = qkv_ptr + b * stride_b + tok * stride_l + head * D + dims
    half = tl.arange(0, D // 2)[None, :]
    rope = ok & (tok < n_rope) & (half < D // 2)  # text tokens (after the image tokens) get the identity rotation
    cos = tl.load(cos_ptr + tok * (D // 2) + half, mask=rope, other=1.0)
    sin = tl.load(sin_ptr + tok * (D // 2) + half, mask=rope, other=0.0)
    ROWS: tl.constexpr = BLOCK_T * BLOCK_H

    # queries: the attention quantizer's arithmetic on the bf16/fp16 values the plain prologue would have written
    q = rms_norm_rope_heads(tl.load(src, mask=ok, other=0.0), qw_ptr, cos, sin, eps, ROWS, D)
    q = q.to(kv_ptr.dtype.element_ty)
    rot = tl.load(h_ptr + tl.arange(0, D)[:, None] * D + dims)
    x = tl.dot(q, rot, input_precision="tf32") * scale_mult  # +-1 times 16-bit values: exact
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), FLOOR) / 127.0
    q_row = (b * H + head) * Lq_pad + row0 + tok
    tl.store(q8_ptr + q_row * D + dims, round_to_int8(x / scale[:, None]), mask=ok)
    tl.store(qs_ptr + q_row, scale[:, None], mask=ok)

    # keys and values: into their rows of the joint [2, B, H, L_total, D] buffer
    dst = kv_ptr + ((b * H + head) * L_total + row0 + tok) * D + dims
    k = rms_norm_rope_heads(tl.load(src + H * D, mask=ok, other=0.0), kw_ptr, cos, sin, eps, ROWS, D)
    tl.store(dst, k.to(kv_ptr.dtype.element_ty), mask=ok)
    tl.store(dst + kv_plane.to(tl.int64), tl.load(src + 2 * H * D, mask=ok), mask=ok)


def qk_norm_rope_quant_q_triton(
    qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    n_rope_tokens: int, eps: float, q_out: QuantizedQ, kv_out: torch.Tensor, row0: int, *,
    block_t: int = QUANT_TOKENS, num_warps: int = QUANT_WARPS,
) -> None:
    """The prologue of :func:`qk_norm_rope_triton` for FP8 attention: tokens ``0 .. L`` of ``qkv`` ``[B, L, 3*H*D]``
    become rows ``row0 .. row0 + L`` of ``q_out`` (int8 queries, :func:`~..attention.quantize_qkv.empty_quantized_q`)
    and of ``kv_out`` (``[2, B, H, L_total, D]`` keys and values, contiguous, in qkv's dtype)."""
    B, L, H, D = check_qkv(qkv, q_weight, k_weight, cos, sin, n_rope_tokens)
    check_quant_q_outputs(qkv, q_out, kv_out, B, L, H, D, row0)
    if not prologue_fits(H, D) or qkv.dtype not in QUANT_Q_PROLOGUE_DTYPES:
        raise ValueError(f"the quantizing Triton prologue needs bf16/fp16 qkv, a power-of-two head_dim and "
                         f"heads*head_dim <= {MAX_HEAD_TILE}, got {qkv.dtype}, H={H}, D={D}: use "
                         "fp8.fused.qk_norm_rope_quant_q, which falls back to the torch reference")
    block_h = triton.next_power_of_2(H)
    if n_rope_tokens == 0:  # nothing is read from the tables; give the kernel a valid fp32 address anyway
        cos = sin = torch.empty((1, D // 2), dtype=torch.float32, device=qkv.device)
    if B * L:
        L_total = kv_out.shape[3]
        _qk_norm_rope_quant_q_kernel[(triton.cdiv(L, block_t), B)](
            qkv, q_weight, k_weight, cos, sin, hadamard(D, dtype=qkv.dtype, device=qkv.device), q_out.q,
            q_out.q_scale, kv_out, L, n_rope_tokens, row0, L_total, q_out.q.shape[1], qkv.stride(0), qkv.stride(1),
            B * H * L_total * D, float(eps), q_out.sm_scale * LOG2E * D**-0.5,
            H=H, D=D, BLOCK_H=block_h, BLOCK_T=block_t, FLOOR=SCALE_FLOOR, num_warps=num_warps,
        )  # fmt: skip

