"""GELU (tanh approximation) + per-token FP8 quantization, and the single-stream block's linear2 input.

``gelu_tanh_quant`` feeds fc2 (K = 12288), where eager quantization cost more than the FP8 GEMM itself.
``concat_gelu_quant`` builds linear2's input ``[attn_out | gelu(mlp_act)]`` (K = 15360) straight into FP8 with one
scale over the whole concatenated row, so the bf16 concatenation is never written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import SCALE_FLOOR
from . import MAX_ROW_BLOCK, check_same_device, check_tokens, fp8_outputs, next_power_of_2, row_num_warps
from .norm_modulate_quant import FP8_MAX, fp8_row_scale, store_fp8

__all__ = ["gelu_tanh_quant_triton", "concat_gelu_quant_triton"]

SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)  # jit code may only read constexpr globals


@triton.jit
def gelu_tanh_f32(x):
    """``0.5 x (1 + tanh(u))`` written as ``x * sigmoid(2u)`` (the same function): one exp, no cancellation
    for negative x, and it saturates cleanly (exp overflow gives x / inf = 0)."""
    u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    return x / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def _gelu_tanh_quant_kernel(
    x_ptr, q_ptr, s_ptr, L, C, stride_xb, stride_xl,
    FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    tok = row - b * L
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    y = gelu_tanh_f32(tl.load(x_ptr + b * stride_xb + tok * stride_xl + cols, mask=mask, other=0.0).to(tl.float32))
    scale = fp8_row_scale(tl.max(tl.abs(y), axis=0), FP8_MAX, SCALE_FLOOR)  # gelu(0) = 0: padding adds nothing
    store_fp8(q_ptr + row * C + cols, y, 1.0 / scale, mask, FP8_MAX)
    tl.store(s_ptr + row, scale)


@triton.jit
def _concat_gelu_quant_kernel(
    a_ptr, m_ptr, q_ptr, s_ptr, L, C1, C2, stride_ab, stride_al, stride_mb, stride_ml,
    FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr, BLOCK_1: tl.constexpr, BLOCK_2: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    tok = row - b * L
    c1 = tl.arange(0, BLOCK_1)
    mask1 = c1 < C1
    a = tl.load(a_ptr + b * stride_ab + tok * stride_al + c1, mask=mask1, other=0.0).to(tl.float32)
    c2 = tl.arange(0, BLOCK_2)
    mask2 = c2 < C2
    g = gelu_tanh_f32(tl.load(m_ptr + b * stride_mb + tok * stride_ml + c2, mask=mask2, other=0.0).to(tl.float32))
    amax = tl.maximum(tl.max(tl.abs(a), axis=0), tl.max(tl.abs(g), axis=0))
    scale = fp8_row_scale(amax, FP8_MAX, SCALE_FLOOR)
    inv_scale = 1.0 / scale
    q_row = q_ptr + row * (C1 + C2)
    store_fp8(q_row + c1, a, inv_scale, mask1, FP8_MAX)
    store_fp8(q_row + C1 + c2, g, inv_scale, mask2, FP8_MAX)
    tl.store(s_ptr + row, scale)


def _row_block(name: str, channels: int) -> int:
    block = next_power_of_2(channels)
    if block > MAX_ROW_BLOCK:
        raise ValueError(f"{name} has {channels} channels, longer than this kernel's one-row-in-registers limit "
                         f"{MAX_ROW_BLOCK}: use the fp8.fused entry point, which falls back to the torch reference")
    return block


def gelu_tanh_quant_triton(
    x: torch.Tensor, *, out: tuple[torch.Tensor, torch.Tensor] | None = None, num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rowwise(gelu_tanh(x))`` in one pass: ``x`` ``[B, L, C]`` -> e4m3fn ``[B, L, C]``, fp32 ``[B, L, 1]``
    (written into ``out`` when given)."""
    B, L, C = check_tokens("x", x)
    block = _row_block("x", C)
    q, s = fp8_outputs(out, (B, L, C), x.device)
    if B * L:
        _gelu_tanh_quant_kernel[(B * L,)](
            x, q, s, L, C, x.stride(0), x.stride(1),
            FP8_MAX=FP8_MAX, SCALE_FLOOR=SCALE_FLOOR, BLOCK_C=block, num_warps=num_warps or row_num_warps(block),
        )
    return q, s


def concat_gelu_quant_triton(
    attn_out: torch.Tensor, mlp_act: torch.Tensor, *, out: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rowwise(cat([attn_out, gelu_tanh(mlp_act)], -1))`` without the concatenation.

    ``attn_out`` ``[B, L, C1]``, ``mlp_act`` ``[B, L, C2]`` (either may be a strided view of a wider tensor) ->
    e4m3fn ``[B, L, C1 + C2]`` and fp32 ``[B, L, 1]``.
    """
    B, L, C1 = check_tokens("attn_out", attn_out)
    B2, L2, C2 = check_tokens("mlp_act", mlp_act)
    if (B2, L2) != (B, L):
        raise ValueError(f"attn_out {tuple(attn_out.shape)} and mlp_act {tuple(mlp_act.shape)} must share B and L")
    check_same_device(attn_out=attn_out, mlp_act=mlp_act)
    block1, block2 = _row_block("attn_out", C1), _row_block("mlp_act", C2)
    q, s = fp8_outputs(out, (B, L, C1 + C2), attn_out.device)
    if B * L:
        _concat_gelu_quant_kernel[(B * L,)](
            attn_out, mlp_act, q, s, L, C1, C2, attn_out.stride(0), attn_out.stride(1), mlp_act.stride(0),
            mlp_act.stride(1), FP8_MAX=FP8_MAX, SCALE_FLOOR=SCALE_FLOOR, BLOCK_1=block1, BLOCK_2=block2,
            num_warps=num_warps or row_num_warps(block1 + block2),
        )
    return q, s
