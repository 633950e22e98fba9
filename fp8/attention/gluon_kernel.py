"""Hopper (sm_90) FP8 attention in Triton's Gluon dialect: the Triton kernel's arithmetic, scheduled by hand.

Same numerics and buffers as :mod:`.triton_kernel` (INT8 Q.K, fp32 online softmax, FP8 P.V from a zeroed wgmma
accumulator added into the fp32 accumulator), with four things plain Triton 3.6 cannot express on sm_90:

- **P without shuffles.** K is quantized with its rows interleaved inside every 32-key chunk
  (:func:`.quantize_qkv.interleave_keys`), so the keys each thread holds in the Q.K accumulator are exactly the keys
  it must supply in P.V's FP8 register operand; moving P into that operand is a register renaming
  (reshape/permute), where Triton emits SHFL + PRMT sequences. The masked last tile maps columns back to keys.
- **Three warpgroups share every K/V tile.** A CTA is three consumer warpgroups (``gl.warp_specialize``, 64 query
  rows each, 192 per CTA, 168 registers, one CTA per SM), so each K/V tile crosses from L2 once per SM instead of
  three times. The H200 runs this kernel at its power cap, and the saved data movement is clock headroom.
- **Its own TMA ring**, 3 slots, with per slot ``k_ready`` / ``v_ready`` (TMA completion) and ``empty`` (one arrival
  per warpgroup after its P.V of that tile). Warpgroup 0 also issues the loads: after its Q.K of tile j it waits on
  ``empty`` for tile j-1 and loads tile j+2 into that slot. Parity waits are exact: ``empty`` of a slot cannot run a
  phase ahead, since its next completion needs a tile that warpgroup 0 has not loaded yet; and a warpgroup waiting
  for tile j has itself released tile j-3 of the same slot, whose next load needs its own arrival for tile j.
- **The K scale of the next tile** is a plain global load one tile ahead, not a shared-memory pipeline stage.

Inside a warpgroup the kernel is serial (Q.K, wait, softmax, P.V, wait); the warp schedulers overlap one warpgroup's
softmax with another's MMAs. Overlapping them inside a warpgroup, FA3-style, needs ~210 registers per thread, i.e.
two warpgroups per SM instead of three, and lost (bench/NOTES-attention.md).

Its speed against cuDNN's bf16 attention and the Triton kernel is in bench/results/ (``attention-*``, written by
bench/bench_attention.py). Needs Triton's Gluon (3.6) and a Hopper GPU (wgmma); elsewhere :func:`gluon_supported`
says why not and the kernel plan (``fp8.kernel_plan``) picks the Triton kernel.
"""

from __future__ import annotations

import torch

from .quantize_qkv import K_BLOCK, QuantizedQKV
from .reference import INT_TO_FLOAT_BIAS, INT_TO_FLOAT_BIAS_BITS, P_LOG2_SCALE

__all__ = ["attention_gluon", "gluon_supported", "BLOCK_M", "BLOCK_N", "HEAD_DIM"]

WARPGROUPS = 3  # consumer warpgroups per CTA, sharing the K/V ring
SUB_M = 64  # query rows per warpgroup
BLOCK_M = WARPGROUPS * SUB_M  # query rows per CTA
BLOCK_N = 128  # keys per tile
STAGES = 3  # K/V ring slots (3 x 32 KB); the fastest ring depth (bench/NOTES-attention.md)
HEAD_DIM = 128
MAX_REGISTERS = 168  # 3 warpgroups x 128 threads x 168 registers fill the 64K register file without spills

try:  # Gluon's Hopper dialect: absent on older Tritons, harmless to import without a GPU
    import triton
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
    _BIAS = gl.constexpr(INT_TO_FLOAT_BIAS)
    _BIAS_BITS = gl.constexpr(INT_TO_FLOAT_BIAS_BITS)

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
    def _attend_tile(j, acc, m_i, l_i, rf, q_smem, k_smem, v_smem, k_ready, v_ready, empty, desc_k, desc_v, k_row,
                     v_row, n_tiles, kv_len, s_zero, o_zero, s_layout: gl.constexpr, o_layout: gl.constexpr,
                     p_layout: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, P_SHIFT: gl.constexpr,
                     MASKED: gl.constexpr, ISSUER: gl.constexpr):  # fmt: skip
        slot = j % STAGES
        phase = (j // STAGES) & 1
        mbarrier.wait(k_ready.index(slot), phase)
        s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_int = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok,))
        if ISSUER:
            if not MASKED:  # refill the slot of tile j-1 with tile j-1+STAGES (the masked tile is the last one)
                t = j - 1 + STAGES
                pred = (j > 0) & (t < n_tiles)
                mbarrier.wait(empty.index(t % STAGES), ((t // STAGES) & 1) ^ 1, pred=pred)
                _issue_kv(desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, k_row, v_row, t, pred, BLOCK_N, STAGES)
        s = (s_int + _BIAS_BITS).to(gl.float32, bitcast=True)  # 1.5 * 2**23 + Q.K exactly, no I2F (reference.py)
        if MASKED:
            cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            # column c = 16a + 8b + 2t + e holds key 16a + 4t + 2b + e of its 32-key chunk
            cols = (cols & ~15) + ((cols >> 1) & 3) * 4 + ((cols >> 3) & 1) * 2 + (cols & 1)
            s = gl.where(gl.expand_dims(j * BLOCK_N + cols < kv_len, 0), s, float("-inf"))
        m_new = gl.maximum(m_i, (gl.max(s, axis=1) - _BIAS) * rf)
        x = s * gl.expand_dims(rf, 1) - gl.expand_dims(_BIAS * rf + (m_new - P_SHIFT), 1)  # one FFMA a logit
        # the row rescale after the logits' arguments: ptxas then schedules warpgroup 0's loop (it also issues the
        # TMA loads) better (bench/NOTES-attention.md)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(x)
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
        mbarrier.arrive(empty.index(slot))  # this warpgroup is done with K and V of tile j
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1) + pv
        return acc, m_new, l_i

    @gluon.jit
    def _consumer(C: gl.constexpr, desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty,
                  q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad,
                  sob, soh, sol, sod):  # fmt: skip
        """Warpgroup ``C``: query rows ``[C * SUB_M, (C + 1) * SUB_M)`` of the CTA; warpgroup 0 also loads K/V."""
        # warp_specialize passes its partitions plain values: shapes carry the constexprs
        WARPGROUPS: gl.constexpr = q_all.shape[0]
        SUB_M: gl.constexpr = q_all.shape[1]
        HEAD_DIM: gl.constexpr = q_all.shape[2]
        STAGES: gl.constexpr = k_smem.shape[0]
        BLOCK_N: gl.constexpr = k_smem.shape[1]
        ISSUER: gl.constexpr = C == 0
        K_SCALE_BLOCK: gl.constexpr = _K_SCALE_BLOCK
        P_SHIFT: gl.constexpr = _P_SHIFT
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 32])  # fmt: skip
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 32])  # fmt: skip
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        q_smem = q_all.index(C)
        q_bar = q_bars.index(C)

        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        kv_len = gl.load(kv_len_ptr + b)
        n_tiles = gl.cdiv(kv_len, BLOCK_N)
        n_full = kv_len // BLOCK_N
        k_row = bh * Lk_pad
        v_row = bh * HEAD_DIM
        row0 = pid_m * (WARPGROUPS * SUB_M) + C * SUB_M

        # rows past this head's Lq_pad read the next head's (or TMA's zero-filled) rows and are never stored
        mbarrier.expect(q_bar, desc_q.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [bh * Lq_pad + row0, 0], q_bar, q_smem)
        if ISSUER:
            for i in gl.static_range(STAGES):
                _issue_kv(desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, k_row, v_row, i, i < n_tiles, BLOCK_N,
                          STAGES)  # fmt: skip

        offs_s = row0 + gl.arange(0, SUB_M, layout=row_s)
        row_factor = gl.load(q_scale_ptr + bh * Lq_pad + offs_s, mask=offs_s < L, other=1.0)
        ks_rows = k_scale_ptr + bh * (Lk_pad // K_SCALE_BLOCK) + 0 * offs_s
        last_scale = (Lk_pad - 1) // K_SCALE_BLOCK
        ks = gl.load(ks_rows)
        s_zero = gl.zeros([SUB_M, BLOCK_N], gl.int32, s_layout)
        o_zero = gl.zeros([SUB_M, HEAD_DIM], gl.float32, o_layout)
        m_i = gl.full([SUB_M], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([SUB_M], gl.float32, row_s)
        acc = gl.zeros([SUB_M, HEAD_DIM], gl.float32, o_layout)
        mbarrier.wait(q_bar, 0)

        for j in range(n_full):
            ks_next = gl.load(ks_rows + gl.minimum(((j + 1) * BLOCK_N) // K_SCALE_BLOCK, last_scale))
            acc, m_i, l_i = _attend_tile(
                j, acc, m_i, l_i, row_factor * ks, q_smem, k_smem, v_smem, k_ready, v_ready, empty, desc_k, desc_v,
                k_row, v_row, n_tiles, kv_len, s_zero, o_zero, s_layout, o_layout, p_layout,
                BLOCK_N, STAGES, P_SHIFT, False, ISSUER,
            )  # fmt: skip
            ks = ks_next
        if n_full < n_tiles:
            acc, m_i, l_i = _attend_tile(
                n_full, acc, m_i, l_i, row_factor * ks, q_smem, k_smem, v_smem, k_ready, v_ready, empty, desc_k,
                desc_v, k_row, v_row, n_tiles, kv_len, s_zero, o_zero, s_layout, o_layout, p_layout,
                BLOCK_N, STAGES, P_SHIFT, True, ISSUER,
            )  # fmt: skip

        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        offs_m = row0 + gl.arange(0, SUB_M, layout=row_o)
        v_scale = gl.load(v_scale_ptr + bh * HEAD_DIM + cols)
        o = acc * gl.expand_dims(1.0 / gl.convert_layout(l_i, row_o), 1) * gl.expand_dims(v_scale, 0)
        o_ptrs = (out_ptr + b.to(gl.int64) * sob + h.to(gl.int64) * soh
                  + gl.expand_dims(offs_m.to(gl.int64) * sol, 1) + gl.expand_dims(cols * sod, 0))  # fmt: skip
        mask = gl.expand_dims(offs_m < L, 1) & gl.expand_dims(cols < HEAD_DIM, 0)
        gl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=mask)

    # one entry point per warpgroup: warp_specialize takes functions, and C must be a compile-time constant
    @gluon.jit
    def _warpgroup0(desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty, q_scale_ptr,
                    k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod):
        _consumer(0, desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty, q_scale_ptr,
                  k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod)  # fmt: skip

    @gluon.jit
    def _warpgroup1(desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty, q_scale_ptr,
                    k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod):
        _consumer(1, desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty, q_scale_ptr,
                  k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod)  # fmt: skip

    @gluon.jit
    def _warpgroup2(desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty, q_scale_ptr,
                    k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod):
        _consumer(2, desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty, q_scale_ptr,
                  k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod)  # fmt: skip

    @gluon.jit
    def _fp8_attention_gluon_kernel(
        desc_q, desc_k, desc_v, q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr,
        H, L, Lq_pad, Lk_pad, sob, soh, sol, sod,
        STAGES: gl.constexpr, WARPGROUPS: gl.constexpr, WORKER_REGISTERS: gl.constexpr,
    ):  # fmt: skip
        q_all = gl.allocate_shared_memory(desc_q.dtype, [WARPGROUPS] + desc_q.block_type.shape, desc_q.layout)
        k_smem = gl.allocate_shared_memory(desc_k.dtype, [STAGES] + desc_k.block_type.shape, desc_k.layout)
        v_smem = gl.allocate_shared_memory(desc_v.dtype, [STAGES] + desc_v.block_type.shape, desc_v.layout)
        q_bars = gl.allocate_shared_memory(gl.int64, [WARPGROUPS, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(WARPGROUPS):
            mbarrier.init(q_bars.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=WARPGROUPS)
        fence_async_shared()

        args = (desc_q, desc_k, desc_v, q_all, q_bars, k_smem, v_smem, k_ready, v_ready, empty, q_scale_ptr,
                k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod)  # fmt: skip
        gl.warp_specialize([(_warpgroup0, args), (_warpgroup1, args), (_warpgroup2, args)], [4, 4],
                           [WORKER_REGISTERS, WORKER_REGISTERS])  # fmt: skip


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
    desc_q = _descriptor(qkv.q.view(BH * lq_pad, D), [SUB_M, D], gl.int8)
    desc_k = _descriptor(qkv.k.view(BH * lk_pad, D), [BLOCK_N, D], gl.int8)
    desc_v = _descriptor(qkv.v_t.view(BH * D, lk_pad), [D, BLOCK_N], gl.float8e4nv)
    _fp8_attention_gluon_kernel[(triton.cdiv(lq_pad, BLOCK_M), BH)](
        desc_q, desc_k, desc_v, qkv.q_scale, qkv.k_scale, qkv.v_scale, qkv.kv_len, out,
        qkv.heads, qkv.seq_len, lq_pad, lk_pad, *out.stride(),
        STAGES=STAGES, WARPGROUPS=WARPGROUPS, WORKER_REGISTERS=MAX_REGISTERS, num_warps=4, maxnreg=MAX_REGISTERS,
    )  # fmt: skip
    return out


def _descriptor(t: torch.Tensor, block: list[int], dtype) -> TensorDescriptor:
    """TMA descriptor of a 2-D buffer with the swizzled shared layout wgmma reads."""
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, dtype))
