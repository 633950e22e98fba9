"""The names the engine speaks: FP8 storage formats and per-layer compute modes.

Kept free of logic so every other module (policy, hardware, linear) can import it without cycles.
"""

from __future__ import annotations

from enum import Enum

import torch

FP8_FORMATS: dict[str, torch.dtype] = {
    "e4m3fn": torch.float8_e4m3fn,  # 3 mantissa bits, max 448, no infinity: the default for weights and activations
    "e5m2": torch.float8_e5m2,  # 2 mantissa bits, max 57344: more range, less precision
}
FP8_DTYPES: frozenset[torch.dtype] = frozenset(FP8_FORMATS.values())

# amax is floored here before it becomes a scale, so all-zero rows and denormal inputs never divide by zero.
SCALE_FLOOR = 1e-12

# torch._scaled_mm needs K and N to be multiples of 16 (cuBLASLt alignment); M is free.
GEMM_ALIGNMENT = 16


class ComputeMode(str, Enum):
    """How one linear layer computes.

    FP8: W8A8, the input is quantized per token and multiplied on FP8 tensor cores.
    FP8_WEIGHT_ONLY: FP8 storage, the weight is dequantized and multiplied in the compute dtype (memory, no speed-up).
    BF16 / FP32: high-precision compute (the reference; also the hybrid schedule's steps on the same FP8 weights).
    """

    FP8 = "fp8"
    FP8_WEIGHT_ONLY = "fp8-weight-only"
    BF16 = "bf16"
    FP32 = "fp32"

    def __str__(self) -> str:
        return self.value


MODE_NAMES: tuple[str, ...] = tuple(m.value for m in ComputeMode)

HIGH_PRECISION_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}


def fp8_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype of an FP8 format name ("e4m3fn", "e5m2"); dtypes pass through after a check."""
    if isinstance(name, torch.dtype):
        if name not in FP8_DTYPES:
            raise ValueError(f"{name} is not an FP8 dtype; allowed: {sorted(str(d) for d in FP8_DTYPES)}")
        return name
    try:
        return FP8_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown FP8 format {name!r}; allowed: {list(FP8_FORMATS)}") from None


def fp8_format_name(dtype: torch.dtype) -> str:
    """Inverse of :func:`fp8_dtype` (for reprs and reports)."""
    for name, dt in FP8_FORMATS.items():
        if dt == dtype:
            return name
    raise ValueError(f"{dtype} is not an FP8 dtype; allowed: {sorted(str(d) for d in FP8_DTYPES)}")


def fp8_max(dtype: torch.dtype) -> float:
    """Largest finite value of an FP8 dtype (448 for e4m3fn, 57344 for e5m2)."""
    return float(torch.finfo(fp8_dtype(dtype)).max)


def is_fp8(t: torch.Tensor) -> bool:
    return t.dtype in FP8_DTYPES


def compute_mode(mode: str | ComputeMode) -> ComputeMode:
    """Parse a mode name with an error that lists the allowed names."""
    try:
        return ComputeMode(mode)
    except ValueError:
        raise ValueError(f"unknown compute mode {mode!r}; allowed: {list(MODE_NAMES)}") from None


def high_precision_dtype(name: str) -> torch.dtype:
    """torch dtype of a compute dtype name ("bf16", "fp32")."""
    try:
        return HIGH_PRECISION_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown compute dtype {name!r}; allowed: {list(HIGH_PRECISION_DTYPES)}") from None
