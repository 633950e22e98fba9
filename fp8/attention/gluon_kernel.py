"""Hopper (sm_90) FP8 attention in Triton's Gluon dialect: the Triton kernel's arithmetic, scheduled by hand.

Same numerics and buffers as :mod:`.triton_kernel` (INT8 Q.K, fp32 online softmax, FP8 P.V from a zeroed wgmma
accumulator added into the fp32 accumulator), with three things plain Triton 3.6 cannot express on sm_90:

- **P without shuffles.** K is quantized with its rows interleaved inside every 32-key chunk
  (:func:`.quantize_qkv.interleave_keys`), so the keys each thread holds in the Q.K accumulator are exactly the keys
  it must supply in P.V's FP8 register operand; moving P into that operand is a register renaming
  (reshape/permute), where Triton emits SHFL + PRMT sequences. The masked last tile maps columns back to keys.
- **Its own TMA ring.** K and V tiles come through a 2-slot ring with one mbarrier per slot and operand. The slot of
  tile j-1 is refilled right after the Q.K wgmma of tile j completes: that wgmma is warpgroup-collective, and every
  warp waited for P.V of tile j-1 before issuing it, so nothing reads the slot any more.
- **The K scale of the next tile** is a plain global load one tile ahead, not a shared-memory pipeline stage.

One warpgroup (4 warps, 64 query rows) per CTA and a 168-register cap, so three CTAs share an SM and the warp
schedulers overlap one CTA's softmax with another's MMAs (the kernel itself waits on each wgmma; a second warpgroup
doing the overlap explicitly needs the registers of a third CTA, see bench/NOTES-attention.md).

H200, L = 67,584 / 119,056, 24 heads: 846-860 / 837-844 TFLOP/s against 780-793 for the Triton kernel in the same
runs (bench/NOTES-attention.md). Needs Triton's Gluon (3.5+) and a Hopper GPU (wgmma); elsewhere
:func:`gluon_supported` says why not and the Triton kernel runs.
"""

from __future__ import annotations

import torch

from .quantize_qkv import K_BLOCK, QuantizedQKV
from .reference import P_LOG2_SCALE

__all__ = ["attention_gluon", "gluon_supported", "BLOCK_M", "BLOCK_N", "STAGES", "HEAD_DIM"]

BLOCK_M = 64  # query rows per CTA: one warpgroup
BLOCK_N = 128  # keys per tile
STAGES = 2  # K/V ring slots: 3 CTAs x (8 KB Q + 2 x 32 KB) fit the SM's shared memory, 3 slots would not
HEAD_DIM = 128
MAX_REGISTERS = 168  # 3 CTAs x 128 threads x 168 registers fill the 64K register file without spills

try:  # Gluon's Hopper dialect: absent on older Tritons, harmless to import without a GPU
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    _IMPORT_ERROR = ""
except Exception as _e:  # noqa: BLE001 (ImportError, or AttributeError from a half-present experimental API)
    _IMPORT_ERROR = repr(_e)


def gluon_supported(capability: tuple[int, int], head_dim: int) -> tuple[bool, str]:
    """``(supported, reason)`` for :func:`attention_gluon` on a GPU of this capability with this head dim."""
    if _IMPORT_ERROR:
        return False, f"Triton's Gluon Hopper dialect is not importable ({_IMPORT_ERROR})"
    if tuple(capability) != (9, 0):
        return False, f"the Gluon kernel uses Hopper's wgmma (sm_90); this GPU is sm_{capability[0]}{capability[1]}"
    if head_dim != HEAD_DIM:
        return False, f"the Gluon kernel is built for head dim {HEAD_DIM}, not {head_dim}"
    return True, "ok"


if not _IMPORT_ERROR:
    _K_SCALE_BLOCK = gl.constexpr(K_BLOCK)
    _P_SHIFT = gl.constexpr(P_LOG2_SCALE)

    @gluon.jit
    def _issue_kv(desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, k_row, v_row, t, pred,
                  BLOCK_N: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
        """TMA loads of key tile ``t``'s K and V into slot ``t % STAGES`` (nothing when ``pred`` is false)."""
        slot = t % STAGES
        mbarrier.expect(k_ready.index(slot), desc_k.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(desc_k, [k_row + t * BLOCK_N, 0], k_ready.index(slot), k_smem.index(slot),
                                        pred=pred)  # fmt: skip
        mbarrier.expect(v_ready.index(slot), desc_v.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(desc_v, [v_row, t * BLOCK_N], v_ready.index(slot), v_smem.index(slot),
                                        pred=pred)  # fmt: skip

    @gluon.jit
    def _attend_tile(j, acc, m_i, l_i, rf, q_smem, k_smem, v_smem, k_ready, v_ready, desc_k, desc_v, k_row, v_row,
                     n_tiles, kv_len, s_zero, o_zero, s_layout: gl.constexpr, o_layout: gl.constexpr,
                     p_layout: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, P_SHIFT: gl.constexpr,
                     MASKED: gl.constexpr):  # fmt: skip
        slot = j % STAGES
        phase = (j // STAGES) & 1
        mbarrier.wait(k_ready.index(slot), phase)
        s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_int = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok,))
        if not MASKED:  # the masked tile is the last one: nothing left to load
            t = j - 1 + STAGES
            _issue_kv(desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, k_row, v_row, t, (j > 0) & (t < n_tiles),
                      BLOCK_N, STAGES)  # fmt: skip
        s = s_int.to(gl.float32)
        if MASKED:
            cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            # column c = 16a + 8b + 2t + e holds key 16a + 4t + 2b + e of its 32-key chunk
            cols = (cols & ~15) + ((cols >> 1) & 3) * 4 + ((cols >> 3) & 1) * 2 + (cols & 1)
            s = gl.where(gl.expand_dims(j * BLOCK_N + cols < kv_len, 0), s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * rf)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * gl.expand_dims(rf, 1) - gl.expand_dims(m_new - P_SHIFT, 1))
        l_i = l_i * alpha + gl.sum(p, axis=1)
        p8 = p.to(gl.float8e4nv)
        # back to key order: a renaming of registers, each thread already holds its A-operand keys
        SUB_M: gl.constexpr = p8.shape[0]
        p8 = gl.reshape(p8, [SUB_M, BLOCK_N // 32, 2, 2, 4, 2])  # (row, chunk, a, b, t, e)
        p8 = gl.permute(p8, [0, 1, 2, 4, 3, 5])  # (row, chunk, a, t, b, e)
        p8 = gl.convert_layout(gl.reshape(p8, [SUB_M, BLOCK_N]), p_layout)
        mbarrier.wait(v_ready.index(slot), phase)
        pv_tok = warpgroup_mma(p8, v_smem.index(slot).permute((1, 0)), o_zero, use_acc=False, is_async=True)
        pv = warpgroup_mma_wait(num_outstanding=0, deps=(pv_tok,))
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1) + pv
        return acc, m_new, l_i

    @gluon.jit
    def _fp8_attention_gluon_kernel(
        desc_q, desc_k, desc_v, q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr,
        H, L, Lq_pad, Lk_pad, sob, soh, sol, sod,
        HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    ):  # fmt: skip
        K_SCALE_BLOCK: gl.constexpr = _K_SCALE_BLOCK
        P_SHIFT: gl.constexpr = _P_SHIFT
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 32])  # fmt: skip
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 32])  # fmt: skip
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)

        q_smem = gl.allocate_shared_memory(desc_q.dtype, desc_q.block_type.shape, desc_q.layout)
        k_smem = gl.allocate_shared_memory(desc_k.dtype, [STAGES] + desc_k.block_type.shape, desc_k.layout)
        v_smem = gl.allocate_shared_memory(desc_v.dtype, [STAGES] + desc_v.block_type.shape, desc_v.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
        fence_async_shared()

        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        kv_len = gl.load(kv_len_ptr + b)
        n_tiles = gl.cdiv(kv_len, BLOCK_N)
        n_full = kv_len // BLOCK_N
        k_row = bh * Lk_pad
        v_row = bh * HEAD_DIM
        row0 = pid_m * BLOCK_M

        mbarrier.expect(q_bar, desc_q.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [bh * Lq_pad + row0, 0], q_bar, q_smem)
        for i in gl.static_range(STAGES):
            _issue_kv(desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, k_row, v_row, i, i < n_tiles, BLOCK_N,
                      STAGES)  # fmt: skip

        offs_s = row0 + gl.arange(0, BLOCK_M, layout=row_s)
        row_factor = gl.load(q_scale_ptr + bh * Lq_pad + offs_s)
        ks_rows = k_scale_ptr + bh * (Lk_pad // K_SCALE_BLOCK) + 0 * offs_s
        last_scale = (Lk_pad - 1) // K_SCALE_BLOCK
        ks = gl.load(ks_rows)
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout)
        o_zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([BLOCK_M], gl.float32, row_s)
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
        mbarrier.wait(q_bar, 0)

        for j in range(n_full):
            ks_next = gl.load(ks_rows + gl.minimum(((j + 1) * BLOCK_N) // K_SCALE_BLOCK, last_scale))
            acc, m_i, l_i = _attend_tile(
                j, acc, m_i, l_i, row_factor * ks, q_smem, k_smem, v_smem, k_ready, v_ready, desc_k, desc_v,
                k_row, v_row, n_tiles, kv_len, s_zero, o_zero, s_layout, o_layout, p_layout,
                BLOCK_N, STAGES, P_SHIFT, False,
            )  # fmt: skip
            ks = ks_next
        if n_full < n_tiles:
            acc, m_i, l_i = _attend_tile(
                n_full, acc, m_i, l_i, row_factor * ks, q_smem, k_smem, v_smem, k_ready, v_ready, desc_k, desc_v,
                k_row, v_row, n_tiles, kv_len, s_zero, o_zero, s_layout, o_layout, p_layout,
                BLOCK_N, STAGES, P_SHIFT, True,
            )  # fmt: skip

        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        offs_m = row0 + gl.arange(0, BLOCK_M, layout=row_o)
        v_scale = gl.load(v_scale_ptr + bh * HEAD_DIM + cols)
        o = acc * gl.expand_dims(1.0 / gl.convert_layout(l_i, row_o), 1) * gl.expand_dims(v_scale, 0)
        o_ptrs = (out_ptr + b.to(gl.int64) * sob + h.to(gl.int64) * soh
                  + gl.expand_dims(offs_m.to(gl.int64) * sol, 1) + gl.expand_dims(cols * sod, 0))  # fmt: skip
        mask = gl.expand_dims(offs_m < L, 1) & gl.expand_dims(cols < HEAD_DIM, 0)
        gl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=mask)


def attention_gluon(qkv: QuantizedQKV, out: torch.Tensor) -> torch.Tensor:
    """Run the kernel on operands quantized with ``interleave_k=True`` into ``out`` ``[B, H, L, D]`` (any strides)."""
    if _IMPORT_ERROR:
        raise RuntimeError(f"Triton's Gluon Hopper dialect is not importable: {_IMPORT_ERROR}")
    if not qkv.k_interleaved:
        raise ValueError("attention_gluon needs K in its interleaved row order: quantize with interleave_k=True")
    BH, lq_pad, D = qkv.q.shape
    lk_pad = qkv.k.shape[1]
    if D != HEAD_DIM:
        raise ValueError(f"attention_gluon is built for head dim {HEAD_DIM}, got {D}: use the Triton kernel")
    desc_q = _descriptor(qkv.q.view(BH * lq_pad, D), [BLOCK_M, D], gl.int8)
    desc_k = _descriptor(qkv.k.view(BH * lk_pad, D), [BLOCK_N, D], gl.int8)
    desc_v = _descriptor(qkv.v_t.view(BH * D, lk_pad), [D, BLOCK_N], gl.float8e4nv)
    _fp8_attention_gluon_kernel[(lq_pad // BLOCK_M, BH)](
        desc_q, desc_k, desc_v, qkv.q_scale, qkv.k_scale, qkv.v_scale, qkv.kv_len, out,
        qkv.heads, qkv.seq_len, lq_pad, lk_pad, *out.stride(),
        HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=STAGES, num_warps=4, maxnreg=MAX_REGISTERS,
    )  # fmt: skip
    return out


def _descriptor(t: torch.Tensor, block: list[int], dtype) -> TensorDescriptor:
    """TMA descriptor of a 2-D buffer with the swizzled shared layout wgmma reads."""
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, dtype))
