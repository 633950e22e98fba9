"""The attention entry points of the model: ``attention``, and ``attention_quantized_q`` behind the quantizing prologue.

``mode`` is the one switch between torch SDPA and the pack's FP8 attention
(``fp8.attention.fp8_attention``); the policy picks it per block.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fp8.attention import QuantizedQ, fp8_attention, fp8_attention_quantized_q
from ..fp8.kernel_plan import KernelPlan

ATTENTION_MODES = ("sdpa", "fp8")
# A rank of a sequence-parallel forward (hunyuan.parallel) takes over ``attention`` while it is set.
_SEQUENCE_PARALLEL: ContextVar[Callable[..., Tensor] | None] = ContextVar("hyvideo_fp8_sp", default=None)

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # cuDNN first, then flash (skipped by torch when a mask is given), then memory-efficient, then math.
    _CUDA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                      SDPBackend.MATH]
    _HAS_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters
except ImportError:  # torch without torch.nn.attention: plain SDPA
    _CUDA_PRIORITY = []
    _HAS_PRIORITY = False


@contextlib.contextmanager
def cuda_sdpa_priority(backends: Sequence) -> Iterator[None]:
    """SDPA on CUDA tries ``backends`` in this order instead of cuDNN first (the quality report's noise floor swaps
    kernels this way: an outer ``sdpa_kernel`` would be overridden by the priority set around every call)."""
    global _CUDA_PRIORITY
    saved = _CUDA_PRIORITY
    _CUDA_PRIORITY = list(backends)
    try:
        yield
    finally:
        _CUDA_PRIORITY = saved


@contextlib.contextmanager
def sequence_parallel(hook: Callable[..., Tensor]) -> Iterator[None]:
    """Inside, ``attention`` returns ``hook(q, k, v, key_padding_mask, attend)``, where ``attend`` (same arguments)
    is this rank's own attention: the hook exchanges tokens with the other ranks around it."""
    token = _SEQUENCE_PARALLEL.set(hook)
    try:
        yield
    finally:
        _SEQUENCE_PARALLEL.reset(token)


def _attend_here(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, mode: str,
                 plan: KernelPlan | None) -> Tensor:
    token = _SEQUENCE_PARALLEL.set(None)
    try:
        return attention(q, k, v, key_padding_mask=key_padding_mask, mode=mode, plan=plan)
    finally:
        _SEQUENCE_PARALLEL.reset(token)


def key_bias(key_padding_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive ``[B, 1, 1, Lk]`` bias: 0 for valid keys, ``-finfo.max`` for padding.

    A finite bias excludes padded keys exactly (exp underflows to 0) and, unlike -inf,
    cannot turn a row whose keys are all padding into NaN.
    """
    bias = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    bias.masked_fill_(~key_padding_mask.bool(), -torch.finfo(dtype).max)
    return bias[:, None, None, :]


def _sdpa(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    if q.is_cuda and _HAS_PRIORITY:
        with sdpa_kernel(_CUDA_PRIORITY, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def attention(q: Tensor, k: Tensor, v: Tensor, *, key_padding_mask: Tensor | None = None,
              mode: str = "sdpa", plan: KernelPlan | None = None) -> Tensor:
    """Softmax attention, ``q, k, v [B, H, L, D]`` -> ``[B, L, H*D]``.

    Args:
        key_padding_mask: ``[B, Lk]``, 1/True = valid key, 0/False = padding. Pass None when
            nothing is padded, so flash/cuDNN kernels stay eligible.
        mode: "sdpa" (torch SDPA, fp32 softmax inside the backend) or "fp8" (the pack's FP8 attention).
        plan: the model's kernel plan, which says how FP8 attention runs (default: the plan of q's device).
    """
    hook = _SEQUENCE_PARALLEL.get()
    if hook is not None:
        return hook(q, k, v, key_padding_mask, lambda q, k, v, m: _attend_here(q, k, v, m, mode, plan))
    if mode == "sdpa":
        bias = key_bias(key_padding_mask, q.dtype) if key_padding_mask is not None else None
        out = _sdpa(q, k, v, bias)
    elif mode == "fp8":
        out = fp8_attention(q, k, v, key_padding_mask=key_padding_mask, plan=plan)
    else:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")
    return _merge_heads(out)


def attention_quantized_q(q: QuantizedQ, k: Tensor, v: Tensor, *, key_padding_mask: Tensor | None = None,
                          plan: KernelPlan | None = None) -> Tensor:
    """FP8 attention on queries the quantizing prologue wrote (``fp8.fused.qk_norm_rope_quant_q``): ``k, v``
    ``[B, H, L, D]`` -> ``[B, L, H*D]``, as ``attention(..., mode="fp8")``."""
    if _SEQUENCE_PARALLEL.get() is not None:
        raise RuntimeError("sequence-parallel attention exchanges 16-bit queries: run its ranks with the kernel "
                           "plan's quant_prologue off (hunyuan.parallel does)")
    return _merge_heads(fp8_attention_quantized_q(q, k, v, key_padding_mask=key_padding_mask, plan=plan))


def _merge_heads(out: Tensor) -> Tensor:
    b, h, L, d = out.shape
    return out.transpose(1, 2).reshape(b, L, h * d)


__all__ = ["ATTENTION_MODES", "attention", "attention_quantized_q", "cuda_sdpa_priority", "key_bias",
           "sequence_parallel"]
