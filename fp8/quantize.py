"""Pure-torch FP8 quantization primitives (the reference the fused kernels are checked against).

Convention everywhere: ``x ≈ q.float() * scale`` with ``scale = amax / fp8_max`` in fp32. Every cast saturates
(an unclamped overflow is NaN for e4m3fn on CUDA and inf for e5m2) and amax is floored at ``SCALE_FLOOR`` so
all-zero rows quantize to zeros instead of NaN. No function here reads a tensor value on the host.
"""

from __future__ import annotations

import torch

from .formats import SCALE_FLOOR, fp8_dtype, fp8_max

__all__ = ["saturating_cast", "quantize_tensorwise", "quantize_rowwise", "quantize_static", "dequantize"]


def saturating_cast(x: torch.Tensor, dtype: torch.dtype | str = torch.float8_e4m3fn) -> torch.Tensor:
    """Cast to FP8, clamping to the format's finite range first (a plain ``.to`` may give NaN or inf on overflow)."""
    dtype = fp8_dtype(dtype)
    m = fp8_max(dtype)
    return x.clamp(-m, m).to(dtype)


def _scale_from_amax(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return amax.float().clamp_min(SCALE_FLOOR) / fp8_max(dtype)


def quantize_tensorwise(
    x: torch.Tensor, dtype: torch.dtype | str = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor: returns ``(q, scale)`` with ``scale`` a 0-d fp32 tensor."""
    dtype = fp8_dtype(dtype)
    scale = _scale_from_amax(x.abs().amax(), dtype)
    return saturating_cast(x.float() / scale, dtype), scale


def quantize_rowwise(
    x: torch.Tensor, dtype: torch.dtype | str = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per row (last dim reduced): per token for activations, per output channel for ``[N, K]`` weights.

    Returns ``(q, scale)`` with ``scale`` of shape ``[..., 1]`` in fp32.
    """
    dtype = fp8_dtype(dtype)
    if x.dim() == 0:
        raise ValueError("quantize_rowwise needs at least one dimension; use quantize_tensorwise for a scalar")
    scale = _scale_from_amax(x.abs().amax(dim=-1, keepdim=True), dtype)
    return saturating_cast(x.float() / scale, dtype), scale


def quantize_static(
    x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | str = torch.float8_e4m3fn
) -> torch.Tensor:
    """Quantize with a given (calibrated) scale, broadcast against ``x``; values beyond ``scale * fp8_max`` saturate.

    The scale is floored like the dynamic ones, so a zero calibration scale cannot produce NaN.
    """
    dtype = fp8_dtype(dtype)
    scale = scale.to(device=x.device, dtype=torch.float32).clamp_min(SCALE_FLOOR / fp8_max(dtype))
    return saturating_cast(x.float() / scale, dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q.float() * scale`` cast to ``out_dtype``.

    A 1-D scale of length N on a 2-D ``[N, K]`` tensor is per output channel (the canonical state-dict layout),
    so it is applied along dim 0; any other scale must broadcast against ``q`` (``[]``, ``[1]``, ``[..., 1]``).
    """
    scale = scale.to(device=q.device, dtype=torch.float32)
    if q.dim() == 2 and scale.dim() == 1 and scale.numel() == q.shape[0] and scale.numel() > 1:
        scale = scale.unsqueeze(-1)
    return (q.float() * scale).to(out_dtype)
