"""Quantize Q, K, V for the FP8 attention kernel: one pure-torch version (the reference, CPU CI) and Triton kernels.

Q and K are first rotated by the same orthonormal Hadamard matrix (``x @ H / sqrt(D)``; Q.K^T is unchanged because
H H^T = D I). The rotation spreads outlier channels over all channels, so one INT8 scale per token / per key block
no longer has to cover a few channels that are many times larger than the rest (FA3's "incoherent processing").

Both versions produce the same :class:`QuantizedQKV` buffers, which are the whole contract with the attention kernel:

- ``q``: int8 ``[B*H, Lq_pad, D]`` (rotated), one scale per token in ``q_scale`` fp32 ``[B*H, Lq_pad]``. The softmax
  scale and log2(e) are folded into the Q scale, so ``q_scale[i] * k_scale[j] * (q_i . k_j)`` is the logit in log2 units
  and the kernel's exponential is a bare ``exp2``. Per-token scales cost the kernel nothing (one FMA per logit either
  way) and are finer than SageAttention's per-block Q scales.
- ``k``: int8 ``[B*H, Lk_pad, D]`` (rotated) after subtracting the per-head mean over the valid keys ("smoothing": it
  shifts every logit of a query by the same amount, so softmax is unchanged, and it removes the shared per-channel
  offset that would otherwise eat the INT8 range). One scale per ``K_BLOCK`` keys in ``k_scale``
  ``[B*H, Lk_pad // K_BLOCK]``.
- ``v_t``: float8_e4m3fn, TRANSPOSED ``[B*H, D, Lk_pad]`` with one scale per channel in ``v_scale`` ``[B*H, D]``.
  Hopper's FP8 wgmma reads its B operand K-major only, so V is stored with the key axis contiguous.
- ``k_interleaved`` (for the Hopper Gluon kernel, :mod:`.gluon_kernel`): K's rows are permuted inside every 32-key
  chunk, row ``16a + 8b + 2t + e`` holding key ``16a + 4t + 2b + e`` (:func:`interleave_keys`), so that the keys each
  thread holds in the Q.K wgmma accumulator are exactly those it must supply in P.V's FP8 register operand: P then
  needs no shuffles. Scales, V and padding are unchanged (the permutation stays inside 128-key blocks).
- Key padding: the valid keys of each batch element are packed first (stable order), ``kv_len[b]`` says how many;
  rows from ``kv_len[b]`` to ``Lk_pad`` are zeros and the kernel masks them, so padded keys are excluded exactly.

Q needs nothing global (per-token scales, ``sm_scale * log2(e)`` folded in), so the model's RMS q/k norm + RoPE
prologue writes it directly (``fp8.fused.qk_norm_rope_quant_q`` fills :func:`empty_quantized_q`, ending its tile with
the same rotation) and attention starts from :class:`QuantizedQ` (``fp8_attention_quantized_q``). K and V cannot be
quantized by a per-token producer: K needs its column mean over all valid keys first and V its per-channel amax
(:func:`_kv_stats_kernel`; the rotated mean is the mean rotated); then one pass writes int8 K + block scales and the
transposed FP8 V (:func:`quantize_kv_triton`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..formats import SCALE_FLOOR
from ..hardware import max_shared_memory_per_block

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch version below is all that is needed there
    triton = None

__all__ = [
    "QuantizedQ", "QuantizedQKV", "empty_quantized_q", "quantize_q_torch", "quantize_kv_torch", "quantize_qkv_torch",
    "quantize_q_triton", "quantize_kv_triton", "quantize_qkv_triton", "pack_keys", "hadamard", "Q_BLOCK", "K_BLOCK",
    "HEAD_DIMS", "KERNEL_HEAD_DIMS", "rotation_shared_bytes", "triton_quantize_fits", "interleave_keys",
    "deinterleave_keys",
]  # fmt: skip

LOG2E = 1.4426950408889634
INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
Q_BLOCK = 128  # Lq is padded to a multiple of this (the largest query tile the kernel uses)
K_BLOCK = 128  # keys per K scale, and the padding of Lk; the kernel's key tile must divide it
STATS_CHUNK = 512  # keys per program in the K-mean / V-amax reduction
HEAD_DIMS = (32, 64, 128, 256)  # powers of two (Hadamard rotation)
KERNEL_HEAD_DIMS = (64, 128)  # the head dims the attention kernels are built for


@dataclass
class QuantizedQ:
    """The quantized queries of one attention call: ``q`` int8 ``[B*H, Lq_pad, D]`` and ``q_scale`` fp32
    ``[B*H, Lq_pad]`` (module docstring), made for softmax scale ``sm_scale``. Needs nothing global, so a producer
    kernel can write it directly (:func:`empty_quantized_q`)."""

    q: torch.Tensor
    q_scale: torch.Tensor
    sm_scale: float
    batch: int
    heads: int
    seq_len: int

    def fits(self, batch: int, heads: int, seq_len: int, head_dim: int) -> bool:
        """Whether the buffers have the layout :func:`empty_quantized_q` makes for these sizes (what the kernels
        and the prologue index)."""
        shape = (batch * heads, _round_up(seq_len, Q_BLOCK))
        return ((self.batch, self.heads, self.seq_len) == (batch, heads, seq_len) and self.q.dtype == torch.int8
                and tuple(self.q.shape) == (*shape, head_dim) and tuple(self.q_scale.shape) == shape)  # fmt: skip


@dataclass
class QuantizedQKV:
    """The quantized operands of one attention call (layouts in the module docstring)."""

    q: torch.Tensor
    q_scale: torch.Tensor
    k: torch.Tensor
    k_scale: torch.Tensor
    v_t: torch.Tensor
    v_scale: torch.Tensor
    kv_len: torch.Tensor
    batch: int
    heads: int
    seq_len: int
    k_interleaved: bool = False

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1]

    @classmethod
    def from_parts(cls, q: QuantizedQ, kv: tuple[torch.Tensor, ...], interleave_k: bool) -> QuantizedQKV:
        """Queries from :func:`quantize_q_torch` / a producer, keys and values from ``quantize_kv_*``."""
        k, k_scale, v_t, v_scale, kv_len = kv
        return cls(q.q, q.q_scale, k, k_scale, v_t, v_scale, kv_len, q.batch, q.heads, q.seq_len,
                   k_interleaved=interleave_k)  # fmt: skip


def empty_quantized_q(batch: int, heads: int, seq_len: int, head_dim: int, sm_scale: float,
                      device: torch.device, pad: bool = True) -> QuantizedQ:  # fmt: skip
    """Buffers for a producer that writes quantized queries token by token; ``pad`` fills the padding rows
    ``[L, Lq_pad)`` here (zeros, floor scale: what the quantizers write there)."""
    lq_pad = _round_up(seq_len, Q_BLOCK)
    q = torch.empty(batch * heads, lq_pad, head_dim, dtype=torch.int8, device=device)
    q_scale = torch.empty(batch * heads, lq_pad, dtype=torch.float32, device=device)
    if pad:
        q[:, seq_len:] = 0
        q_scale[:, seq_len:] = SCALE_FLOOR / INT8_MAX
    return QuantizedQ(q, q_scale, float(sm_scale), batch, heads, seq_len)


def interleave_keys(k: torch.Tensor) -> torch.Tensor:
    """``[BH, Lk_pad, D]`` K rows permuted inside each 32-key chunk: row ``16a + 8b + 2t + e`` gets key
    ``16a + 4t + 2b + e`` (``Lk_pad`` a multiple of 32)."""
    BH, n, D = k.shape
    return k.view(BH, n // 32, 2, 4, 2, 2, D).permute(0, 1, 2, 4, 3, 5, 6).reshape(BH, n, D)


def deinterleave_keys(k: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`interleave_keys`: K rows back in key order."""
    BH, n, D = k.shape
    return k.view(BH, n // 32, 2, 2, 4, 2, D).permute(0, 1, 2, 4, 3, 5, 6).reshape(BH, n, D)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@functools.lru_cache(maxsize=16)
def hadamard(dim: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Sylvester Hadamard matrix of +-1 entries, ``[dim, dim]``; exact in any float dtype (normalize separately).

    Cached per (dim, dtype, device): built once instead of in a dozen small launches per attention call.
    """
    if dim not in HEAD_DIMS:
        raise ValueError(f"head dim {dim} is not supported (supported: {HEAD_DIMS})")
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < dim:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def pack_keys(key_padding_mask: torch.Tensor | None, batch: int, seq_len: int, device) -> tuple[torch.Tensor, ...]:
    """``(kv_len [B] int32, key_index [B, L] int64)``: valid keys first in their original order, and how many.

    Raises if some batch element has no valid key at all (softmax over nothing is undefined; SDPA returns NaN).
    This is one host sync per call, negligible next to the attention it guards.
    """
    if key_padding_mask is None:
        kv_len = torch.full((batch,), seq_len, dtype=torch.int32, device=device)
        return kv_len, torch.arange(seq_len, device=device).expand(batch, seq_len)
    valid = key_padding_mask.to(device=device, dtype=torch.bool)
    kv_len = valid.sum(dim=1, dtype=torch.int32)
    if not bool((kv_len > 0).all()):
        raise ValueError("key_padding_mask has a batch element with no valid key (all False): nothing to attend to")
    key_index = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)
    return kv_len, key_index


def _quantize_int8(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = amax.clamp_min(SCALE_FLOOR) / INT8_MAX
    return torch.round(x / scale.unsqueeze(-1)).to(torch.int8), scale


def quantize_q_torch(q: torch.Tensor, sm_scale: float) -> QuantizedQ:
    """Pure-torch query quantization, ``q`` ``[B, H, L, D]``: rotate, fold ``sm_scale * log2(e)``, int8 per token."""
    B, H, L, D = q.shape
    out = empty_quantized_q(B, H, L, D, sm_scale, q.device)
    rot = hadamard(D, device=torch.device(q.device)) * D**-0.5
    x = (q.float() @ rot) * (sm_scale * LOG2E)
    q_i8, q_scale = _quantize_int8(x, x.abs().amax(dim=-1))
    out.q[:, :L] = q_i8.reshape(B * H, L, D)
    out.q_scale[:, :L] = q_scale.reshape(B * H, L)
    return out


def quantize_kv_torch(
    k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, interleave_k: bool = False
) -> tuple[torch.Tensor, ...]:
    """Pure-torch key/value quantization, ``k, v`` ``[B, H, L, D]``: ``(k, k_scale, v_t, v_scale, kv_len)`` as in
    :class:`QuantizedQKV`; ``interleave_k`` writes K in the Gluon kernel's row order (:func:`interleave_keys`)."""
    B, H, L, D = k.shape
    lk_pad = _round_up(L, K_BLOCK)
    device = k.device
    rot = hadamard(D, device=torch.device(device)) * D**-0.5
    kv_len, key_index = pack_keys(key_padding_mask, B, L, device)
    index = key_index[:, None, :, None].expand(B, H, L, D)
    valid = (torch.arange(lk_pad, device=device)[None, :] < kv_len[:, None].long())[:, None, :, None]  # [B,1,Lk_pad,1]
    kf = torch.zeros(B, H, lk_pad, D, dtype=torch.float32, device=device)
    kf[:, :, :L] = torch.gather(k, 2, index).float() @ rot
    kf = torch.where(valid, kf, 0.0)  # where, not *: NaN or inf in padded keys must not leak
    k_mean = kf.sum(dim=2, keepdim=True) / kv_len.float()[:, None, None, None]
    kf = torch.where(valid, kf - k_mean, 0.0)
    k_blocks = kf.reshape(B * H, lk_pad // K_BLOCK, K_BLOCK * D)
    k_i8, k_scale = _quantize_int8(k_blocks, k_blocks.abs().amax(dim=-1))

    vf = torch.zeros(B, H, lk_pad, D, dtype=torch.float32, device=device)
    vf[:, :, :L] = torch.gather(v, 2, index).float()
    vf = torch.where(valid, vf, 0.0)
    v_scale = vf.abs().amax(dim=2).clamp_min(SCALE_FLOOR) / FP8_E4M3_MAX  # [B, H, D]
    v8 = (vf / v_scale[:, :, None, :]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    k_out = k_i8.reshape(B * H, lk_pad, D)
    v_t = v8.reshape(B * H, lk_pad, D).transpose(1, 2).contiguous()
    return interleave_keys(k_out) if interleave_k else k_out, k_scale, v_t, v_scale.reshape(B * H, D), kv_len


def quantize_qkv_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, sm_scale: float,
    interleave_k: bool = False,
) -> QuantizedQKV:
    """Pure-torch quantization, ``q, k, v`` ``[B, H, L, D]``; the reference for :func:`quantize_qkv_triton`.

    ``interleave_k`` writes K in the Gluon kernel's row order (:func:`interleave_keys`).
    """
    kv = quantize_kv_torch(k, v, key_padding_mask, interleave_k)
    return QuantizedQKV.from_parts(quantize_q_torch(q, sm_scale), kv, interleave_k)


if triton is not None:

    @triton.jit
    def round_to_int8(x):
        """Round half to even like ``torch.round`` (the float add of 1.5 * 2**23 does it), then narrow to int8.

        The fp32 cast matters under torch.compile: Inductor passes Python float arguments as fp64 scalars.
        """
        bits = (x.to(tl.float32) + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000
        return bits.to(tl.int8)

    @triton.jit
    def _kv_stats_kernel(
        k_ptr, v_ptr, valid_ptr, ksum_ptr, vmax_ptr,
        L, H, n_chunks,
        skb, skh, skl, skd, svb, svh, svl, svd,
        HAS_MASK: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        """Partial column sums of K and column amax of |V| over one chunk of valid keys: ``[B*H, n_chunks, D]``."""
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        cols = tl.arange(0, D)
        k_base = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh
        v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh
        ksum = tl.zeros([D], dtype=tl.float32)
        vmax = tl.zeros([D], dtype=tl.float32)
        for r0 in range(0, CHUNK, ROWS):
            rows = chunk * CHUNK + r0 + tl.arange(0, ROWS)
            ok = rows < L
            if HAS_MASK:
                ok = ok & (tl.load(valid_ptr + b * L + rows, mask=ok, other=0) != 0)
            rows64 = rows.to(tl.int64)[:, None]
            kt = tl.load(k_base + rows64 * skl + cols[None, :] * skd, mask=ok[:, None], other=0.0).to(tl.float32)
            vt = tl.load(v_base + rows64 * svl + cols[None, :] * svd, mask=ok[:, None], other=0.0).to(tl.float32)
            ksum += tl.sum(kt, axis=0)
            vmax = tl.maximum(vmax, tl.max(tl.abs(vt), axis=0))
        out = (bh * n_chunks + chunk) * D + cols
        tl.store(ksum_ptr + out, ksum)
        tl.store(vmax_ptr + out, vmax)

    @triton.jit
    def _kv_finalize_kernel(
        ksum_ptr, vmax_ptr, kv_len_ptr, h_ptr, kmean_ptr, vscale_ptr, H, n_chunks, rot_norm,
        D: tl.constexpr, CHUNKS: tl.constexpr, MAX_CHUNKS: tl.constexpr, FLOOR: tl.constexpr, FP8_MAX: tl.constexpr,
    ):  # fmt: skip
        """Per head, from the stats kernel's partials: K's mean over the valid keys, rotated (``mean @ H / sqrt(D)``),
        and V's per-channel scale. One launch where torch took eight small ones (each a host round trip of launch
        time in front of the attention kernel). ``MAX_CHUNKS`` (a power of two >= ``n_chunks``) bounds the loop at
        compile time: one compile per bucket of lengths, and Triton's CPU interpreter runs it."""
        bh = tl.program_id(0)
        cols = tl.arange(0, D)
        ksum = tl.zeros([D], dtype=tl.float32)
        vmax = tl.zeros([D], dtype=tl.float32)
        for c0 in range(0, MAX_CHUNKS, CHUNKS):
            c = c0 + tl.arange(0, CHUNKS)
            ok = (c < n_chunks)[:, None]
            at = (bh * n_chunks + c)[:, None] * D + cols[None, :]
            ksum += tl.sum(tl.load(ksum_ptr + at, mask=ok, other=0.0), axis=0)
            vmax = tl.maximum(vmax, tl.max(tl.load(vmax_ptr + at, mask=ok, other=0.0), axis=0))
        mean = ksum / tl.load(kv_len_ptr + bh // H).to(tl.float32)
        rot = tl.load(h_ptr + cols[:, None] * D + cols[None, :])
        tl.store(kmean_ptr + bh * D + cols, tl.sum(mean[:, None] * rot, axis=0) * rot_norm)
        # IEEE division, as torch's: a plain '/' by a constant compiles to a multiply by its rounded reciprocal
        tl.store(vscale_ptr + bh * D + cols, tl.math.div_rn(tl.maximum(vmax, FLOOR), FP8_MAX))

    @triton.jit
    def _quantize_q_kernel(
        q_ptr, h_ptr, qo_ptr, qs_ptr, L, L_pad, H, sqb, sqh, sql, sqd, scale_mult,
        D: tl.constexpr, BLOCK: tl.constexpr, FLOOR: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One pass: rotate, times sm_scale * log2(e), int8 with one scale per token; padded rows become zeros."""
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, D)
        src = (
            q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows.to(tl.int64)[:, None] * sql + cols[None, :] * sqd
        )
        x = tl.load(src, mask=(rows < L)[:, None], other=0.0)
        rot = tl.load(h_ptr + cols[:, None] * D + cols[None, :])
        x = tl.dot(x, rot, input_precision=PRECISION) * scale_mult.to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=1), FLOOR) / 127.0
        dst = bh.to(tl.int64) * L_pad + rows
        tl.store(qo_ptr + dst[:, None] * D + cols[None, :], round_to_int8(x / scale[:, None]))
        tl.store(qs_ptr + dst, scale)

    @triton.jit
    def _quantize_kv_kernel(
        k_ptr, v_ptr, h_ptr, index_ptr, kv_len_ptr, kmean_ptr, vscale_ptr, ko_ptr, ks_ptr, vo_ptr,
        L, Lk_pad, H, rot_norm,
        skb, skh, skl, skd, svb, svh, svl, svd,
        HAS_MASK: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, FLOOR: tl.constexpr, PRECISION: tl.constexpr,
        INTERLEAVE_K: tl.constexpr,
    ):  # fmt: skip
        """One pass over a block of keys: gather valid keys, rotate + smooth + int8 K with one block scale, FP8 V^T."""
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        n_valid = tl.load(kv_len_ptr + b)
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, D)
        ok = rows < n_valid
        if HAS_MASK:
            src = tl.load(index_ptr + b.to(tl.int64) * L + rows, mask=ok, other=0)
        else:
            src = rows.to(tl.int64)
        src = src[:, None]
        k_src = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh + src * skl + cols[None, :] * skd
        kt = tl.load(k_src, mask=ok[:, None], other=0.0)
        rot = tl.load(h_ptr + cols[:, None] * D + cols[None, :])
        kt = tl.dot(kt, rot, input_precision=PRECISION) * rot_norm.to(tl.float32)
        kt = tl.where(ok[:, None], kt - tl.load(kmean_ptr + bh * D + cols)[None, :], 0.0)
        k_scale = tl.maximum(tl.max(tl.max(tl.abs(kt), axis=1), axis=0), FLOOR) / 127.0
        n = tl.arange(0, BLOCK)
        if INTERLEAVE_K:  # key 16a + 4t + 2b + e of each 32-key chunk goes to row 16a + 8b + 2t + e
            n = (n & ~15) | (((n >> 1) & 1) << 3) | (((n >> 2) & 3) << 1) | (n & 1)
        dst = bh.to(tl.int64) * Lk_pad + blk * BLOCK + n
        tl.store(ko_ptr + dst[:, None] * D + cols[None, :], round_to_int8(kt / k_scale))
        tl.store(ks_ptr + bh * (Lk_pad // BLOCK) + blk, k_scale)

        v_src = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh + src * svl + cols[None, :] * svd
        vt = tl.load(v_src, mask=ok[:, None], other=0.0).to(tl.float32) / tl.load(vscale_ptr + bh * D + cols)[None, :]
        v8 = tl.clamp(vt, -448.0, 448.0).to(tl.float8e4nv)
        v_dst = vo_ptr + (bh.to(tl.int64) * D + cols[None, :]) * Lk_pad + rows[:, None]
        tl.store(v_dst, v8)


def rotation_shared_bytes(dtype: torch.dtype, head_dim: int) -> int:
    """Shared memory of the Q and K+V kernels: their rotation dot stages a ``[128, D]`` tile and the ``[D, D]``
    Hadamard matrix in the input dtype (fp64 runs as fp32); 64 KB for bf16 and 128 KB for fp32 at D = 128."""
    itemsize = 4 if dtype == torch.float64 else dtype.itemsize
    return (max(Q_BLOCK, K_BLOCK) + head_dim) * head_dim * itemsize


def triton_quantize_fits(dtype: torch.dtype, head_dim: int, capability: tuple[int, int]) -> bool:
    """Whether :func:`quantize_qkv_triton` can launch for this input dtype on a GPU of this capability
    (fp32 at D = 128 does not on Ada's 99 KB per block)."""
    return rotation_shared_bytes(dtype, head_dim) <= max_shared_memory_per_block(capability)


def _triton_inputs(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Check that Triton and this GPU's shared memory can take these inputs; fp64 comes back as fp32."""
    if triton is None:
        raise RuntimeError("Triton is not installed: use quantize_qkv_torch (backend='reference')")
    x = xs[0]
    D = x.shape[-1]
    if x.is_cuda and not triton_quantize_fits(x.dtype, D, torch.cuda.get_device_capability(x.device)):
        raise ValueError(f"{x.dtype} inputs with head dim {D} need {rotation_shared_bytes(x.dtype, D)} bytes of "
                         "shared memory per block, more than this GPU has: use quantize_qkv_torch (fp8_attention "
                         "does) or bf16/fp16 inputs")
    if x.dtype == torch.float64:  # tensor cores take no fp64; fp32 keeps more precision than the int8 result needs
        return tuple(t.float() for t in xs)
    return xs


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # 16-bit inputs times +-1: exact either way


def quantize_q_triton(q: torch.Tensor, sm_scale: float) -> QuantizedQ:
    """Same result as :func:`quantize_q_torch` in one Triton pass; any input strides."""
    (q,) = _triton_inputs(q)
    B, H, L, D = q.shape
    out = empty_quantized_q(B, H, L, D, sm_scale, q.device, pad=False)  # the kernel writes the padding rows too
    lq_pad = out.q.shape[1]
    _quantize_q_kernel[(lq_pad // Q_BLOCK, B * H)](
        q, hadamard(D, dtype=q.dtype, device=q.device), out.q, out.q_scale, L, lq_pad, H, *q.stride(),
        sm_scale * LOG2E * D**-0.5,
        D=D, BLOCK=Q_BLOCK, FLOOR=SCALE_FLOOR, PRECISION=_precision(q.dtype), num_warps=8,
    )  # fmt: skip
    return out


def quantize_kv_triton(
    k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, interleave_k: bool = False
) -> tuple[torch.Tensor, ...]:
    """Same result as :func:`quantize_kv_torch` in two Triton passes (K/V stats, then K+V); any input strides."""
    k, v = _triton_inputs(k, v)
    B, H, L, D = k.shape
    lk_pad = _round_up(L, K_BLOCK)
    device = k.device
    has_mask = key_padding_mask is not None
    if has_mask:
        kv_len, key_index = pack_keys(key_padding_mask, B, L, device)
        valid_u8 = key_padding_mask.to(device=device, dtype=torch.uint8).contiguous()
        key_index = key_index.contiguous()
    else:  # every key valid, in order: the kernels read neither the index nor the mask
        kv_len = valid_u8 = key_index = torch.full((B,), L, dtype=torch.int32, device=device)

    n_chunks = math.ceil(L / STATS_CHUNK)
    ksum = torch.empty(B * H, n_chunks, D, dtype=torch.float32, device=device)
    vmax = torch.empty_like(ksum)
    _kv_stats_kernel[(n_chunks, B * H)](
        k, v, valid_u8, ksum, vmax, L, H, n_chunks, *k.stride(), *v.stride(),
        HAS_MASK=has_mask, D=D, CHUNK=STATS_CHUNK, ROWS=64, num_warps=4,
    )  # fmt: skip
    k_mean = torch.empty(B * H, D, dtype=torch.float32, device=device)
    v_scale = torch.empty_like(k_mean)
    _kv_finalize_kernel[(B * H,)](
        ksum, vmax, kv_len, hadamard(D, device=torch.device(device)), k_mean, v_scale, H, n_chunks, D**-0.5,
        D=D, CHUNKS=32, MAX_CHUNKS=max(32, triton.next_power_of_2(n_chunks)), FLOOR=SCALE_FLOOR,
        FP8_MAX=FP8_E4M3_MAX, num_warps=8,
    )  # fmt: skip

    k_out = torch.empty(B * H, lk_pad, D, dtype=torch.int8, device=device)
    k_scale = torch.empty(B * H, lk_pad // K_BLOCK, dtype=torch.float32, device=device)
    v_t = torch.empty(B * H, D, lk_pad, dtype=torch.float8_e4m3fn, device=device)
    _quantize_kv_kernel[(lk_pad // K_BLOCK, B * H)](
        k, v, hadamard(D, dtype=k.dtype, device=device), key_index, kv_len, k_mean, v_scale, k_out, k_scale, v_t,
        L, lk_pad, H, D**-0.5,
        *k.stride(), *v.stride(),
        HAS_MASK=has_mask, D=D, BLOCK=K_BLOCK, FLOOR=SCALE_FLOOR, PRECISION=_precision(k.dtype),
        INTERLEAVE_K=interleave_k, num_warps=8,
    )  # fmt: skip
    return k_out, k_scale, v_t, v_scale, kv_len


def quantize_qkv_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, sm_scale: float,
    interleave_k: bool = False,
) -> QuantizedQKV:
    """Same result as :func:`quantize_qkv_torch` in three Triton passes (K/V stats, K+V, Q); any input strides."""
    kv = quantize_kv_triton(k, v, key_padding_mask, interleave_k)
    return QuantizedQKV.from_parts(quantize_q_triton(q, sm_scale), kv, interleave_k)
