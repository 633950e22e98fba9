"""The one wrapper over ``torch._scaled_mm`` that every FP8 matmul in the pack goes through.

It normalises scale shapes, picks row-wise or tensor-wise scaling, applies ``_scaled_mm``'s bias dtype rules and
never reads a tensor value on the host (no ``.item()``, no branching on data), so it is safe inside CUDA graphs.
"""

from __future__ import annotations

import logging

import torch

from .formats import GEMM_ALIGNMENT, is_fp8

logger = logging.getLogger("hyvideo_fp8")

__all__ = ["scaled_gemm", "rowwise_supported"]

_ROWWISE_SUPPORT: dict[tuple[str, int | None, torch.dtype], bool] = {}
_UNSUPPORTED_SHAPES: set[tuple] = set()  # GEMMs cuBLASLt has no kernel for, each warned about once
_ALIGN_BYTES = 16  # cuBLASLt reads FP8 operands and scale vectors from 16-byte aligned addresses
_PAD_ROWS = 64


def rowwise_supported(device: torch.device, out_dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this torch build runs row-wise ``_scaled_mm`` on ``device`` with ``out_dtype`` output.

    CPU does; CUDA sm90+ does; sm89 only through torch's CUTLASS kernel, and fp32 output only on newer builds.
    That depends on the torch/CUDA build more than on the GPU, so it is probed once per device with a 16x16
    call rather than guessed from the capability.
    """
    key = (device.type, device.index, out_dtype)
    ok = _ROWWISE_SUPPORT.get(key)
    if ok is None:
        a = torch.zeros(16, 16, device=device).to(torch.float8_e4m3fn)
        s = torch.ones(16, 1, device=device)
        try:
            torch._scaled_mm(a, a.t(), scale_a=s, scale_b=s.t(), out_dtype=out_dtype)
            ok = True
        except (RuntimeError, NotImplementedError):
            ok = False
        _ROWWISE_SUPPORT[key] = ok
    return ok


def _check(a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor) -> None:
    if a_q.dim() != 2 or w_q.dim() != 2:
        raise ValueError(f"scaled_gemm takes 2-D operands, got a {tuple(a_q.shape)} and w {tuple(w_q.shape)}: "
                         "flatten the leading dims first")
    if not (is_fp8(a_q) and is_fp8(w_q)):
        raise ValueError(f"scaled_gemm needs FP8 operands, got a {a_q.dtype} and w {w_q.dtype}")
    (m, k), (n, k_w) = a_q.shape, w_q.shape
    if k != k_w:
        raise ValueError(f"inner dims differ: a is [{m}, {k}] and w is [{n}, {k_w}] (w is [N, K])")
    if k % GEMM_ALIGNMENT or n % GEMM_ALIGNMENT:
        raise ValueError(f"_scaled_mm needs K and N to be multiples of {GEMM_ALIGNMENT}, got K={k}, N={n}: "
                         "use the fp8-weight-only mode for this layer")
    if a_scale.numel() not in (1, m):
        raise ValueError(f"a_scale must be per tensor ([]) or per row ([{m}, 1]), got {tuple(a_scale.shape)}")
    if w_scale.numel() not in (1, n):
        raise ValueError(f"w_scale must be per tensor ([]) or per output channel ([{n}] / [{n}, 1]), "
                         f"got {tuple(w_scale.shape)}")


def scaled_gemm(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    use_fast_accum: bool = False,
) -> torch.Tensor:
    """``(a_q * a_scale) @ (w_q * w_scale).T + bias`` in ``out_dtype``.

    Args:
        a_q: ``[M, K]`` FP8 activations (row-major).
        a_scale: fp32 ``[M, 1]`` (per token) or ``[]`` (per tensor).
        w_q: ``[N, K]`` FP8 weight (row-major, as stored by nn.Linear); passed to ``_scaled_mm`` as the
            column-major ``w_q.t()`` that cuBLASLt requires.
        w_scale: fp32 ``[N]`` / ``[N, 1]`` (per output channel) or ``[]`` (per tensor).
        bias: ``[N]`` high-precision bias or None.
        use_fast_accum: accumulate fully in the tensor cores' reduced-precision accumulator (a few % faster,
            less accurate at large K); off by default.
    """
    _check(a_q, a_scale, w_q, w_scale)
    m, n = a_q.shape[0], w_q.shape[0]
    a_q = a_q.contiguous()
    w_t = w_q.contiguous().t()
    a_s = a_scale.float()
    w_s = w_scale.float()
    fused_bias = out_dtype in (torch.bfloat16, torch.float16)  # _scaled_mm rejects a bias with fp32 output
    if a_s.numel() == 1 and w_s.numel() == 1:
        scale_a, scale_b = a_s.reshape(()), w_s.reshape(())
    elif rowwise_supported(a_q.device, out_dtype):
        # Row-wise needs both sides per row: a per-tensor side is broadcast (M or N floats, cheap).
        scale_a = a_s.reshape(-1, 1).expand(m, 1).contiguous()
        scale_b = w_s.reshape(1, -1).expand(1, n).contiguous()
    else:
        # No row-wise kernel in this build: unit-scale tensor-wise GEMM in fp32, scales applied afterwards.
        one = torch.ones((), device=a_q.device)
        out = torch._scaled_mm(a_q, w_t, scale_a=one, scale_b=one, out_dtype=torch.float32,
                               use_fast_accum=use_fast_accum)
        out = out * a_s.reshape(-1, 1) * w_s.reshape(1, -1)
        if bias is not None:  # rounded as the fused bias of the row-wise path is
            out = out + (bias.to(out_dtype) if fused_bias else bias).float()
        return out.to(out_dtype)
    a_q, scale_a, scale_b = _aligned(a_q), _aligned(scale_a), _aligned(scale_b)
    fused = bias.to(out_dtype) if bias is not None and fused_bias else None
    try:
        out = torch._scaled_mm(a_q, w_t, scale_a=scale_a, scale_b=scale_b, bias=fused, out_dtype=out_dtype,
                               use_fast_accum=use_fast_accum)
    except RuntimeError as e:
        if "NOT_SUPPORTED" not in str(e):
            raise
        out = _without_kernel_for_shape(a_q, w_t, scale_a, scale_b, fused, out_dtype, use_fast_accum)
    if bias is not None and not fused_bias:
        out = out + bias.to(out_dtype)
    return out


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it where a view left its address off cuBLASLt's alignment (a pointer check, no sync).
    Under torch.compile there is no address to check: its buffers are allocated aligned."""
    if torch.compiler.is_compiling() or t.data_ptr() % _ALIGN_BYTES == 0:
        return t
    return t.clone()


def _without_kernel_for_shape(a_q: torch.Tensor, w_t: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                              bias: torch.Tensor | None, out_dtype: torch.dtype, use_fast_accum: bool) -> torch.Tensor:
    """cuBLASLt found no FP8 kernel for this GEMM (seen for a few rows against a long K): the rows padded to a multiple
    of 64 with the standard accumulator, and if that has no kernel either, the dequantized matmul. Logged once per
    shape: the result stays exact, only that GEMM runs slower."""
    m, n, k = a_q.shape[0], w_t.shape[1], a_q.shape[1]
    shape = (m, n, k, out_dtype, use_fast_accum, a_q.device.type)
    if shape not in _UNSUPPORTED_SHAPES:
        _UNSUPPORTED_SHAPES.add(shape)
        logger.warning("[hyvideo_fp8] cuBLASLt has no FP8 kernel for a [%d x %d] x [%d x %d] GEMM (fast accumulation "
                       "%s): it runs with padded rows or dequantized instead", m, k, k, n, use_fast_accum)
    pad = -m % _PAD_ROWS
    rows = torch.nn.functional.pad(a_q.view(torch.uint8), (0, 0, 0, pad)).view(a_q.dtype)
    row_scale = scale_a if scale_a.numel() == 1 else torch.nn.functional.pad(scale_a, (0, 0, 0, pad), value=1.0)
    try:
        return torch._scaled_mm(rows, w_t, scale_a=row_scale, scale_b=scale_b, bias=bias, out_dtype=out_dtype,
                                use_fast_accum=False)[:m]
    except RuntimeError as e:
        if "NOT_SUPPORTED" not in str(e):
            raise
    out = (a_q.to(torch.float32) * scale_a.reshape(-1, 1)) @ (w_t.to(torch.float32) * scale_b.reshape(1, -1))
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
