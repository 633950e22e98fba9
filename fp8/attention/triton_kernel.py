"""Triton FP8 attention kernel: INT8 Q.K (int32 accumulator), fp32 online softmax, FP8 e4m3 P.V (fp32 accumulator).

Reads the buffers of :mod:`.quantize_qkv` through TMA tensor descriptors. Per key tile the inner loop does, per
logit: one int->float conversion, one max, one FMA (scales and running max folded into one row factor and one row
offset), one exp2, one add for the row sum, half an FP8 pack; per output element one FMA (``acc * alpha + P.V``:
each tile's P.V starts from a zeroed wgmma accumulator and is added into the fp32 accumulator in registers, which
also avoids the reduced-precision accumulation of Hopper's FP8 MMA over long key sequences). Only the last, partial
key tile carries a mask, so the main loop has no per-element index arithmetic.

Scheduling: Triton 3.6 waits on every wgmma right after issuing it, so a program never overlaps its own softmax with
its own MMAs; overlap comes only from several programs sharing an SM. Hence the default of one warpgroup per program
(BLOCK_M=64, 4 warps) and a 168-register cap so that three programs fit per SM (bench/NOTES-attention.md); 8-warp
programs are slower because the per-tile barriers lock their two warpgroups into the same phase.

Ada (sm_89) has no TMA: Triton lowers a tensor descriptor there to element-wise masked loads whose strides it does not
know, i.e. one byte load per int8/FP8 element and no cp.async pipelining, and every tile shape then spills (offline
sm_89 compile, Triton 3.6: 1.0-2.3 KB of stack). :data:`ADA_CONFIG` therefore passes the padded row-major buffers
themselves (``tma=False``): 16-byte cp.async loads, mma.sync IMMA (int8) and QMMA (e4m3), no spills.
:func:`config_for` picks the config from the device capability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .quantize_qkv import K_BLOCK, KERNEL_HEAD_DIMS, Q_BLOCK, QuantizedQKV
from .reference import INT_TO_FLOAT_BIAS, INT_TO_FLOAT_BIAS_BITS, P_LOG2_SCALE

__all__ = ["AttentionConfig", "DEFAULT_CONFIG", "ADA_CONFIG", "config_for", "attention_triton", "SUPPORTED_HEAD_DIMS"]

SUPPORTED_HEAD_DIMS = KERNEL_HEAD_DIMS
BIAS = tl.constexpr(INT_TO_FLOAT_BIAS)
BIAS_BITS = tl.constexpr(INT_TO_FLOAT_BIAS_BITS)


@dataclass(frozen=True)
class AttentionConfig:
    """Tile shape and scheduling of one kernel variant (the benchmark sweeps these)."""

    block_m: int = 64
    block_n: int = 128
    num_warps: int = 4
    num_stages: int = 2
    maxnreg: int | None = 168  # 168 registers fit 3 programs of 4 warps per SM without spills
    tma: bool = True  # TMA tensor descriptors (sm_90+); False: plain pointer loads (Ada)

    def __post_init__(self):
        if Q_BLOCK % self.block_m or K_BLOCK % self.block_n:
            raise ValueError(f"{self}: block_m must divide {Q_BLOCK} and block_n must divide {K_BLOCK}")

    @property
    def name(self) -> str:
        regs = f"/r{self.maxnreg}" if self.maxnreg else ""
        loads = "" if self.tma else "/ptr"
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}{regs}{loads}"


DEFAULT_CONFIG = AttentionConfig()
# Not measured on an Ada GPU; chosen from offline sm_89 compiles of the tile shapes bench_attention sweeps: the only
# spill-free ones need ~240 registers (one 8-warp program per SM); 128-query tiles halve the K/V reads of 64-query ones.
ADA_CONFIG = AttentionConfig(block_m=128, block_n=64, num_warps=8, num_stages=3, maxnreg=None, tma=False)


def config_for(capability: tuple[int, int]) -> AttentionConfig:
    """The config :func:`attention_triton` uses on a GPU of this compute capability (TMA needs sm_90+)."""
    return DEFAULT_CONFIG if tuple(capability) >= (9, 0) else ADA_CONFIG


@triton.jit
def _load_block(src, row, col, row_stride, ROWS: tl.constexpr, COLS: tl.constexpr, TMA: tl.constexpr):
    """The ``[ROWS, COLS]`` tile at ``(row, col)`` of a 2-D row-major buffer: ``src`` is its TMA descriptor, or
    (``TMA`` False) its base pointer; tiles never cross the padded buffer's end, so no mask."""
    if TMA:
        return src.load([row, col])
    else:
        rows = row.to(tl.int64) + tl.arange(0, ROWS)
        return tl.load(src + rows[:, None] * row_stride + (col + tl.arange(0, COLS))[None, :])


@triton.jit
def _load_scale(ptrs):
    """``*ptrs`` by a plain ``ld.global.nc``, invisible to Triton's loop pipeliner.

    A ``tl.load`` of the per-tile K scale inside the key loop is pipelined through shared memory (cp.async + wait +
    shared load, ~24 instructions per key tile). Issued one tile ahead, this plain load's latency hides behind a whole
    tile of work (bench/NOTES-attention.md).
    """
    return tl.inline_asm_elementwise(
        "ld.global.nc.f32 $0, [$1];", "=f,l", [ptrs], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, rf, desc_k, desc_v, k_row, v_row, start_n, kv_len,
    BLOCK_N: tl.constexpr, P_SHIFT: tl.constexpr, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, Lk_pad,
    TMA: tl.constexpr,
):  # fmt: skip
    k = _load_block(desc_k, k_row + start_n, 0, HEAD_DIM, BLOCK_N, HEAD_DIM, TMA)
    # 1.5 * 2**23 + Q.K exactly, without an int-to-float conversion per logit (reference.py)
    s = (tl.dot(q, k.T, out_dtype=tl.int32) + BIAS_BITS).to(tl.float32, bitcast=True)
    if MASKED:
        cols = start_n + tl.arange(0, BLOCK_N)
        s = tl.where((cols < kv_len)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, (tl.max(s, axis=1) - BIAS) * rf)
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s * rf[:, None] - (BIAS * rf + (m_new - P_SHIFT))[:, None])  # two FMAs, as gluon_kernel.py
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = _load_block(desc_v, v_row, start_n, Lk_pad, HEAD_DIM, BLOCK_N, TMA)
    pv = tl.dot(p.to(tl.float8e4nv), v.T)
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.jit
def _fp8_attention_kernel(
    desc_q, desc_k, desc_v, q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr,
    H, L, Lq_pad, Lk_pad,
    sob, soh, sol, sod,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    K_SCALE_BLOCK: tl.constexpr, P_SHIFT: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kv_len = tl.load(kv_len_ptr + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)

    q = _load_block(desc_q, bh * Lq_pad + pid_m * BLOCK_M, 0, HEAD_DIM, BLOCK_M, HEAD_DIM, TMA)
    row_factor = tl.load(q_scale_ptr + bh * Lq_pad + offs_m)
    ks_ptr = k_scale_ptr + bh * (Lk_pad // K_SCALE_BLOCK)
    k_row = bh * Lk_pad
    v_row = bh * HEAD_DIM

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = (kv_len // BLOCK_N) * BLOCK_N
    # the K scale of tile j+1 is fetched during tile j (see _load_scale)
    ks_rows = ks_ptr + 0 * offs_m
    last_scale = (Lk_pad - 1) // K_SCALE_BLOCK
    ks = _load_scale(ks_rows)
    for start_n in range(0, n_full, BLOCK_N):
        ks_next = _load_scale(ks_rows + tl.minimum((start_n + BLOCK_N) // K_SCALE_BLOCK, last_scale))
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, row_factor * ks, desc_k, desc_v, k_row, v_row, start_n, kv_len,
            BLOCK_N, P_SHIFT, False, HEAD_DIM, Lk_pad, TMA,
        )  # fmt: skip
        ks = ks_next
    if n_full < kv_len:
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, row_factor * ks, desc_k, desc_v, k_row, v_row, n_full, kv_len,
            BLOCK_N, P_SHIFT, True, HEAD_DIM, Lk_pad, TMA,
        )  # fmt: skip

    cols = tl.arange(0, HEAD_DIM)
    v_scale = tl.load(v_scale_ptr + bh * HEAD_DIM + cols)
    o = acc * (1.0 / l_i)[:, None] * v_scale[None, :]
    o_ptrs = (
        out_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m.to(tl.int64)[:, None] * sol + cols[None, :] * sod
    )
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=(offs_m < L)[:, None])


def attention_triton(qkv: QuantizedQKV, out: torch.Tensor, config: AttentionConfig | None = None) -> torch.Tensor:
    """Run the kernel on quantized operands into ``out`` ``[B, H, L, D]`` (any strides); returns ``out``.

    ``config`` defaults to :func:`config_for` ``out``'s GPU.
    """
    if qkv.k_interleaved:
        raise ValueError("attention_triton reads K in key order: quantize with interleave_k=False")
    BH, lq_pad, D = qkv.q.shape
    lk_pad = qkv.k.shape[1]
    cfg = config or config_for(torch.cuda.get_device_capability(out.device))
    if cfg.tma:
        desc_q = TensorDescriptor.from_tensor(qkv.q.view(BH * lq_pad, D), [cfg.block_m, D])
        desc_k = TensorDescriptor.from_tensor(qkv.k.view(BH * lk_pad, D), [cfg.block_n, D])
        desc_v = TensorDescriptor.from_tensor(qkv.v_t.view(BH * D, lk_pad), [D, cfg.block_n])
    else:
        desc_q, desc_k, desc_v = _row_major_buffers(qkv)
    grid = (lq_pad // cfg.block_m, BH)
    launch = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.maxnreg:
        launch["maxnreg"] = cfg.maxnreg
    _fp8_attention_kernel[grid](
        desc_q, desc_k, desc_v, qkv.q_scale, qkv.k_scale, qkv.v_scale, qkv.kv_len, out,
        qkv.heads, qkv.seq_len, lq_pad, lk_pad, *out.stride(),
        HEAD_DIM=D, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, K_SCALE_BLOCK=K_BLOCK, P_SHIFT=P_LOG2_SCALE, TMA=cfg.tma,
        **launch,
    )  # fmt: skip
    return out


def _row_major_buffers(qkv: QuantizedQKV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v_t for the pointer loads, which assume contiguous buffers (row strides D, D and Lk_pad)."""
    for name in ("q", "k", "v_t"):
        if not getattr(qkv, name).is_contiguous():
            raise ValueError(f"QuantizedQKV.{name} must be contiguous for the pointer-load kernel (tma=False): "
                             "build it with quantize_qkv_triton / quantize_qkv_torch, or pass .contiguous() buffers")
    return qkv.q, qkv.k, qkv.v_t
