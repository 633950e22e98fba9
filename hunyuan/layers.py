"""Small building blocks of the HunyuanVideo transformer: embedders, norms, modulation.

Parameter names follow ComfyUI's native model (``comfy/ldm/flux/layers.py`` and
``comfy/ldm/hunyuan_video/model.py``) so state dicts and LoRA keys line up. The
element-wise steps (LayerNorm+modulate, GELU, RMS norm) are separate functions, and
``modulated_linear`` / ``gelu_linear`` / ``concat_gelu_linear`` pick per layer between
them and the fused FP8 producers (``fp8.fused``) that feed a W8A8 GEMM directly, run by the
implementation the kernel plan gives them (``producers``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fp8 import fused
from ..fp8.custom_ops import compiling_or_eager
from ..fp8.kernel_plan import Kernel

NORM_EPS = 1e-6


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0, time_factor: float = 1.0) -> Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of ``time_factor * t``, in fp32.

    ComfyUI passes the timestep in [0, 1000] with ``time_factor=1`` and the embedded
    guidance with ``time_factor=1000`` (Tencent's ``guidance * 1000``).
    """
    t = t * time_factor
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear (time, guidance, pooled-text and refiner embedders)."""

    def __init__(self, in_dim: int, hidden_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True, device=device, dtype=dtype)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class PatchEmbed(nn.Module):
    """Conv3d patchifier ``[B, C, T, H, W] -> [B, T'H'W', hidden]`` (tokens in t, h, w order)."""

    def __init__(self, in_channels: int, hidden: int, patch_size: tuple[int, int, int], device=None,
                 dtype=None) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch_size, stride=patch_size, bias=True,
                              device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens come out contiguous: every block updates them in place, and the fused producers (and fast
        LayerNorms) need each token's channels adjacent, which the conv's ``[B, C, N]`` layout transposed is not."""
        w, b = self.proj.weight.to(x.dtype), self.proj.bias.to(x.dtype)  # no-ops unless the policy changed dtype
        return F.conv3d(x, w, b, stride=self.proj.stride).flatten(2).transpose(1, 2).contiguous()


def rms_norm(x: Tensor, scale: Tensor, norm_dtype: torch.dtype) -> Tensor:
    """RMS norm over the last dim computed in ``norm_dtype``; returns ``norm_dtype`` (caller casts once)."""
    return F.rms_norm(x.to(norm_dtype), (x.shape[-1],), weight=scale.to(norm_dtype), eps=NORM_EPS)


class RMSNorm(nn.Module):
    """Holds the learnable ``scale`` of a q or k RMS norm (ComfyUI name ``*.query_norm.scale``)."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))


class QKNorm(nn.Module):
    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim, device=device, dtype=dtype)
        self.key_norm = RMSNorm(dim, device=device, dtype=dtype)


def layer_norm(x: Tensor, norm_dtype: torch.dtype, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = NORM_EPS) -> Tensor:
    """LayerNorm (eps 1e-6 unless given) over the last dim computed in ``norm_dtype``, returned in x's dtype.

    torch's CPU and CUDA LayerNorm kernels already compute bf16/fp16 inputs in fp32 and round once
    at the end, so an fp32 norm of a half-precision input needs no fp32 copy of the activation.
    """
    if weight is None and x.dtype in (torch.bfloat16, torch.float16) and norm_dtype == torch.float32:
        return F.layer_norm(x, (x.shape[-1],), None, None, eps)
    w = weight.to(norm_dtype) if weight is not None else None
    b = bias.to(norm_dtype) if bias is not None else None
    return F.layer_norm(x.to(norm_dtype), (x.shape[-1],), w, b, eps).to(x.dtype)


def norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, norm_dtype: torch.dtype) -> Tensor:
    """``LayerNorm(x) * (1 + scale) + shift``: the pre-norm of every DiT block and the final layer.

    The norm runs in ``norm_dtype``; the modulation in x's (compute) dtype, as in ComfyUI.
    ``shift``/``scale`` are ``[B, 1, hidden]``.
    """
    return torch.addcmul(shift, layer_norm(x, norm_dtype), 1 + scale)


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


# --- feeding a linear: fused FP8 producer where the layer computes W8A8, the high-precision steps otherwise ----------
# The producers are Triton kernels on CUDA; under torch.compile they are custom ops (one opaque node each).

_layernorm_modulate_quant = compiling_or_eager(fused.layernorm_modulate_quant_op, fused.layernorm_modulate_quant)
_gelu_tanh_quant = compiling_or_eager(fused.gelu_tanh_quant_op, fused.gelu_tanh_quant)
_concat_gelu_quant = compiling_or_eager(fused.concat_gelu_quant_op, fused.concat_gelu_quant)


def takes_fp8_input(layer: nn.Module, producers: Kernel) -> bool:
    """Whether to feed ``layer`` from a fused producer: the plan has producers (``Kernel.NONE``: the model's fused
    producers are off, or nothing computes W8A8 here) and the layer computes W8A8 per token (policy, device and
    shape allow). nn.Linear and weight-only / high-precision modes never do."""
    return producers is not Kernel.NONE and bool(getattr(layer, "accepts_quantized", False))


def linear_rows(layer: nn.Module, x: Tensor, rows: slice | None = None) -> Tensor:
    """``layer(x)``, or only its output channels ``rows`` (an nn.Linear or an FP8Linear)."""
    if rows is None:
        return layer(x)
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight[rows], layer.bias[rows] if layer.bias is not None else None)
    return layer(x, rows=rows)


def modulated_linear(layer: nn.Module, x: Tensor, shift: Tensor, scale: Tensor, norm_dtype: torch.dtype,
                     producers: Kernel, rows: slice | None = None) -> Tensor:
    """``layer(LayerNorm(x) * (1 + scale) + shift)`` (output channels ``rows`` only, if given): the qkv, fc1 and
    linear1 inputs.

    Fused: LayerNorm, modulation and per-token quantization in fp32 in one pass, straight into the FP8 GEMM.
    """
    if takes_fp8_input(layer, producers):
        return layer.forward_quantized(*_layernorm_modulate_quant(x, shift, scale, NORM_EPS, producers.value),
                                       rows=rows)
    return linear_rows(layer, norm_modulate(x, shift, scale, norm_dtype), rows)


def gelu_linear(layer: nn.Module, h: Tensor, producers: Kernel) -> Tensor:
    """``layer(gelu_tanh(h))``: the fc2 input (K = 12288, the widest activation an eager quantization would read)."""
    if takes_fp8_input(layer, producers):
        h_q, h_scale = _gelu_tanh_quant(h, producers.value)
        del h  # the caller passes a temporary: free it before the GEMM allocates its output
        return layer.forward_quantized(h_q, h_scale)
    return layer(gelu_tanh(h))


def concat_gelu_linear(layer: nn.Module, attn_out: Tensor, mlp_act: Tensor, producers: Kernel) -> Tensor:
    """``layer(cat(attn_out, gelu_tanh(mlp_act)))``: the single block's linear2; fused, the concatenation is
    never written in high precision."""
    if takes_fp8_input(layer, producers):
        return layer.forward_quantized(*_concat_gelu_quant(attn_out, mlp_act, producers.value))
    return layer(torch.cat((attn_out, gelu_tanh(mlp_act).to(attn_out.dtype)), dim=-1))


class LayerNorm(nn.Module):
    """Affine LayerNorm (``weight`` and ``bias``): the token refiner's ``norm1``/``norm2`` (eps 1e-6) and the 1.5
    conditioning inputs' (torch's default eps 1e-5)."""

    def __init__(self, dim: int, eps: float = NORM_EPS, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor, norm_dtype: torch.dtype) -> Tensor:
        return layer_norm(x, norm_dtype, self.weight, self.bias, self.eps)


class Modulation(nn.Module):
    """SiLU -> Linear(hidden, factor * hidden), split into ``factor`` chunks of ``[B, 1, hidden]``.

    Chunk order is (shift, scale, gate) per half, as in Tencent and ComfyUI.
    """

    def __init__(self, dim: int, factor: int, device=None, dtype=None) -> None:
        super().__init__()
        self.factor = factor
        self.lin = nn.Linear(dim, factor * dim, bias=True, device=device, dtype=dtype)

    def forward(self, vec: Tensor) -> tuple[Tensor, ...]:
        """``vec [B, hidden]`` -> chunks ``[B, 1, hidden]``; a token-replace ``vec [B, 2, hidden]`` -> chunks
        ``[B, 2, hidden]`` (row 0 for the guiding frame's tokens, row 1 for the rest)."""
        out = self.lin(F.silu(vec))
        return (out[:, None, :] if out.dim() == 2 else out).chunk(self.factor, dim=-1)


__all__ = ["NORM_EPS", "timestep_embedding", "MLPEmbedder", "PatchEmbed", "rms_norm", "RMSNorm", "QKNorm",
           "layer_norm", "norm_modulate", "gelu_tanh", "LayerNorm", "Modulation", "takes_fp8_input",
           "linear_rows", "modulated_linear", "gelu_linear", "concat_gelu_linear"]
