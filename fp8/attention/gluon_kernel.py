"""Gluon (Hopper sm_90a) FP8 attention, FA3-style scheduling; same numerics and contract as :mod:`.triton_kernel`.

Arithmetic, per key tile, exactly as the Triton kernel and :func:`.reference.attention_reference`: INT8 Q.K with an
int32 accumulator, ``rf = row_factor * k_scale``, running max ``m = max(m, max(s) * rf)``, ``alpha = exp2(m_old - m)``,
``P = exp2(s * rf - (m - P_SHIFT))`` cast to float8e4nv, ``l = l * alpha + sum(P)``, the tile's P.V from a zeroed wgmma
accumulator, ``acc = acc * alpha + pv``; the last key tile is masked (keys >= kv_len get -inf); ``out = acc / l *
v_scale``. The mask is also applied to tile 0 (harmless when it is full), so the steady-state loop carries none.

Scheduling (what plain Triton 3.6 cannot express, see bench/NOTES-attention.md):

- ``gl.warp_specialize``: a producer partition (TMA loads of K and V tiles into a ``STAGES``-deep shared-memory ring,
  ``k_ready`` / ``v_ready`` / ``empty`` mbarriers; K and V of one tile share a slot) and one or two consumer warpgroups
  of 64 query rows each (two consumers share every K/V tile: ``empty`` counts one arrival per consumer).
- Inside each consumer, software pipelining across key tiles: iteration j issues Q.K_j and P_{j-1}.V_{j-1} as async
  wgmmas, waits for Q.K_j only (``warpgroup_mma_wait(1)``), runs the softmax of tile j while P.V_{j-1} runs on the
  tensor cores, then waits for P.V_{j-1} and does ``acc = acc * alpha_{j-1} + pv_{j-1}`` (same arithmetic order).
- ``PINGPONG`` (two consumers): the consumers take turns issuing their wgmmas (mbarriers ``turn[0]``/``turn[1]``),
  so one's softmax runs under the other's MMAs, as FA3's warp-scheduler barriers do.

- ``kperm`` (config names ``...kp...``): K is copied once per call with its rows permuted inside every 32-key chunk
  (row ``16a + 8b + 2t + e`` holds key ``16a + 4t + 2b + e``), so the wgmma accumulator of Q.K already holds, in each
  thread, exactly the keys that thread must supply in the FP8 A operand of P.V; moving P to the A layout is then a
  register renaming (reshape/permute) instead of SHFL + PRMT. Same arithmetic (the max and sum are order-free; the
  masked tile maps columns back to keys). SASS (CPU compile): per 128-key loop iteration 717 instructions (c2
  ping-pong), 710 (c2), 698 (c1/r128) instead of ~795, no SHFL.IDX, no LDL/STL anywhere (STACK 0; c1 spilled 48 B
  before). What remains of the packing (~90 PRMT + 64 LOP3 + 32 SHF) is P being carried across the loop edge as 64
  separate bytes; casting to fp8 right before P.V removes it (621 instructions) but a 64-register fp32 P spills.

Compiled for sm_90a on a CPU machine with Triton 3.6's ptxas (D=128; not yet run on a GPU). All four variants: Q.K is
``IGMMA.64x128x32.S8.S8`` (64x64 for block_n 64), P.V ``QGMMA.64x128x32.F32.E4M3.E4M3`` with P from registers, and in
the steady-state loop the waits are ``WARPGROUP.DEPBAR.LE gsb0, 0x1`` (Q.K_j done, P.V_{j-1} still running) then
``0x0``; 66 MUFU.EX2 per 128-key tile and thread, ~795 instructions per loop iteration (block_n 128), no LDL/STL in the
loop. setmaxnreg (``USETMAXREG``): producer 24, consumers 240 (2 consumers, 12 warps, kernel cap 168 = 1 CTA/SM) or
232 (1 consumer, 8 warps, ``maxnreg=128`` so 2 CTAs/SM). Spills: 2 consumers x block_n 128: 32 B stack, 1 consumer:
48 B, only in the peeled last (masked) tile, outside the loop; block_n 64: none. Shared memory: 115 KB (c2, 3 stages),
74 KB (c1, 2 stages), 82 KB (c2, n64, 4 stages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantize_qkv import K_BLOCK, Q_BLOCK, QuantizedQKV
from .reference import P_LOG2_SCALE

__all__ = ["GluonAttentionConfig", "GLUON_CONFIGS", "DEFAULT_GLUON_CONFIG", "attention_gluon", "GLUON_AVAILABLE",
           "GLUON_IMPORT_ERROR"]  # fmt: skip

try:  # Gluon's Hopper dialect: absent on old Tritons and harmless to import on CPU-only machines
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

    GLUON_AVAILABLE, GLUON_IMPORT_ERROR = True, ""
except Exception as _e:  # noqa: BLE001 (ImportError, or AttributeError from a half-present experimental API)
    GLUON_AVAILABLE, GLUON_IMPORT_ERROR = False, repr(_e)


@dataclass(frozen=True)
class GluonAttentionConfig:
    """One scheduling variant. ``consumers`` warpgroups of 64 query rows each share every K/V tile."""

    block_n: int = 128
    stages: int = 3
    consumers: int = 2
    pingpong: bool = True
    producer_warps: int = 4  # a full warpgroup, so that setmaxnreg applies per warpgroup
    producer_regs: int = 24
    consumer_regs: int = 240
    maxnreg: int | None = None  # kernel-wide cap (1 consumer: 128 lets 2 CTAs share an SM, setmaxnreg moves the rest)
    kperm: bool = False  # K rows permuted within 32 keys so that P lands in the wgmma A layout without shuffles

    def __post_init__(self):
        if K_BLOCK % self.block_n or self.block_n not in (64, 128):
            raise ValueError(f"{self}: block_n must be 64 or 128 (a divisor of {K_BLOCK})")
        if self.consumers not in (1, 2) or (self.pingpong and self.consumers != 2):
            raise ValueError(f"{self}: consumers must be 1 or 2; pingpong needs 2")
        if self.stages < 2:
            raise ValueError(f"{self}: stages must be >= 2")

    @property
    def block_m(self) -> int:
        return 64 * self.consumers

    @property
    def name(self) -> str:
        pp = "pp" if self.pingpong else ""
        cap = f"/r{self.maxnreg}" if self.maxnreg else ""
        kp = "kp" if self.kperm else ""
        return f"gluon_c{self.consumers}{pp}{kp}n{self.block_n}s{self.stages}{cap}"


GLUON_CONFIGS = [
    GluonAttentionConfig(block_n=128, stages=3, consumers=2, pingpong=True),
    GluonAttentionConfig(block_n=128, stages=3, consumers=2, pingpong=False),
    GluonAttentionConfig(block_n=128, stages=2, consumers=1, pingpong=False, consumer_regs=232, maxnreg=128),
    GluonAttentionConfig(block_n=64, stages=4, consumers=2, pingpong=True),
    GluonAttentionConfig(block_n=128, stages=3, consumers=2, pingpong=True, kperm=True),
    GluonAttentionConfig(block_n=128, stages=3, consumers=2, pingpong=False, kperm=True),
    GluonAttentionConfig(block_n=128, stages=2, consumers=1, pingpong=False, consumer_regs=232, maxnreg=128,
                         kperm=True),
]
DEFAULT_GLUON_CONFIG = GLUON_CONFIGS[0]


if GLUON_AVAILABLE:
    _K_SCALE_BLOCK = gl.constexpr(K_BLOCK)
    _P_SHIFT = gl.constexpr(P_LOG2_SCALE)

    @gluon.jit
    def _producer(desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, empty, kv_len_ptr, H, Lk_pad):
        HEAD_DIM: gl.constexpr = k_smem.shape[2]
        BLOCK_N: gl.constexpr = k_smem.shape[1]
        STAGES: gl.constexpr = k_smem.shape[0]
        bh = gl.program_id(1)
        kv_len = gl.load(kv_len_ptr + bh // H)
        n_tiles = gl.cdiv(kv_len, BLOCK_N)
        k_row = bh * Lk_pad
        v_row = bh * HEAD_DIM
        for j in range(n_tiles):
            slot = j % STAGES
            # a fresh mbarrier counts as having completed the phase of parity 1: the first pass does not wait
            mbarrier.wait(empty.index(slot), ((j // STAGES) & 1) ^ 1)
            mbarrier.expect(k_ready.index(slot), desc_k.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_k, [k_row + j * BLOCK_N, 0], k_ready.index(slot), k_smem.index(slot))
            mbarrier.expect(v_ready.index(slot), desc_v.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_v, [v_row, j * BLOCK_N], v_ready.index(slot), v_smem.index(slot))

    @gluon.jit
    def _softmax(s_int, m_i, l_i, rf, start_n, kv_len, s_layout: gl.constexpr, p_layout: gl.constexpr,
                 BLOCK_N: gl.constexpr, P_SHIFT: gl.constexpr, MASKED: gl.constexpr, KPERM: gl.constexpr):  # fmt: skip
        s = s_int.to(gl.float32)
        if MASKED:
            cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            if KPERM:  # S column c holds key 16a + 4t + 2b + e of its 32-key chunk, c = 16a + 8b + 2t + e
                cols = (cols & ~15) + ((cols >> 1) & 3) * 4 + ((cols >> 3) & 1) * 2 + (cols & 1)
            cols = start_n + cols
            s = gl.where(gl.expand_dims(cols < kv_len, 0), s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * rf)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * gl.expand_dims(rf, 1) - gl.expand_dims(m_new - P_SHIFT, 1))
        l_i = l_i * alpha + gl.sum(p, axis=1)
        p8 = p.to(gl.float8e4nv)
        if KPERM:  # back to key order: a pure renaming of registers (each thread already holds its A-operand keys)
            SUB_M: gl.constexpr = p8.shape[0]
            p8 = gl.reshape(p8, [SUB_M, BLOCK_N // 32, 2, 2, 4, 2])  # (row, chunk, a, b, t, e)
            p8 = gl.permute(p8, [0, 1, 2, 4, 3, 5])  # (row, chunk, a, t, b, e): key order
            p8 = gl.reshape(p8, [SUB_M, BLOCK_N])
        p8 = gl.convert_layout(p8, p_layout)
        return p8, alpha, m_new, l_i

    @gluon.jit
    def _step(j, acc, p_prev, alpha_prev, m_i, l_i, row_factor, q_smem, k_smem, v_smem, k_ready, v_ready, empty,
              my_turn, other_turn, ks_ptr, kv_len, s_zero, o_zero, s_layout: gl.constexpr, o_layout: gl.constexpr,
              p_layout: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, K_SCALE_BLOCK: gl.constexpr,
              P_SHIFT: gl.constexpr, PINGPONG: gl.constexpr, MASKED: gl.constexpr, KPERM: gl.constexpr):  # fmt: skip
        """Key tile j: issue Q.K_j and P_{j-1}.V_{j-1}; softmax of tile j under P.V_{j-1}; fold P.V_{j-1} into acc."""
        slot = j % STAGES
        prev = (j - 1) % STAGES
        start_n = j * BLOCK_N
        rf = row_factor * gl.load(ks_ptr + start_n // K_SCALE_BLOCK)
        if PINGPONG:
            mbarrier.wait(my_turn, (j - 1) & 1)
        mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
        s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
        pv_tok = warpgroup_mma(p_prev, v_smem.index(prev).permute((1, 0)), o_zero, use_acc=False, is_async=True)
        if PINGPONG:
            mbarrier.arrive(other_turn)
        s_int = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok,))
        p8, alpha, m_i, l_i = _softmax(s_int, m_i, l_i, rf, start_n, kv_len, s_layout, p_layout, BLOCK_N, P_SHIFT,
                                       MASKED, KPERM)  # fmt: skip
        pv = warpgroup_mma_wait(num_outstanding=0, deps=(pv_tok,))
        mbarrier.arrive(empty.index(prev))
        acc = acc * gl.expand_dims(gl.convert_layout(alpha_prev, gl.SliceLayout(1, o_layout)), 1) + pv
        return acc, p8, alpha, m_i, l_i

    @gluon.jit
    def _consumer(c: gl.constexpr, desc_q, q_smem, q_bar, k_smem, v_smem, k_ready, v_ready, empty, turn, flags,
                  q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad,
                  sob, soh, sol, sod, CONSUMERS: gl.constexpr):  # fmt: skip
        # constexprs do not survive warp_specialize's argument tuples: take them from static shapes and globals
        SUB_M: gl.constexpr = q_smem.shape[0]
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        BLOCK_N: gl.constexpr = k_smem.shape[1]
        STAGES: gl.constexpr = k_smem.shape[0]
        PINGPONG: gl.constexpr = turn.shape[0] == 2
        KPERM: gl.constexpr = flags.shape[0] == 2
        K_SCALE_BLOCK: gl.constexpr = _K_SCALE_BLOCK
        P_SHIFT: gl.constexpr = _P_SHIFT
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 32])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)

        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        kv_len = gl.load(kv_len_ptr + b)
        n_tiles = gl.cdiv(kv_len, BLOCK_N)
        row0 = pid_m * (SUB_M * CONSUMERS) + c * SUB_M
        my_turn = turn.index(c % turn.shape[0])
        other_turn = turn.index((1 - c) % turn.shape[0])

        mbarrier.expect(q_bar, desc_q.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [bh * Lq_pad + row0, 0], q_bar, q_smem)
        offs_s = row0 + gl.arange(0, SUB_M, layout=row_s)
        row_factor = gl.load(q_scale_ptr + bh * Lq_pad + offs_s)
        ks_ptr = k_scale_ptr + bh * (Lk_pad // K_SCALE_BLOCK)
        s_zero = gl.zeros([SUB_M, BLOCK_N], gl.int32, s_layout)
        o_zero = gl.zeros([SUB_M, HEAD_DIM], gl.float32, o_layout)
        m_i = gl.full([SUB_M], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([SUB_M], gl.float32, row_s)
        acc = gl.zeros([SUB_M, HEAD_DIM], gl.float32, o_layout)
        mbarrier.wait(q_bar, 0)

        # prologue: tile 0 (masked: it is also the last tile when kv_len <= BLOCK_N)
        rf = row_factor * gl.load(ks_ptr)
        mbarrier.wait(k_ready.index(0), 0)
        s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_int = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok,))
        p_prev, alpha_prev, m_i, l_i = _softmax(s_int, m_i, l_i, rf, 0, kv_len, s_layout, p_layout, BLOCK_N,
                                                P_SHIFT, True, KPERM)  # fmt: skip
        if PINGPONG:
            if c == 1:
                mbarrier.arrive(other_turn)  # consumer 0 issues first

        for j in range(1, n_tiles - 1):
            acc, p_prev, alpha_prev, m_i, l_i = _step(
                j, acc, p_prev, alpha_prev, m_i, l_i, row_factor, q_smem, k_smem, v_smem, k_ready, v_ready, empty,
                my_turn, other_turn, ks_ptr, kv_len, s_zero, o_zero, s_layout, o_layout, p_layout,
                BLOCK_N, STAGES, K_SCALE_BLOCK, P_SHIFT, PINGPONG, False, KPERM,
            )  # fmt: skip
        if n_tiles > 1:
            acc, p_prev, alpha_prev, m_i, l_i = _step(
                n_tiles - 1, acc, p_prev, alpha_prev, m_i, l_i, row_factor, q_smem, k_smem, v_smem, k_ready,
                v_ready, empty, my_turn, other_turn, ks_ptr, kv_len, s_zero, o_zero, s_layout, o_layout, p_layout,
                BLOCK_N, STAGES, K_SCALE_BLOCK, P_SHIFT, PINGPONG, True, KPERM,
            )  # fmt: skip

        # epilogue: P.V of the last tile
        last = (n_tiles - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
        pv_tok = warpgroup_mma(p_prev, v_smem.index(last).permute((1, 0)), o_zero, use_acc=False, is_async=True)
        pv = warpgroup_mma_wait(num_outstanding=0, deps=(pv_tok,))
        mbarrier.arrive(empty.index(last))
        acc = acc * gl.expand_dims(gl.convert_layout(alpha_prev, gl.SliceLayout(1, o_layout)), 1) + pv

        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
        cols = gl.arange(0, HEAD_DIM, layout=col_o)
        offs_m = row0 + gl.arange(0, SUB_M, layout=row_o)
        v_scale = gl.load(v_scale_ptr + bh * HEAD_DIM + cols)
        inv_l = 1.0 / gl.convert_layout(l_i, row_o)
        o = acc * gl.expand_dims(inv_l, 1) * gl.expand_dims(v_scale, 0)
        o_ptrs = (out_ptr + b.to(gl.int64) * sob + h.to(gl.int64) * soh
                  + gl.expand_dims(offs_m.to(gl.int64) * sol, 1) + gl.expand_dims(cols * sod, 0))  # fmt: skip
        mask = gl.expand_dims(offs_m < L, 1) & gl.expand_dims(cols < HEAD_DIM, 0)
        gl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=mask)

    @gluon.jit
    def _consumer0(desc_q, q_smem, q_bar, k_smem, v_smem, k_ready, v_ready, empty, turn, flags, q_scale_ptr,
                   k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol,
                   sod):  # fmt: skip
        _consumer(0, desc_q, q_smem.index(0), q_bar.index(0), k_smem, v_smem, k_ready, v_ready, empty, turn, flags,
                  q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad,
                  sob, soh, sol, sod, q_smem.shape[0])  # fmt: skip

    @gluon.jit
    def _consumer1(desc_q, q_smem, q_bar, k_smem, v_smem, k_ready, v_ready, empty, turn, flags, q_scale_ptr,
                   k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol,
                   sod):  # fmt: skip
        _consumer(1, desc_q, q_smem.index(1), q_bar.index(1), k_smem, v_smem, k_ready, v_ready, empty, turn, flags,
                  q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad,
                  sob, soh, sol, sod, q_smem.shape[0])  # fmt: skip

    @gluon.jit
    def _fp8_attention_gluon_kernel(
        desc_q, desc_k, desc_v, q_scale_ptr, k_scale_ptr, v_scale_ptr, kv_len_ptr, out_ptr,
        H, L, Lq_pad, Lk_pad, sob, soh, sol, sod,
        HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, K_SCALE_BLOCK: gl.constexpr,
        P_SHIFT: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr, KPERM: gl.constexpr,
        PRODUCER_WARPS: gl.constexpr, PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    ):  # fmt: skip
        q_smem = gl.allocate_shared_memory(desc_q.dtype, [CONSUMERS] + desc_q.block_type.shape, desc_q.layout)
        k_smem = gl.allocate_shared_memory(desc_k.dtype, [STAGES] + desc_k.block_type.shape, desc_k.layout)
        v_smem = gl.allocate_shared_memory(desc_v.dtype, [STAGES] + desc_v.block_type.shape, desc_v.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        N_TURN: gl.constexpr = 2 if PINGPONG else 1
        turn = gl.allocate_shared_memory(gl.int64, [N_TURN, 1], mbarrier.MBarrierLayout())
        N_FLAGS: gl.constexpr = 2 if KPERM else 1  # carries KPERM into the partitions (as a static shape)
        flags = gl.allocate_shared_memory(gl.int64, [N_FLAGS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(CONSUMERS):
            mbarrier.init(q_bar.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=CONSUMERS)
        for i in gl.static_range(N_TURN):
            mbarrier.init(turn.index(i), count=1)
        fence_async_shared()

        args = (desc_q, q_smem, q_bar, k_smem, v_smem, k_ready, v_ready, empty, turn, flags, q_scale_ptr, k_scale_ptr,
                v_scale_ptr, kv_len_ptr, out_ptr, H, L, Lq_pad, Lk_pad, sob, soh, sol, sod)  # fmt: skip
        prod_args = (desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, empty, kv_len_ptr, H, Lk_pad)
        if CONSUMERS == 2:
            gl.warp_specialize([(_consumer0, args), (_consumer1, args), (_producer, prod_args)],
                               [4, PRODUCER_WARPS], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip
        else:
            gl.warp_specialize([(_consumer0, args), (_producer, prod_args)], [PRODUCER_WARPS], [PRODUCER_REGS])


def _smem_layouts(block_m: int, block_n: int, head_dim: int):
    return (
        gl.NVMMASharedLayout.get_default_for([block_m, head_dim], gl.int8),
        gl.NVMMASharedLayout.get_default_for([block_n, head_dim], gl.int8),
        gl.NVMMASharedLayout.get_default_for([head_dim, block_n], gl.float8e4nv),
    )


def attention_gluon(
    qkv: QuantizedQKV, out: torch.Tensor, config: GluonAttentionConfig = DEFAULT_GLUON_CONFIG
) -> torch.Tensor:
    """Run the Gluon kernel on quantized operands into ``out`` ``[B, H, L, D]`` (any strides); returns ``out``."""
    if not GLUON_AVAILABLE:
        raise RuntimeError(f"Triton's Gluon Hopper dialect is not importable: {GLUON_IMPORT_ERROR}")
    BH, lq_pad, D = qkv.q.shape
    lk_pad = qkv.k.shape[1]
    if D != 128:
        raise ValueError(f"the Gluon kernel is built for head dim 128, got {D}")
    cfg = config
    sub_m = 64
    if Q_BLOCK % cfg.block_m:
        raise ValueError(f"{cfg}: {cfg.block_m} query rows per program must divide {Q_BLOCK}")
    lq, lk, lv = _smem_layouts(sub_m, cfg.block_n, D)
    desc_q = TensorDescriptor.from_tensor(qkv.q.view(BH * lq_pad, D), [sub_m, D], lq)
    k = qkv.k
    if cfg.kperm:  # row c = 16a + 8b + 2t + e of each 32-key chunk holds key 16a + 4t + 2b + e (see _softmax)
        k = k.view(BH, lk_pad // 32, 2, 4, 2, 2, D).permute(0, 1, 2, 4, 3, 5, 6).contiguous()
    desc_k = TensorDescriptor.from_tensor(k.view(BH * lk_pad, D), [cfg.block_n, D], lk)
    desc_v = TensorDescriptor.from_tensor(qkv.v_t.view(BH * D, lk_pad), [D, cfg.block_n], lv)
    grid = (lq_pad // cfg.block_m, BH)
    launch = {"num_warps": 4}
    if cfg.maxnreg:
        launch["maxnreg"] = cfg.maxnreg
    _fp8_attention_gluon_kernel[grid](
        desc_q, desc_k, desc_v, qkv.q_scale, qkv.k_scale, qkv.v_scale, qkv.kv_len, out,
        qkv.heads, qkv.seq_len, lq_pad, lk_pad, *out.stride(),
        HEAD_DIM=D, BLOCK_N=cfg.block_n, STAGES=cfg.stages, K_SCALE_BLOCK=K_BLOCK, P_SHIFT=P_LOG2_SCALE,
        CONSUMERS=cfg.consumers, PINGPONG=cfg.pingpong, KPERM=cfg.kperm, PRODUCER_WARPS=cfg.producer_warps,
        PRODUCER_REGS=cfg.producer_regs, CONSUMER_REGS=cfg.consumer_regs, **launch,
    )  # fmt: skip
    return out
