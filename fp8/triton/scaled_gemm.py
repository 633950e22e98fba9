"""Persistent Triton FP8 GEMM for Hopper with row-wise scales: ``(x_q * x_scale) @ (w_q * w_scale).T + bias``.

A candidate replacement for ``torch._scaled_mm`` in :func:`..gemm.scaled_gemm` (issue #2); nothing in the model uses
it yet. Operands are the layouts FP8Linear already holds: ``x_q`` ``[M, K]`` and ``w_q`` ``[N, K]`` both row-major,
i.e. both K-major, which is the only operand layout Hopper's FP8 wgmma accepts (no transposed copy is needed).

Kernel: one program per SM loops over output tiles (grouped ordering: ``GROUP_M`` row-tiles sweep the N tiles
together so the weight tiles and the A row-panels stay in L2); A and B tiles arrive by TMA (host-built
``TensorDescriptor``, out-of-bounds rows read as zeros, so M needs no padding) into a ``num_stages``-deep shared-memory
ring; the epilogue applies ``acc * x_scale[m] * w_scale[n] + bias[n]`` in fp32 and writes the tile back by TMA
(in two column halves when ``epilogue_subtile``, which halves the staging buffer in shared memory).

Accumulation precision (sm_90, Triton 3.6). Hopper's FP8 wgmma adds its products into the fp32 accumulator with a
reduced-precision adder (about 14 mantissa bits are kept when aligning to the running sum, DeepSeek-V3 sec. 3.3.2).
Triton's default on sm_90 is ``max_num_imprecise_acc = 2**30`` (``backends/nvidia/compiler.py``): every dot
accumulates entirely inside the tensor core, i.e. the same as ``_scaled_mm(..., use_fast_accum=True)``. Two ways to
get full fp32 accumulation with promotion every ``block_k`` elements (CUTLASS/cuBLAS "precise" mode and DeepSeek's
recipe promote every 128):

* ``promote="dot"``: ``acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=BLOCK_K)``: the WGMMA lowering keeps a second
  register accumulator that the tensor core fills from zero, waits for it and adds it into ``acc`` with FADDs every
  ``BLOCK_K`` products. ``max_num_imprecise_acc`` only matters for FP8 x FP8 -> fp32 dots on sm_90; values >= K are
  the fast mode, smaller values promote more often (32 = after every k32 instruction).
* ``promote="add"``: ``acc += tl.dot(a, b.T)``: the same arithmetic written in Triton; the dot is no longer
  loop-carried, so Triton's MMA pipeliner cannot keep one wgmma in flight across iterations.

Either way the promoted mode holds two fp32 tiles in registers, so a 128x256 tile with 8 warps (128 + 128 registers
per thread) does not fit: the precise configs use 128x128 tiles. The fast configs use the 128x256x128 tile of
Triton's persistent-matmul tutorial. ``CONFIGS`` below lists the variants the benchmark sweeps, with the SASS facts
of each from a local sm_90a compile (Triton 3.6, bf16 output with bias). In the promoted configs every K step waits
for its wgmmas (``WARPGROUP.DEPBAR.LE gsb0, 0x0``) before the 64 FADDs; the fast ones keep one wgmma group in flight.

Warp specialization (``tl.range(..., warp_specialize=True)``) is documented by Triton 3.6 as Blackwell-only, and on
sm_90 it is silently ignored: the cubin is byte-identical with and without it (no ``setmaxnreg``, no producer warps),
so no config sets it.

Import-safe without a GPU and without Triton: the kernel is only defined when Triton imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

try:  # the package's CI is CPU-only; Triton may be absent or broken there
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    TRITON_IMPORT_ERROR: str | None = None
except Exception as e:  # noqa: BLE001 - any import failure means "no Triton GEMM"
    triton = tl = TensorDescriptor = None
    TRITON_IMPORT_ERROR = f"{type(e).__name__}: {e}"

__all__ = ["GemmConfig", "CONFIGS", "DEFAULT_FAST", "DEFAULT_PRECISE", "triton_scaled_gemm", "triton_gemm_support",
           "TRITON_IMPORT_ERROR"]

PROMOTE_MODES = ("none", "dot", "add")


@dataclass(frozen=True)
class GemmConfig:
    """Tile shape, scheduling and accumulation mode of one kernel variant."""

    block_m: int = 128
    block_n: int = 256
    block_k: int = 128
    group_m: int = 8
    num_stages: int = 3
    num_warps: int = 8
    promote: str = "none"  # "none": fast (tensor-core accumulation only); "dot" / "add": fp32 promotion per block_k
    epilogue_subtile: bool = True
    flatten: bool = True
    warp_specialize: bool = False
    maxnreg: int | None = None

    def __post_init__(self):
        if self.promote not in PROMOTE_MODES:
            raise ValueError(f"promote must be one of {PROMOTE_MODES}, got {self.promote!r}")
        for name in ("block_m", "block_n", "block_k", "num_warps"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")

    @property
    def precise(self) -> bool:
        return self.promote != "none"

    @property
    def name(self) -> str:
        s = (f"{self.block_m}x{self.block_n}x{self.block_k}-g{self.group_m}-s{self.num_stages}w{self.num_warps}"
             f"-{'fast' if self.promote == 'none' else 'p' + self.promote}")
        if not self.flatten:
            s += "-nf"
        if not self.epilogue_subtile:
            s += "-ns"
        if self.warp_specialize:
            s += "-ws"
        if self.maxnreg:
            s += f"-r{self.maxnreg}"
        return s


# The explicit list the benchmark sweeps. SASS (sm_90a, bf16 out + bias): registers/thread, shared memory; all have
# 0 spills (no LDL/STL), QGMMA.64xNx32.F32.E4M3.E4M3 and UTMALDG.2D loads, UTMASTG stores.
CONFIGS: dict[str, GemmConfig] = {c.name: c for c in (
    GemmConfig(),                                        # 226 regs, 177 KiB: tutorial tile, fast accumulation
    GemmConfig(num_stages=4),                            # 226 regs, 225 KiB (fp32 output does not fit: 257 KiB)
    GemmConfig(block_n=128, num_stages=5),               # 157 regs, 176 KiB: fast at the precise configs' tile
    GemmConfig(block_n=128, num_stages=4, promote="dot"),  # 153 regs, 144 KiB: promotion in the wgmma lowering
    GemmConfig(block_n=128, num_stages=4, promote="add"),  # 153 regs, 144 KiB: promotion written as acc += dot
    GemmConfig(block_n=128, block_k=256, num_stages=3, promote="dot"),  # 152 regs, 208 KiB: promote every 256
)}
DEFAULT_FAST = CONFIGS[GemmConfig().name]
DEFAULT_PRECISE = CONFIGS[GemmConfig(block_n=128, num_stages=4, promote="dot").name]


if TRITON_IMPORT_ERROR is None:

    @triton.jit
    def _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M: tl.constexpr):
        """Grouped ordering: GROUP_M consecutive row-tiles walk the N tiles together (L2 reuse of both operands)."""
        group_id = tile_id // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + (tile_id % group_size_m)
        pid_n = (tile_id % num_pid_in_group) // group_size_m
        return pid_m, pid_n

    @triton.jit(do_not_specialize=["M"])  # one compile for every token count (M % 16 would otherwise recompile)
    def _fp8_gemm_persistent_kernel(
        a_desc, b_desc, c_desc, a_scale_ptr, b_scale_ptr, bias_ptr, M, N, K,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        NUM_SMS: tl.constexpr, NUM_STAGES: tl.constexpr, PROMOTE: tl.constexpr, HAS_BIAS: tl.constexpr,
        EPILOGUE_SUBTILE: tl.constexpr, FLATTEN: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    ):  # fmt: skip
        start_pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        num_tiles = num_pid_m * num_pid_n
        num_pid_in_group = GROUP_M * num_pid_n
        # The epilogue recomputes its tile from its own counter so that no tile coordinate has to live across the
        # flattened loop's iterations (as in Triton's persistent-matmul tutorial).
        tile_id_c = start_pid - NUM_SMS
        for tile_id in tl.range(start_pid, num_tiles, NUM_SMS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
            pid_m, pid_n = _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
            offs_am = pid_m * BLOCK_M
            offs_bn = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in tl.range(k_tiles, num_stages=NUM_STAGES):
                offs_k = ki * BLOCK_K
                a = a_desc.load([offs_am, offs_k])
                b = b_desc.load([offs_bn, offs_k])
                if PROMOTE == 1:
                    acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=BLOCK_K)
                elif PROMOTE == 2:
                    acc += tl.dot(a, b.T)
                else:
                    acc = tl.dot(a, b.T, acc)

            tile_id_c += NUM_SMS
            pid_m, pid_n = _tile_coords(tile_id_c, num_pid_in_group, num_pid_m, GROUP_M)
            offs_cm = pid_m * BLOCK_M
            offs_cn = pid_n * BLOCK_N
            rows = offs_cm + tl.arange(0, BLOCK_M)
            cols = offs_cn + tl.arange(0, BLOCK_N)
            a_s = tl.load(a_scale_ptr + rows, mask=rows < M, other=0.0)
            b_s = tl.load(b_scale_ptr + cols, mask=cols < N, other=0.0)
            out = acc * a_s[:, None] * b_s[None, :]
            if HAS_BIAS:
                out += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            out = out.to(c_desc.dtype)
            if EPILOGUE_SUBTILE:
                halves = tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
                c0, c1 = tl.split(halves)
                c_desc.store([offs_cm, offs_cn], c0)
                c_desc.store([offs_cm, offs_cn + BLOCK_N // 2], c1)
            else:
                c_desc.store([offs_cm, offs_cn], out)


def _launch(x_q, a_s, w_q, b_s, bias, out, cfg: GemmConfig, num_sms: int) -> None:
    """Launch on checked, contiguous operands (``a_s`` [M], ``b_s`` [N] fp32); the tests call this directly under
    Triton's CPU interpreter."""
    m, k = x_q.shape
    n = w_q.shape[0]
    c_block_n = cfg.block_n // 2 if cfg.epilogue_subtile else cfg.block_n
    a_desc = TensorDescriptor.from_tensor(x_q, [cfg.block_m, cfg.block_k])
    b_desc = TensorDescriptor.from_tensor(w_q, [cfg.block_n, cfg.block_k])
    c_desc = TensorDescriptor.from_tensor(out, [cfg.block_m, c_block_n])
    num_tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    grid = (min(num_sms, num_tiles),)
    launch = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.maxnreg:
        launch["maxnreg"] = cfg.maxnreg
    _fp8_gemm_persistent_kernel[grid](
        a_desc, b_desc, c_desc, a_s, b_s, bias if bias is not None else b_s, m, n, k,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, NUM_SMS=grid[0],
        NUM_STAGES=cfg.num_stages, PROMOTE=PROMOTE_MODES.index(cfg.promote), HAS_BIAS=bias is not None,
        EPILOGUE_SUBTILE=cfg.epilogue_subtile, FLATTEN=cfg.flatten, WARP_SPECIALIZE=cfg.warp_specialize,
        **launch,
    )  # fmt: skip


@lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def triton_gemm_support(device: torch.device | str) -> tuple[bool, str]:
    """``(supported, reason)``: Triton importable, CUDA device, sm_90 (TMA + FP8 wgmma)."""
    device = torch.device(device)
    if TRITON_IMPORT_ERROR is not None:
        return False, f"Triton is not importable ({TRITON_IMPORT_ERROR})"
    if device.type != "cuda":
        return False, f"the Triton FP8 GEMM runs on CUDA GPUs, not {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap[0] != 9:
        return False, (f"the Triton FP8 GEMM is written for Hopper (sm_90: TMA + FP8 wgmma), "
                       f"this GPU is sm_{cap[0]}{cap[1]}")
    return True, "ok"


_TORCH_TO_TL_OUT = (torch.bfloat16, torch.float16, torch.float32)


def _check(x_q, x_scale, w_q, w_scale, bias, out_dtype) -> tuple[int, int, int]:
    if x_q.dim() != 2 or w_q.dim() != 2:
        raise ValueError(f"triton_scaled_gemm takes 2-D operands, got x {tuple(x_q.shape)} and w {tuple(w_q.shape)}")
    if x_q.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2) or w_q.dtype not in (torch.float8_e4m3fn,
                                                                                       torch.float8_e5m2):
        raise ValueError(f"triton_scaled_gemm needs FP8 operands, got x {x_q.dtype} and w {w_q.dtype}")
    (m, k), (n, k_w) = x_q.shape, w_q.shape
    if k != k_w:
        raise ValueError(f"inner dims differ: x is [{m}, {k}] and w is [{n}, {k_w}] (w is [N, K])")
    if out_dtype not in _TORCH_TO_TL_OUT:
        raise ValueError(f"out_dtype must be one of {_TORCH_TO_TL_OUT}, got {out_dtype}")
    # TMA: 16-byte aligned base and row strides (K fp8 bytes, N * itemsize output bytes).
    if k % 16 or (n * out_dtype.itemsize) % 16:
        raise ValueError(f"TMA needs K % 16 == 0 and N * {out_dtype.itemsize} bytes % 16 == 0, got K={k}, N={n}")
    if x_scale.numel() not in (1, m):
        raise ValueError(f"x_scale must be per tensor or per row ([{m}, 1]), got {tuple(x_scale.shape)}")
    if w_scale.numel() not in (1, n):
        raise ValueError(f"w_scale must be per tensor or per output channel ([{n}] / [1, {n}]), "
                         f"got {tuple(w_scale.shape)}")
    if bias is not None and bias.numel() != n:
        raise ValueError(f"bias must have {n} elements, got {tuple(bias.shape)}")
    devices = {t.device for t in (x_q, x_scale, w_q, w_scale) if t is not None} | (
        {bias.device} if bias is not None else set())
    if len(devices) != 1:
        raise ValueError(f"all operands must be on one device, got {sorted(map(str, devices))}")
    return m, n, k


def _aligned(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def triton_scaled_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    config: GemmConfig | str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(x_q * x_scale) @ (w_q * w_scale).T + bias`` in ``out_dtype`` ``[M, N]``; scales and bias in fp32.

    Args:
        x_q: ``[M, K]`` FP8 activations (row-major).
        x_scale: fp32 ``[M, 1]`` / ``[M]`` per token, or one element.
        w_q: ``[N, K]`` FP8 weight (row-major, as FP8Linear stores it).
        w_scale: fp32 ``[N]`` / ``[1, N]`` / ``[N, 1]`` per output channel, or one element.
        bias: ``[N]`` (any float dtype; added in fp32) or None.
        config: a :class:`GemmConfig`, a key of ``CONFIGS``, or None for ``DEFAULT_FAST``.
        out: optional contiguous ``[M, N]`` ``out_dtype`` buffer.
    """
    ok, reason = triton_gemm_support(x_q.device)
    if not ok:
        raise RuntimeError(reason)
    m, n, k = _check(x_q, x_scale, w_q, w_scale, bias, out_dtype)
    cfg = CONFIGS[config] if isinstance(config, str) else (config or DEFAULT_FAST)
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    elif out.shape != (m, n) or out.dtype != out_dtype or not out.is_contiguous() or out.data_ptr() % 16:
        raise ValueError(f"out must be a contiguous 16-byte aligned {out_dtype} [{m}, {n}] tensor")
    if m == 0 or n == 0:
        return out
    x_q, w_q = _aligned(x_q), _aligned(w_q)
    a_s = x_scale.float().reshape(-1).expand(m).contiguous()
    b_s = w_scale.float().reshape(-1).expand(n).contiguous()
    bias = bias.reshape(-1).contiguous() if bias is not None else None
    num_sms = _num_sms(x_q.device.index if x_q.device.index is not None else torch.cuda.current_device())
    _launch(x_q, a_s, w_q, b_s, bias, out, cfg, num_sms)
    return out
