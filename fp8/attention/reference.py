"""Pure-torch FP8 attention on :class:`QuantizedQKV` buffers: the same arithmetic as the Triton kernel, on any device.

Per key block of ``block_n`` keys (the kernel's tile): exact integer Q.K (int8 products summed in fp32 are exact
below 2**24, and 127 * 127 * 256 < 2**24), logits = ints * q_scale * k_scale (already in log2 units), online softmax
with the running max and sum in fp32, P = exp2(logit - max + 8) rounded to FP8 e4m3 (P lies in (0, 256], scaled up
so that small probabilities stay out of e4m3's subnormal range), P.V on the FP8 values accumulated in fp32 per block,
and at the end one division by the row sum and one multiply by V's channel scales.

The kernels turn the int32 Q.K into fp32 without a conversion instruction: ``ints + INT_TO_FLOAT_BIAS``'s bits, read
as fp32, are exactly ``1.5 * 2**23 + ints`` (|ints| < 2**22), and one FMA per logit takes the bias out together with
the max: ``fma(ints + bias, rf, -(fma(bias, rf, max - 8)))``. The reference rounds the same way. That offset carries
one fp32 rounding per row and tile, so a tile's weights are scaled by ``2**d`` with ``|d|`` about ``rf`` (one integer
step of Q.K in log2 units; ~1e-4 at HunyuanVideo's scales), far below the rounding of P to e4m3. Carrying the rounded
max on instead (exact, with ``rf`` cut to 22 bits) was slower than this and than the plain int-to-float conversion
(bench/NOTES-attention.md).
"""

from __future__ import annotations

import torch

from .quantize_qkv import K_BLOCK, QuantizedQKV, deinterleave_keys

__all__ = ["attention_reference", "biased_logits", "P_LOG2_SCALE", "INT_TO_FLOAT_BIAS", "INT_TO_FLOAT_BIAS_BITS"]

P_LOG2_SCALE = 8.0  # P is stored as exp2(logit - max + 8) in FP8: max 256 (< 448), and 2**-6 relative stays normal
INT_TO_FLOAT_BIAS = 12582912.0  # 1.5 * 2**23: int32 0x4B400000 is its fp32 bit pattern (see the module docstring)
INT_TO_FLOAT_BIAS_BITS = 0x4B400000


def biased_logits(ints: torch.Tensor, rf: torch.Tensor, m_new: torch.Tensor) -> torch.Tensor:
    """``ints * rf - (m_new - P_LOG2_SCALE)`` rounded as the kernels round it (fp32 FMAs on biased integers)."""
    offset = (INT_TO_FLOAT_BIAS * rf.double() + (m_new - P_LOG2_SCALE).double()).float()  # fma(bias, rf, m - 8)
    return ((ints.double() + INT_TO_FLOAT_BIAS) * rf.double() - offset.double()).float()  # fma(ints + bias, rf, -o)


def attention_reference(qkv: QuantizedQKV, out_dtype: torch.dtype, block_n: int = 128) -> torch.Tensor:
    """Attention on quantized operands, ``[B, H, L, D]`` in ``out_dtype``; ``block_n`` must divide ``K_BLOCK``."""
    if K_BLOCK % block_n:
        raise ValueError(f"block_n={block_n} must divide K_BLOCK={K_BLOCK} (one K scale per key tile)")
    B, H, L = qkv.batch, qkv.heads, qkv.seq_len
    D = qkv.head_dim
    out = torch.empty(B, H, L, D, dtype=out_dtype, device=qkv.q.device)
    kv_lens = qkv.kv_len.tolist()
    keys = deinterleave_keys(qkv.k) if qkv.k_interleaved else qkv.k
    for b in range(B):
        heads = slice(b * H, (b + 1) * H)
        q = qkv.q[heads, :L].float()  # [H, L, D]
        q_scale = qkv.q_scale[heads, :L, None]  # [H, L, 1]
        m = torch.full((H, L, 1), float("-inf"), device=q.device)
        s_sum = torch.zeros(H, L, 1, device=q.device)
        acc = torch.zeros(H, L, D, device=q.device)
        n_valid = kv_lens[b]
        for start in range(0, n_valid, block_n):
            k = keys[heads, start : start + block_n].float()  # [H, bn, D]
            k_scale = qkv.k_scale[heads, start // K_BLOCK, None, None]  # [H, 1, 1]
            ints = q @ k.transpose(1, 2)
            rf = q_scale * k_scale
            if start + block_n > n_valid:
                keep = torch.arange(start, start + block_n, device=q.device) < n_valid
                ints = ints.masked_fill(~keep, float("-inf"))
            m_new = torch.maximum(m, ints.amax(dim=-1, keepdim=True) * rf)
            alpha = torch.exp2(m - m_new)
            p = torch.exp2(biased_logits(ints, rf, m_new))
            s_sum = s_sum * alpha + p.sum(dim=-1, keepdim=True)
            p8 = p.to(torch.float8_e4m3fn).float()
            v = qkv.v_t[heads, :, start : start + block_n].float()  # [H, D, bn]
            acc = acc * alpha + p8 @ v.transpose(1, 2)
            m = m_new
        v_scale = qkv.v_scale[heads, None, :]  # [H, 1, D]
        out[b] = (acc / s_sum * v_scale).to(out_dtype)
    return out
