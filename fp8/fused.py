"""Fused producers of FP8 GEMM inputs (and the attention prologue): Triton kernels, or the torch references.

Eager per-token quantization is a full extra read and write of the activation in front of the FP8 GEMM it feeds,
which makes unfused W8A8 slower than bf16. These entry points compute the producing op and emit
e4m3fn values with per-token fp32 scales in one pass. The references below define the numerics: the intermediate
stays in fp32 and is quantized exactly as ``quantize_rowwise`` does (``scale = max(amax, SCALE_FLOOR) / 448``,
saturating cast). The kernels match them up to fp32 summation order.

Which implementation runs is the kernel plan's choice (``fp8.kernel_plan``: ``producers``, ``prologue``,
``quant_prologue``), passed as ``kernel``; without one, the plan of the input's device decides
(``HYVIDEO_FP8_FUSED=0`` makes that the reference everywhere). An input the Triton kernels cannot take (a row wider
than they hold in registers, a head layout the prologue does not fit) runs the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention.quantize_qkv import QuantizedQ, quantize_q_torch
from .custom_ops import register_custom_op
from .kernel_plan import Kernel, device_plan
from .quantize import quantize_rowwise
from .triton import (
    MAX_ROW_BLOCK,
    QUANT_Q_PROLOGUE_DTYPES,
    check_modulation,
    check_qkv,
    check_quant_q_outputs,
    check_same_device,
    check_tokens,
    next_power_of_2,
    prologue_fits,
)

__all__ = [
    "layernorm_modulate_quant", "gelu_tanh_quant", "concat_gelu_quant", "qk_norm_rope", "qk_norm_rope_quant_q",
    "layernorm_modulate_quant_reference", "gelu_tanh_quant_reference", "concat_gelu_quant_reference",
    "qk_norm_rope_reference", "qk_norm_rope_quant_q_reference",
]


def _runs_triton(kernel: Kernel | str | None, t: torch.Tensor, part: str) -> bool:
    """Whether the plan (``kernel``, or the plan of ``t``'s device for ``part``) says Triton."""
    if kernel is None:
        if not isinstance(t, torch.Tensor):
            return False  # the reference's input checks say what is wrong
        kernel = getattr(device_plan(t.device), part)
    return Kernel(kernel) is Kernel.TRITON


def _fits_row(channels: int) -> bool:
    return next_power_of_2(channels) <= MAX_ROW_BLOCK


# ---------------------------------------------------------------- references (pure torch; CPU path and test oracle)

def layernorm_modulate_quant_reference(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rowwise(LayerNorm(x) * (1 + scale) + shift)``, all in fp32 (no affine; stats over C)."""
    B, L, C = check_tokens("x", x)
    check_modulation("shift", shift, B, C)
    check_modulation("scale", scale, B, C)
    check_same_device(x=x, shift=shift, scale=scale)
    y = torch.addcmul(shift.float(), F.layer_norm(x.float(), (C,), eps=eps), 1.0 + scale.float())
    return quantize_rowwise(y, torch.float8_e4m3fn)


def gelu_tanh_quant_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rowwise(gelu_tanh(x))`` with the GELU in fp32."""
    check_tokens("x", x)
    return quantize_rowwise(F.gelu(x.float(), approximate="tanh"), torch.float8_e4m3fn)


def _check_concat(attn_out: torch.Tensor, mlp_act: torch.Tensor) -> None:
    B, L, _ = check_tokens("attn_out", attn_out)
    B2, L2, _ = check_tokens("mlp_act", mlp_act)
    if (B2, L2) != (B, L):
        raise ValueError(f"attn_out {tuple(attn_out.shape)} and mlp_act {tuple(mlp_act.shape)} must share B and L")
    check_same_device(attn_out=attn_out, mlp_act=mlp_act)


def concat_gelu_quant_reference(attn_out: torch.Tensor, mlp_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rowwise(cat([attn_out, gelu_tanh(mlp_act)], -1))`` in fp32: one scale per concatenated row."""
    _check_concat(attn_out, mlp_act)
    row = torch.cat([attn_out.float(), F.gelu(mlp_act.float(), approximate="tanh")], dim=-1)
    return quantize_rowwise(row, torch.float8_e4m3fn)


def _rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """fp32 RMS norm over D, then rotate pairs (2i, 2i+1) of the first ``len(cos)`` tokens (ComfyUI ``apply_rope``:
    ``[[cos, -sin], [sin, cos]] @ (x_2i, x_2i+1)``); ``x`` ``[B, H, L, D]``."""
    x = x.float()
    y = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps) * weight.float()
    n = cos.shape[0]
    even, odd = y[:, :, :n, 0::2], y[:, :, :n, 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat([rotated, y[:, :, n:]], dim=2).to(out_dtype)


def qk_norm_rope_reference(
    qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    n_rope_tokens: int, eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``[B, L, 3*H*D]`` into q, k, v ``[B, H, L, D]`` (qkv's dtype), RMS-norm q and k, RoPE on the image
    tokens ``[0, n_rope_tokens)``; the text tokens after them are normalised but not rotated."""
    B, L, H, D = check_qkv(qkv, q_weight, k_weight, cos, sin, n_rope_tokens)
    q, k, v = qkv.unflatten(-1, (3, H, D)).permute(2, 0, 3, 1, 4).unbind(0)
    dtype = qkv.dtype
    return _rms_norm_rope(q, q_weight, cos, sin, eps, dtype), _rms_norm_rope(k, k_weight, cos, sin, eps, dtype), \
        v.contiguous()


def qk_norm_rope_quant_q_reference(
    qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    n_rope_tokens: int, eps: float, q_out: QuantizedQ, kv_out: torch.Tensor, row0: int,
) -> None:
    """:func:`qk_norm_rope_reference`, then q quantized as FP8 attention does (``quantize_q_torch``) into rows
    ``row0 .. row0 + L`` of ``q_out``, and k, v into the same rows of ``kv_out`` ``[2, B, H, L_total, D]``."""
    B, L, H, D = check_qkv(qkv, q_weight, k_weight, cos, sin, n_rope_tokens)
    check_quant_q_outputs(qkv, q_out, kv_out, B, L, H, D, row0)
    q, k, v = qk_norm_rope_reference(qkv, q_weight, k_weight, cos, sin, n_rope_tokens, eps)
    quantized = quantize_q_torch(q, q_out.sm_scale)
    rows = slice(row0, row0 + L)
    q_out.q.view(B, H, -1, D)[:, :, rows] = quantized.q.view(B, H, -1, D)[:, :, :L]
    q_out.q_scale.view(B, H, -1)[:, :, rows] = quantized.q_scale.view(B, H, -1)[:, :, :L]
    kv_out[0, :, :, rows] = k
    kv_out[1, :, :, rows] = v


# ---------------------------------------------------------------- dispatch

def layernorm_modulate_quant(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, kernel: Kernel | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm (no affine) + adaLN modulation -> e4m3fn ``[B, L, C]`` and per-token fp32 scales ``[B, L, 1]``.

    Input of the qkv / fc1 / linear1 FP8 GEMMs. ``x`` ``[B, L, C]``; ``shift``/``scale`` ``[B, 1, C]``.
    """
    if _runs_triton(kernel, x, "producers") and x.dim() == 3 and _fits_row(x.shape[-1]):
        from .triton.norm_modulate_quant import layernorm_modulate_quant_triton

        return layernorm_modulate_quant_triton(x, shift, scale, eps)
    return layernorm_modulate_quant_reference(x, shift, scale, eps)


def gelu_tanh_quant(x: torch.Tensor, kernel: Kernel | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU (tanh) -> e4m3fn ``[B, L, C]`` and per-token fp32 scales ``[B, L, 1]``: the fc2 input."""
    if _runs_triton(kernel, x, "producers") and x.dim() == 3 and _fits_row(x.shape[-1]):
        from .triton.gelu_quant import gelu_tanh_quant_triton

        return gelu_tanh_quant_triton(x)
    return gelu_tanh_quant_reference(x)


def concat_gelu_quant(attn_out: torch.Tensor, mlp_act: torch.Tensor,
                      kernel: Kernel | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[attn_out | gelu_tanh(mlp_act)]`` -> e4m3fn ``[B, L, C1 + C2]`` with one fp32 scale per token: the
    single-stream block's linear2 input, without materialising the bf16 concatenation."""
    if (_runs_triton(kernel, attn_out, "producers") and isinstance(mlp_act, torch.Tensor)
            and attn_out.dim() == 3 and mlp_act.dim() == 3
            and _fits_row(attn_out.shape[-1]) and _fits_row(mlp_act.shape[-1])):
        from .triton.gelu_quant import concat_gelu_quant_triton

        return concat_gelu_quant_triton(attn_out, mlp_act)
    return concat_gelu_quant_reference(attn_out, mlp_act)


def _prologue_fits(qkv: torch.Tensor, q_weight: torch.Tensor) -> bool:
    """Whether the attention prologues' Triton kernel takes this qkv and head layout."""
    if not (qkv.dim() == 3 and isinstance(q_weight, torch.Tensor) and q_weight.dim()):
        return False
    D = q_weight.shape[0]
    return bool(D) and prologue_fits(qkv.shape[-1] // (3 * D), D)


def qk_norm_rope(
    qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    n_rope_tokens: int, eps: float = 1e-6, kernel: Kernel | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused qkv ``[B, L, 3*H*D]`` -> RMS-normed, rotated q, k and plain v, each ``[B, H, L, D]``, ready for SDPA.

    ``q_weight``/``k_weight`` ``[D]``; ``cos``/``sin`` fp32 ``[n_rope_tokens, D/2]`` for the leading image tokens
    (pair i of every head rotated by the angle of column i). Computed in fp32, written in qkv's dtype.
    """
    if _runs_triton(kernel, qkv, "prologue") and _prologue_fits(qkv, q_weight):
        from .triton.qk_norm_rope import qk_norm_rope_triton

        return qk_norm_rope_triton(qkv, q_weight, k_weight, cos, sin, n_rope_tokens, eps)
    return qk_norm_rope_reference(qkv, q_weight, k_weight, cos, sin, n_rope_tokens, eps)


def qk_norm_rope_quant_q(
    qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    n_rope_tokens: int, eps: float, q_out: QuantizedQ, kv_out: torch.Tensor, row0: int,
    kernel: Kernel | str | None = None,
) -> None:
    """:func:`qk_norm_rope` in front of FP8 attention: q goes straight into the attention's int8 query buffers
    ``q_out`` (``fp8.attention.quantize_qkv.empty_quantized_q``), k and v into ``kv_out`` ``[2, B, H, L_total, D]``,
    both at rows ``row0 .. row0 + L``. One Triton pass (bf16/fp16 qkv), or the torch reference."""
    if (_runs_triton(kernel, qkv, "prologue") and qkv.dtype in QUANT_Q_PROLOGUE_DTYPES
            and _prologue_fits(qkv, q_weight)):  # fmt: skip
        from .triton.qk_norm_rope import qk_norm_rope_quant_q_triton

        return qk_norm_rope_quant_q_triton(qkv, q_weight, k_weight, cos, sin, n_rope_tokens, eps, q_out, kv_out, row0)
    return qk_norm_rope_quant_q_reference(qkv, q_weight, k_weight, cos, sin, n_rope_tokens, eps, q_out, kv_out, row0)


# ---------------------------------------------------------------- torch.compile: the quantizing producers as custom ops
# Under torch.compile each producer is one opaque graph node with shapes from the fake implementations below: no
# graph break and no guards on the launchers' Python (see custom_ops.py).

def _fake_quant(x: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (*x.shape[:-1], channels)
    return x.new_empty(shape, dtype=torch.float8_e4m3fn), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


def _ln_mod_quant_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                     kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    return layernorm_modulate_quant(x, shift, scale, eps, kernel)


def _gelu_quant_op(x: torch.Tensor, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    return gelu_tanh_quant(x, kernel)


def _concat_gelu_quant_op(attn_out: torch.Tensor, mlp_act: torch.Tensor,
                          kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    return concat_gelu_quant(attn_out, mlp_act, kernel)


layernorm_modulate_quant_op = register_custom_op("layernorm_modulate_quant", _ln_mod_quant_op,
                                                 lambda x, shift, scale, eps, kernel: _fake_quant(x, x.shape[-1]))
gelu_tanh_quant_op = register_custom_op("gelu_tanh_quant", _gelu_quant_op,
                                        lambda x, kernel: _fake_quant(x, x.shape[-1]))
concat_gelu_quant_op = register_custom_op("concat_gelu_quant", _concat_gelu_quant_op,
                                          lambda a, m, kernel: _fake_quant(a, a.shape[-1] + m.shape[-1]))
