"""``FP8Linear``: an nn.Linear replacement that stores its weight in FP8 and computes in one of four modes.

The mode can change at run time (the hybrid schedule runs some steps in bf16 on the same FP8 weights), so the
layer always keeps exactly one copy of the weight: FP8 plus an fp32 scale per output channel.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .formats import (
    GEMM_ALIGNMENT,
    HIGH_PRECISION_DTYPES,
    ComputeMode,
    compute_mode,
    fp8_dtype,
    fp8_format_name,
    is_fp8,
)
from .gemm import scaled_gemm
from .kernel_plan import Kernel, gemm_kernel
from .quantize import dequantize, quantize_rowwise, quantize_static, quantize_tensorwise

__all__ = ["ComputeMode", "FP8Linear", "ACTIVATION_SCALINGS", "ACTIVATION_DTYPE"]

logger = logging.getLogger("hyvideo_fp8")

ACTIVATION_SCALINGS = ("per-token", "per-tensor")
# Activations are always e4m3fn: it has the precision, and CUDA's _scaled_mm rejects e5m2 x e5m2.
ACTIVATION_DTYPE = torch.float8_e4m3fn
_COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _as_compute_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = HIGH_PRECISION_DTYPES.get(dtype, dtype)  # "bf16" / "fp32"
    if dtype not in _COMPUTE_DTYPES:
        allowed = [str(d) for d in _COMPUTE_DTYPES]
        raise ValueError(f"compute_dtype must be one of {allowed} or 'bf16'/'fp32', got {dtype!r}")
    return dtype


def _check_activation_scaling(value: str) -> str:
    if value not in ACTIVATION_SCALINGS:
        raise ValueError(f"activation_scaling must be one of {list(ACTIVATION_SCALINGS)}, got {value!r}")
    return value


def normalise_weight_scale(scale: torch.Tensor, out_features: int) -> torch.Tensor:
    """A weight scale of shape ``[]``, ``[1]``, ``[N]`` or ``[N, 1]`` as the fp32 ``[N]`` buffer FP8Linear holds.

    A per-tensor scale is expanded to N identical entries, which dequantizes exactly as before.
    """
    if scale.numel() == 1:
        return scale.detach().float().reshape(()).expand(out_features).clone()
    if scale.numel() == out_features and scale.dim() in (1, 2) and scale.shape[0] == out_features:
        return scale.detach().float().reshape(out_features).contiguous()
    raise ValueError(f"weight_scale must have shape [], [1], [{out_features}] or [{out_features}, 1] "
                     f"for a layer with {out_features} outputs, got {tuple(scale.shape)}")


class FP8Linear(nn.Module):
    """Linear layer with an FP8 weight (``weight``, ``[N, K]``), an fp32 per-output-channel ``weight_scale`` (``[N]``)
    and an optional high-precision ``bias``.

    Modes (``mode`` may be reassigned at any time):
        fp8: W8A8. The input is quantized per token (or per tensor) on the fly, saturating, and multiplied with
            ``torch._scaled_mm``. Layers whose K or N is not a multiple of 16 fall back to weight-only
            (``fallback_reason`` says why, one ``[hyvideo_fp8]`` line is logged), and so do all layers on a device
            whose kernel plan has no FP8 GEMM (``fp8.kernel_plan.gemm_kernel``: no FP8 tensor cores).
        fp8-weight-only: dequantize the weight to ``compute_dtype`` and run F.linear (saves memory, not time).
        bf16 / fp32: dequantize to that dtype and run F.linear (the high-precision reference).
    Output dtype is ``compute_dtype``, except in fp32 mode (fp32).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mode: ComputeMode | str = ComputeMode.FP8,
        fp8_format: str | torch.dtype = "e4m3fn",
        compute_dtype: torch.dtype | str = torch.bfloat16,
        activation_scaling: str = "per-token",
        device: torch.device | str | None = None,
        name: str = "",
        fast_accum: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = _as_compute_dtype(compute_dtype)
        self.activation_scaling = _check_activation_scaling(activation_scaling)
        self.name = name
        self.fast_accum = bool(fast_accum)
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=fp8_dtype(fp8_format), device=device), requires_grad=False
        )
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=self.compute_dtype, device=device),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.fallback_reason: str | None = None
        if in_features % GEMM_ALIGNMENT or out_features % GEMM_ALIGNMENT:
            self.fallback_reason = (f"K={in_features}, N={out_features}: FP8 GEMMs need K and N to be multiples of "
                                    f"{GEMM_ALIGNMENT}; this layer computes weight-only")
        self._fallback_logged = False
        self.mode = mode

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        mode: ComputeMode | str = ComputeMode.FP8,
        fp8_format: str | torch.dtype = "e4m3fn",
        compute_dtype: torch.dtype | str = torch.bfloat16,
        activation_scaling: str = "per-token",
        name: str = "",
        fast_accum: bool = False,
    ) -> FP8Linear:
        """Quantize a high-precision ``[N, K]`` weight per output channel (saturating) and wrap it."""
        if is_fp8(weight):
            raise ValueError(f"{name or 'weight'} is already {weight.dtype}: "
                             "use FP8Linear.from_quantized with its scale")
        if weight.dim() != 2:
            raise ValueError(f"{name or 'weight'} must be 2-D [out_features, in_features], got {tuple(weight.shape)}")
        q, scale = quantize_rowwise(weight.detach(), fp8_format)
        return cls.from_quantized(q, scale, bias, mode, compute_dtype=compute_dtype,
                                  activation_scaling=activation_scaling, name=name, fast_accum=fast_accum)

    @classmethod
    def from_quantized(
        cls,
        weight_q: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        mode: ComputeMode | str = ComputeMode.FP8,
        compute_dtype: torch.dtype | str = torch.bfloat16,
        activation_scaling: str = "per-token",
        name: str = "",
        fast_accum: bool = False,
    ) -> FP8Linear:
        """Wrap an already-quantized FP8 ``[N, K]`` weight; its scale may be ``[]``/``[1]``/``[N]``/``[N, 1]``."""
        label = name or "weight"
        if not is_fp8(weight_q):
            raise ValueError(f"{label} must be float8_e4m3fn or float8_e5m2, got {weight_q.dtype}: "
                             "use FP8Linear.from_float for high-precision weights")
        if weight_q.dim() != 2:
            raise ValueError(f"{label} must be 2-D [out_features, in_features], got {tuple(weight_q.shape)}")
        n, k = weight_q.shape
        scale = normalise_weight_scale(weight_scale, n).to(weight_q.device)
        if bias is not None and (bias.shape != (n,) or not bias.is_floating_point() or is_fp8(bias)):
            raise ValueError(f"{label} bias must be a high-precision [{n}] tensor, "
                             f"got {bias.dtype} {tuple(bias.shape)}")
        layer = cls(k, n, bias=bias is not None, mode=mode, fp8_format=weight_q.dtype, compute_dtype=compute_dtype,
                    activation_scaling=activation_scaling, device="meta", name=name, fast_accum=fast_accum)
        layer.weight = nn.Parameter(weight_q.detach().contiguous(), requires_grad=False)
        layer.weight_scale = scale
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
        return layer

    # --- mode -----------------------------------------------------------------------------------------------------

    @property
    def mode(self) -> ComputeMode:
        return self._mode

    @mode.setter
    def mode(self, value: ComputeMode | str) -> None:
        self._mode = compute_mode(value)
        if self._mode is ComputeMode.FP8 and self.fallback_reason is not None:
            self._log_fallback()

    @property
    def effective_mode(self) -> ComputeMode:
        """The mode the next forward on the weight's device runs (fp8 becomes weight-only after a fallback)."""
        if self._mode is ComputeMode.FP8 and not self.runs_w8a8(self.weight.device):
            return ComputeMode.FP8_WEIGHT_ONLY
        return self._mode

    @property
    def fp8_format(self) -> str:
        return fp8_format_name(self.weight.dtype)

    def _log_fallback(self) -> None:
        if not self._fallback_logged:
            logger.warning("[hyvideo_fp8] %s falls back to fp8-weight-only: %s", self.name or "FP8Linear",
                           self.fallback_reason)
            self._fallback_logged = True

    # --- weight patches (LoRA) -------------------------------------------------------------------------------------
    # A host that patches weights by name (ComfyUI's ModelPatcher looks for ``convert_<param>`` / ``set_<param>``)
    # must merge into the real weight, not into the scaled FP8 codes.

    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs) -> torch.Tensor:
        """The real weight that ``weight`` (this layer's FP8 codes, upcast by the host) stands for."""
        scale = self.weight_scale.to(device=weight.device, dtype=weight.dtype).reshape(-1, 1)
        return weight.mul_(scale) if inplace else weight * scale

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed: int | None = None,
                   return_weight: bool = False, **kwargs) -> torch.Tensor | None:
        """Store a patched real weight back as FP8 under the layer's existing per-channel scales (saturating).

        The scales stay fixed so that restoring the FP8 codes alone (what a host keeps as its backup) restores the
        layer exactly; a patch that pushes a channel past ``scale * fp8_max`` saturates there.
        """
        q = quantize_static(weight, self.weight_scale.reshape(-1, 1), self.weight.dtype).to(self.weight.device)
        if return_weight:
            return q
        if inplace_update:
            self.weight.data.copy_(q)
        else:
            self.weight = nn.Parameter(q, requires_grad=False)
        return None

    # --- compute --------------------------------------------------------------------------------------------------

    def runs_w8a8(self, device: torch.device) -> bool:
        """Whether a forward on ``device`` is the W8A8 GEMM: fp8 mode, a shape the GEMM takes, and a device whose
        kernel plan has an FP8 GEMM."""
        return (self._mode is ComputeMode.FP8 and self.fallback_reason is None
                and gemm_kernel(device) is not Kernel.NONE)  # fmt: skip

    @property
    def accepts_quantized(self) -> bool:
        """Whether the next forward is a per-token W8A8 GEMM, so a caller may feed ``forward_quantized`` from a fused
        producer (e4m3fn values + per-token fp32 scales) instead of calling the layer on a high-precision input."""
        if self.weight.device.type not in ("cpu", "cuda") or self.activation_scaling != "per-token":
            return False
        return self.runs_w8a8(self.weight.device)

    def _rows(self, rows: slice | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """``(weight, weight_scale, bias, n)`` restricted to the output channels ``rows`` (views, no copy)."""
        if rows is None:
            return self.weight, self.weight_scale, self.bias, self.out_features
        start, stop, step = rows.indices(self.out_features)
        if step != 1 or stop <= start:
            raise ValueError(f"{self.name or 'FP8Linear'}: rows must be a non-empty contiguous slice of the "
                             f"{self.out_features} outputs, got {rows}")
        bias = self.bias[start:stop] if self.bias is not None else None
        return self.weight[start:stop], self.weight_scale[start:stop], bias, stop - start

    def forward_quantized(self, x_q: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype | None = None,
                          rows: slice | None = None) -> torch.Tensor:
        """The fp8 GEMM on an input already quantized per token: ``x_q`` e4m3fn ``[..., K]``, ``x_scale`` fp32
        ``[..., 1]`` (``x ≈ x_q * x_scale``). Output ``[..., N]`` in ``out_dtype`` (default: the compute dtype);
        ``rows`` computes only those output channels (a fused projection used in parts).

        Only valid while the layer computes W8A8 (see ``accepts_quantized``): in any other mode the layer would
        compute from the high-precision input, which a quantized one cannot replace.
        """
        label = self.name or "FP8Linear"
        if not self.runs_w8a8(x_q.device):
            raise RuntimeError(f"{label} computes {self.effective_mode.value}, not fp8: forward_quantized needs a "
                               "W8A8 layer; call the layer on the high-precision input (check accepts_quantized)")
        if x_q.dtype != ACTIVATION_DTYPE:
            raise ValueError(f"{label}: x_q must be {ACTIVATION_DTYPE} (per-token quantized), got {x_q.dtype}")
        if x_q.dim() < 1 or x_q.shape[-1] != self.in_features:
            raise ValueError(f"{label} expects {self.in_features} input features, got x_q of shape {tuple(x_q.shape)}")
        if x_scale.dtype != torch.float32 or tuple(x_scale.shape) != (*x_q.shape[:-1], 1):
            raise ValueError(f"{label}: x_scale must be float32 {[*x_q.shape[:-1], 1]} (one scale per token), "
                             f"got {x_scale.dtype} {list(x_scale.shape)}")
        out_dtype = self.compute_dtype if out_dtype is None else _as_compute_dtype(out_dtype)
        weight, weight_scale, bias, n = self._rows(rows)
        out = scaled_gemm(x_q.reshape(-1, self.in_features), x_scale.reshape(-1, 1), weight, weight_scale, bias,
                          out_dtype=out_dtype, use_fast_accum=self.fast_accum)
        return out.reshape(*x_q.shape[:-1], n)

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """``rows``: compute only these output channels (a contiguous slice), e.g. one part of a fused projection."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name or 'FP8Linear'} expects {self.in_features} input features, "
                             f"got input of shape {tuple(x.shape)}")
        mode = self._mode
        weight, weight_scale, bias, n = self._rows(rows)
        if self.runs_w8a8(x.device):
            return self._forward_fp8(x, weight, weight_scale, bias, n)
        high = mode in (ComputeMode.BF16, ComputeMode.FP32)
        dtype = HIGH_PRECISION_DTYPES[mode.value] if high else self.compute_dtype
        bias = bias.to(dtype) if bias is not None else None
        return F.linear(x.to(dtype), dequantize(weight, weight_scale, dtype), bias)

    def _forward_fp8(self, x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     bias: torch.Tensor | None, n: int) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if self.activation_scaling == "per-token":
            x_q, x_scale = quantize_rowwise(x2, ACTIVATION_DTYPE)
        else:
            x_q, x_scale = quantize_tensorwise(x2, ACTIVATION_DTYPE)
        out = scaled_gemm(x_q, x_scale, weight, weight_scale, bias, out_dtype=self.compute_dtype,
                          use_fast_accum=self.fast_accum)
        return out.reshape(*x.shape[:-1], n)

    # --- nn.Module plumbing ---------------------------------------------------------------------------------------

    def _apply(self, fn, recurse: bool = True):
        """Let ``.to(device)`` move everything, but keep dtype casts (``model.half()``, ``.to(bf16)``) away from the
        FP8 weight and its fp32 scale: converting those would silently destroy the quantization."""
        protected = (self.weight, self.weight_scale)

        def keep_storage_dtype(t: torch.Tensor) -> torch.Tensor:
            if any(t is p for p in protected):
                probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
                if probe.dtype != t.dtype:
                    return t.to(device=probe.device)
            return fn(t)

        return super()._apply(keep_storage_dtype, recurse)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Accept the canonical layouts: FP8 weight + scale ``[]``/``[N]``, or a high-precision weight (quantized here).

        A plain ``copy_`` of a high-precision or other-format weight into the FP8 parameter would be an unscaled,
        unsaturated cast, so those cases are converted or refused here.
        """
        w_key, s_key = prefix + "weight", prefix + "weight_scale"
        w = state_dict.get(w_key)
        s = state_dict.get(s_key)
        if w is not None and not is_fp8(w):
            if s is not None:
                error_msgs.append(f"{w_key} is {w.dtype} but {s_key} is present: a scaled weight must be FP8")
                return
            q, s = quantize_rowwise(w, self.weight.dtype)
            state_dict[w_key] = q
        elif w is not None and w.dtype != self.weight.dtype:
            error_msgs.append(f"{w_key} is {w.dtype} but the layer stores {self.weight.dtype}: build it with "
                              f"fp8_format='{fp8_format_name(w.dtype)}'")
            return
        if s is not None:
            try:
                state_dict[s_key] = normalise_weight_scale(s, self.out_features)
            except ValueError as e:
                error_msgs.append(f"{s_key}: {e}")
                return
        elif w is not None:
            state_dict[s_key] = torch.ones(self.out_features)  # unscaled FP8 checkpoint: unit scale
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        s = (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
             f"mode={self._mode.value}, format={self.fp8_format}, compute_dtype={self.compute_dtype}, "
             f"activation_scaling={self.activation_scaling}")
        if self.fast_accum:
            s += ", fast_accum=True"
        if self.fallback_reason is not None:
            s += ", fallback=weight-only"
        return s
