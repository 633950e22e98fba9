"""Value checks on tensors as they stream: NaN/Inf in a weight, an FP8 NaN code, an FP8 scale that is not a positive
finite number. Each of these loads and converts without complaint and then samples a black video, so the loader and
the converter refuse them, naming the tensor.

What values cannot tell: a well-shaped file whose finite values sit in the wrong place (say rows moved between a
diffusers ``to_q`` and ``proj_mlp``) looks like any other set of weights; only its samples show it.
"""

from __future__ import annotations

import torch

from ...fp8.formats import FP8_DTYPES
from .errors import InvalidValuesError

SCALE_SUFFIX = ".weight_scale"
_CHUNK = 1 << 22  # elements summed at a time on the CPU: a small fp32 temporary whatever the tensor size


def _fp8_bad_codes(t: torch.Tensor) -> torch.Tensor:
    """Bool mask of NaN codes (e4m3fn: S.1111.111) or Inf/NaN codes (e5m2: S.11111.xx)."""
    bits = t.view(torch.uint8)
    mask = 0x7F if t.dtype == torch.float8_e4m3fn else 0x7C
    return (bits & mask) == mask


def count_nonfinite(t: torch.Tensor) -> int:
    """How many elements of ``t`` are NaN or Inf (FP8 checked on its bit patterns; integer tensors have none)."""
    if t.dtype in FP8_DTYPES:
        return int(_fp8_bad_codes(t).sum())
    if not t.dtype.is_floating_point:
        return 0
    if t.device.type == "cpu":  # fast path: a NaN or Inf makes the sum non-finite; count exactly only then
        flat = t.reshape(-1)
        if all(bool(torch.isfinite(flat[i:i + _CHUNK].float().sum())) for i in range(0, flat.numel(), _CHUNK)):
            return 0
    return int((~torch.isfinite(t)).sum())


def check_values(name: str, t: torch.Tensor, where: str) -> None:
    """Raise :class:`InvalidValuesError` if ``t`` (canonical ``name``, from ``where``) holds NaN/Inf, or if it is an
    FP8 weight scale with an entry that is not a positive finite number."""
    bad = count_nonfinite(t)
    if bad:
        kind = "NaN codes" if t.dtype == torch.float8_e4m3fn else "NaN/Inf values"
        raise InvalidValuesError(
            f"{where}: {name!r} holds {bad:,} {kind} (of {t.numel():,}); a model with them samples NaN (a black "
            "video). The file is damaged or was saved from a diverged run: use another copy of the checkpoint")
    if name.endswith(SCALE_SUFFIX):
        low = float(t.float().min()) if t.numel() else 1.0
        if not low > 0:
            raise InvalidValuesError(
                f"{where}: FP8 scale {name!r} has an entry {low:g}; a scale must be a positive finite number "
                f"({'zero makes the layer all zeros' if low == 0 else 'a negative one flips the weights'}). "
                "The file is damaged: use another copy, or convert the layer again from its bf16 weights")


__all__ = ["count_nonfinite", "check_values"]
