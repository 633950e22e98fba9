"""Fused FP8 producer kernels in Triton, plus the input checks they share with the torch reference.

The kernel modules (``norm_modulate_quant``, ``gelu_quant``, ``qk_norm_rope``) import triton at module level, so
only ``fp8/fused.py`` imports them, lazily and only on CUDA. This file imports torch alone: the checks below run
on every path (CPU reference included) so a bad input fails the same way everywhere, before anything is allocated.
"""

from __future__ import annotations

import torch

__all__ = ["ACTIVATION_DTYPES", "QUANT_Q_PROLOGUE_DTYPES", "MAX_ROW_BLOCK", "MAX_HEAD_TILE", "check_tokens",
           "check_modulation", "check_same_device", "check_qkv", "check_quant_q_outputs", "fp8_outputs",
           "prologue_fits", "next_power_of_2", "row_num_warps"]

ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# The q/k prologue that quantizes q for FP8 attention has a Triton kernel for these qkv dtypes (16-bit k/v outputs).
QUANT_Q_PROLOGUE_DTYPES = (torch.bfloat16, torch.float16)

# The quantizing kernels hold one whole (power-of-two padded) row in registers: 32768 fp32 values over 16 warps is
# 64 registers a thread. Longer rows go to the torch reference (HunyuanVideo's longest row is 15360).
MAX_ROW_BLOCK = 32768
# The attention prologue holds one of q/k/v of one token, all heads padded to a power of two, in registers.
MAX_HEAD_TILE = 16384


def check_tokens(name: str, x: torch.Tensor) -> tuple[int, int, int]:
    """Validate an activation ``[B, L, C]`` (any strides on B and L, contiguous channels) and return ``(B, L, C)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be [B, L, C] (batch, tokens, channels), got shape {tuple(x.shape)}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"{name} must be bfloat16, float16 or float32, got {x.dtype}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has no channels (shape {tuple(x.shape)})")
    if x.stride(-1) != 1:
        raise ValueError(f"{name} needs contiguous channels (last stride 1), got strides {x.stride()}: "
                         "pass x.contiguous()")
    return tuple(x.shape)


def check_modulation(name: str, m: torch.Tensor, batch: int, channels: int) -> None:
    """Validate a per-sample adaLN vector: ``[B, 1, C]`` with contiguous channels."""
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
    if tuple(m.shape) != (batch, 1, channels):
        raise ValueError(f"{name} must be [B, 1, C] = [{batch}, 1, {channels}] (one modulation vector per sample), "
                         f"got shape {tuple(m.shape)}")
    if m.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"{name} must be bfloat16, float16 or float32, got {m.dtype}")
    if m.stride(-1) != 1:
        raise ValueError(f"{name} needs contiguous channels (last stride 1), got strides {m.stride()}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")


def check_qkv(
    qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    n_rope_tokens: int,
) -> tuple[int, int, int, int]:
    """Validate the attention prologue's inputs and return ``(B, L, H, D)``.

    ``qkv`` is the fused projection ``[B, L, 3*H*D]`` (q, k, v blocks, each head-major); ``D`` comes from the norm
    weights; ``cos``/``sin`` are fp32 ``[n_rope_tokens, D/2]`` for the leading (image) tokens.
    """
    B, L, C3 = check_tokens("qkv", qkv)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if not isinstance(w, torch.Tensor) or w.dim() != 1 or w.dtype not in ACTIVATION_DTYPES:
            got = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{name} must be a 1-D [head_dim] float tensor (the RMS norm scale), got {got}")
    D = q_weight.shape[0]
    if k_weight.shape[0] != D:
        raise ValueError(f"q_weight and k_weight must have the same length (head_dim), got {D} and {k_weight.shape[0]}")
    if D == 0 or D % 2:
        raise ValueError(f"head_dim = len(q_weight) must be even for the pair rotation, got {D}")
    if C3 % (3 * D):
        raise ValueError(f"qkv has {C3} channels, not a multiple of 3 * head_dim = {3 * D}: expected [B, L, 3*H*D]")
    H = C3 // (3 * D)
    if isinstance(n_rope_tokens, bool) or not isinstance(n_rope_tokens, int) or not 0 <= n_rope_tokens <= L:
        raise ValueError(f"n_rope_tokens must be an int in [0, L={L}] (the image tokens lead), got {n_rope_tokens!r}")
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n_rope_tokens, D // 2) or t.dtype != torch.float32:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be float32 [n_rope_tokens, head_dim/2] = [{n_rope_tokens}, {D // 2}], "
                             f"got {got}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous: pass {name}.contiguous()")
    check_same_device(qkv=qkv, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin)
    return B, L, H, D


def check_quant_q_outputs(qkv: torch.Tensor, q_out, kv_out: torch.Tensor, B: int, L: int, H: int, D: int,
                          row0: int) -> None:  # fmt: skip
    """The quantizing prologue's destinations (``q_out`` a ``QuantizedQ``, ``kv_out`` ``[2, B, H, L_total, D]``) must
    hold rows ``row0 .. row0 + L`` of qkv's batch and head layout."""
    if not q_out.fits(B, H, q_out.seq_len, D):
        raise ValueError(f"q_out (int8 {tuple(q_out.q.shape)}, batch {q_out.batch}, heads {q_out.heads}) does not "
                         f"match qkv's B={B}, H={H}, D={D}: make it with empty_quantized_q")  # fmt: skip
    shape = (2, B, H, q_out.seq_len, D)
    if not isinstance(kv_out, torch.Tensor) or tuple(kv_out.shape) != shape or kv_out.dtype != qkv.dtype \
            or not kv_out.is_contiguous():
        got = f"{kv_out.dtype} {list(kv_out.shape)}" if isinstance(kv_out, torch.Tensor) else type(kv_out).__name__
        raise ValueError(f"kv_out must be a contiguous {qkv.dtype} {list(shape)} tensor, got {got}")
    if isinstance(row0, bool) or not isinstance(row0, int) or not 0 <= row0 <= q_out.seq_len - L:
        raise ValueError(f"rows {row0!r} .. {row0} + {L} do not fit the {q_out.seq_len} rows of q_out / kv_out")
    check_same_device(qkv=qkv, q_out=q_out.q, q_scale=q_out.q_scale, kv_out=kv_out)


def fp8_outputs(
    out: tuple[torch.Tensor, torch.Tensor] | None, shape: tuple[int, int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate ``(q, s)`` = e4m3fn ``[B, L, C]`` and fp32 ``[B, L, 1]``, or check caller-given buffers."""
    scale_shape = (*shape[:2], 1)
    if out is None:
        return (torch.empty(shape, dtype=torch.float8_e4m3fn, device=device),
                torch.empty(scale_shape, dtype=torch.float32, device=device))
    q, s = out
    for name, t, want_shape, want_dtype in (("q", q, shape, torch.float8_e4m3fn), ("s", s, scale_shape, torch.float32)):
        if tuple(t.shape) != want_shape or t.dtype != want_dtype or t.device != device or not t.is_contiguous():
            raise ValueError(f"out {name} must be a contiguous {want_dtype} {list(want_shape)} tensor on {device}, "
                             f"got {t.dtype} {list(t.shape)} on {t.device} (contiguous={t.is_contiguous()})")
    return q, s


def prologue_fits(heads: int, head_dim: int) -> bool:
    """Whether the Triton attention prologue takes this head layout (power-of-two head_dim, tile in registers)."""
    return head_dim > 0 and not head_dim & (head_dim - 1) and next_power_of_2(heads) * head_dim <= MAX_HEAD_TILE


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def row_num_warps(block: int) -> int:
    """Warps for one row of ``block`` padded elements: about 32 values a thread, 4 to 8 warps.

    The fastest choice for HunyuanVideo's LayerNorm, GELU and concat rows in bench/results/fused-2026-11-29-h200.md.
    """
    return min(8, max(4, block // 1024))
