"""LayerNorm (no affine) + adaLN modulation + per-token FP8 quantization in one pass over the activation.

Feeds the qkv / fc1 / linear1 FP8 GEMMs: the row is read once (bf16), normalised and modulated in fp32 registers,
and written once as e4m3fn with its fp32 scale, instead of three eager kernels and a bf16 round trip.
Also home of the two jit helpers every quantizing producer uses, so all of them round exactly alike.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import SCALE_FLOOR, fp8_max
from . import (
    MAX_ROW_BLOCK,
    check_modulation,
    check_same_device,
    check_tokens,
    fp8_outputs,
    next_power_of_2,
    row_num_warps,
)

__all__ = ["FP8_MAX", "fp8_row_scale", "store_fp8", "layernorm_modulate_quant_triton"]

FP8_MAX = fp8_max(torch.float8_e4m3fn)


@triton.jit
def fp8_row_scale(amax, FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr):
    """The row's scale as ``quantize_rowwise`` computes it: ``max(amax, floor) / fp8_max``, IEEE-rounded."""
    return tl.math.div_rn(tl.maximum(amax, SCALE_FLOOR), FP8_MAX)


@triton.jit
def store_fp8(ptrs, y, inv_scale, mask, FP8_MAX: tl.constexpr):
    """Scale, saturate (e4m3fn has no infinity: an unclamped 449 would become NaN) and store as FP8."""
    q = tl.clamp(y * inv_scale, -FP8_MAX, FP8_MAX)
    tl.store(ptrs, q.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _layernorm_modulate_quant_kernel(
    x_ptr, shift_ptr, mscale_ptr, q_ptr, s_ptr,
    L, C, stride_xb, stride_xl, stride_shift_b, stride_mscale_b, eps,
    FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # one token per program; int64 so B*L*C beyond 2**31 addresses correctly
    b = row // L
    tok = row - b * L
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(x_ptr + b * stride_xb + tok * stride_xl + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    xc = tl.where(mask, x - mean, 0.0)  # padded lanes stay exactly 0 through the variance and the modulation
    rstd = tl.math.rsqrt(tl.sum(xc * xc, axis=0) / C + eps)
    shift = tl.load(shift_ptr + b * stride_shift_b + cols, mask=mask, other=0.0).to(tl.float32)
    mscale = tl.load(mscale_ptr + b * stride_mscale_b + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * (1.0 + mscale) + shift
    scale = fp8_row_scale(tl.max(tl.abs(y), axis=0), FP8_MAX, SCALE_FLOOR)
    store_fp8(q_ptr + row * C + cols, y, 1.0 / scale, mask, FP8_MAX)
    tl.store(s_ptr + row, scale)


def layernorm_modulate_quant_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None, num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rowwise(LayerNorm(x) * (1 + scale) + shift)`` with the intermediate kept in fp32 registers.

    ``x`` ``[B, L, C]`` (contiguous channels, any token/batch strides), ``shift``/``scale`` ``[B, 1, C]``. Returns
    ``q`` e4m3fn ``[B, L, C]`` and ``s`` fp32 ``[B, L, 1]`` (written into ``out`` when given).
    """
    B, L, C = check_tokens("x", x)
    check_modulation("shift", shift, B, C)
    check_modulation("scale", scale, B, C)
    check_same_device(x=x, shift=shift, scale=scale)
    block = next_power_of_2(C)
    if block > MAX_ROW_BLOCK:
        raise ValueError(f"C={C} is longer than this kernel's one-row-in-registers limit {MAX_ROW_BLOCK}: "
                         "use fp8.fused.layernorm_modulate_quant, which falls back to the torch reference")
    q, s = fp8_outputs(out, (B, L, C), x.device)
    if B * L:
        _layernorm_modulate_quant_kernel[(B * L,)](
            x, shift, scale, q, s, L, C, x.stride(0), x.stride(1), shift.stride(0), scale.stride(0), float(eps),
            FP8_MAX=FP8_MAX, SCALE_FLOOR=SCALE_FLOOR, BLOCK_C=block, num_warps=num_warps or row_num_warps(block),
        )
    return q, s
