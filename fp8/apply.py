"""Putting a policy into a model: build its linear layers, report them, and switch their compute mode at run time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .formats import HIGH_PRECISION_DTYPES, ComputeMode, compute_mode, fp8_dtype, is_fp8
from .linear import FP8Linear
from .policy import PrecisionPolicy
from .quantize import dequantize, quantize_rowwise

__all__ = ["QuantizationReport", "quantization_report", "make_linear", "compute_override"]


@dataclass
class QuantizationReport:
    """The linear layers of a loaded model: how many compute in each effective mode, and which fp8 layers fell back
    to weight-only (``hunyuan.loader`` logs its one-line ``summary``)."""

    counts: dict[str, int] = field(default_factory=dict)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (layer name, reason)

    def summary(self) -> str:
        counts = ", ".join(f"{mode} {n}" for mode, n in sorted(self.counts.items()))
        s = f"[hyvideo_fp8] {sum(self.counts.values())} linear layers: {counts or 'none'}"
        if self.fallbacks:
            s += f"; {len(self.fallbacks)} fell back to fp8-weight-only (first: {self.fallbacks[0][0]}: " \
                 f"{self.fallbacks[0][1]})"
        return s


def _effective_mode(layer: nn.Module) -> str:
    if isinstance(layer, FP8Linear):
        return layer.effective_mode.value
    return "bf16" if layer.weight.dtype == torch.bfloat16 else "fp32" if layer.weight.dtype == torch.float32 \
        else str(layer.weight.dtype)


def quantization_report(model: nn.Module) -> QuantizationReport:
    """Count ``model``'s linear layers by effective compute mode and list the fp8 ones that fell back."""
    report = QuantizationReport()
    counts: Counter[str] = Counter()
    for name, layer in model.named_modules():
        if not (isinstance(layer, FP8Linear) or type(layer) is nn.Linear):
            continue
        counts[_effective_mode(layer)] += 1
        if isinstance(layer, FP8Linear) and layer.mode is ComputeMode.FP8 and layer.fallback_reason is not None:
            report.fallbacks.append((name, layer.fallback_reason))
    report.counts = dict(counts)
    return report


def make_linear(
    name: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    policy: PrecisionPolicy,
    block_order: Sequence[str] = (),
    weight_scale: torch.Tensor | None = None,
) -> nn.Module:
    """The layer ``name`` as the policy wants it: an ``FP8Linear`` for fp8 / fp8-weight-only, else an ``nn.Linear``
    in that dtype.

    ``weight`` may be high precision, or FP8 with ``weight_scale`` (``[]`` / ``[N]``; None means an unscaled FP8
    checkpoint, i.e. scale 1). An FP8 weight in another format than the policy's is re-quantized per channel; an FP8
    weight for a high-precision layer is dequantized. Parameters do not require grad (inference).
    """
    mode = policy.mode_for(name, block_order)
    if weight.dim() != 2:
        raise ValueError(f"{name}: a linear weight must be 2-D [out_features, in_features], got {tuple(weight.shape)}")
    if is_fp8(weight) and weight_scale is None:
        weight_scale = torch.ones((), device=weight.device)
    if not is_fp8(weight) and weight_scale is not None:
        raise ValueError(f"{name}: weight_scale was given but the weight is {weight.dtype}, not FP8")
    if mode in (ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY):
        options = dict(compute_dtype=policy.compute_dtype, activation_scaling=policy.activation_scaling, name=name,
                       fast_accum=policy.fast_accum_for(weight.shape[1]))
        target = fp8_dtype(policy.fp8_format)
        if is_fp8(weight) and weight.dtype == target:
            return FP8Linear.from_quantized(weight, weight_scale, bias, mode, **options)
        if is_fp8(weight):
            q, scale = quantize_rowwise(dequantize(weight, weight_scale), target)
            return FP8Linear.from_quantized(q, scale, bias, mode, **options)
        return FP8Linear.from_float(weight, bias, mode, fp8_format=target, **options)
    dtype = HIGH_PRECISION_DTYPES[mode.value]
    w = dequantize(weight, weight_scale, dtype) if is_fp8(weight) else weight.detach().to(dtype)
    n, k = w.shape
    layer = nn.Linear(k, n, bias=bias is not None, device="meta", dtype=dtype)
    layer.weight = nn.Parameter(w, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
    return layer


@contextmanager
def compute_override(model: nn.Module, mode: ComputeMode | str) -> Iterator[nn.Module]:
    """Temporarily run every ``FP8Linear`` in ``mode`` (hybrid schedule: bf16 steps on the same FP8 weights).

    Each layer's own mode is restored on exit, also when the body raises.
    """
    mode = compute_mode(mode)
    saved = [(m, m.mode) for m in model.modules() if isinstance(m, FP8Linear)]
    try:
        for layer, _ in saved:
            layer.mode = mode
        yield model
    finally:
        for layer, previous in saved:
            layer.mode = previous
