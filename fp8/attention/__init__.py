"""FP8 attention with a full-precision softmax (SageAttention2-style numerics) and exact key padding.

Q and K are INT8 (Q per token, K per 128 keys after subtracting K's mean over tokens), V is FP8 e4m3 per channel,
P is FP8 e4m3 scaled by 2**8, and the softmax running max/sum and both accumulations are fp32.
``quantize_qkv.py`` describes the quantized layout, ``reference.py`` the arithmetic, ``triton_kernel.py`` the portable
kernel (Ada and Hopper) and ``gluon_kernel.py`` the faster Hopper kernel; which of them runs is the kernel plan's
choice (``fp8.kernel_plan``).
"""

from __future__ import annotations

import math

import torch

from ..custom_ops import compiling_or_eager, register_custom_op
from ..kernel_plan import FAST, Kernel, KernelPlan, device_plan, gluon_failed, record_gluon_failure
from .quantize_qkv import (
    QuantizedQ,
    QuantizedQKV,
    empty_quantized_q,
    quantize_kv_torch,
    quantize_kv_triton,
    quantize_q_torch,
    quantize_q_triton,
)
from .reference import attention_reference

__all__ = ["fp8_attention", "fp8_attention_quantized_q", "BACKENDS", "QuantizedQ", "QuantizedQKV",
           "empty_quantized_q"]

BACKENDS = ("auto", "triton", "reference")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [B, H, L, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same [B, H, L, D] shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")  # fmt: skip
    _check_tensors((("q", q), ("k", k), ("v", v)), key_padding_mask)


def _check_tensors(named: tuple[tuple[str, torch.Tensor], ...], key_padding_mask: torch.Tensor | None) -> None:
    first_name, first = named[0]
    if min(first.shape) == 0:
        raise ValueError(f"empty attention input of shape {tuple(first.shape)}")
    for name, t in named:
        if not t.is_floating_point() or t.dtype.itemsize < 2:
            raise ValueError(f"{name} must be a floating dtype of 16 bits or more (bf16, fp16, fp32), got {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}: put them on one device")
    if key_padding_mask is not None:
        B, _, L, _ = first.shape
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, L):
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape [B, L] = [{B}, {L}] (True = valid key), "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )


def fp8_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    backend: str = "auto",
    plan: KernelPlan | None = None,
) -> torch.Tensor:
    """Non-causal attention ``softmax(q k^T * sm_scale) v`` on FP8/INT8 tensor cores; ``[B, H, L, D]`` in and out.

    Args:
        q, k, v: ``[B, H, L, D]`` bf16/fp16/fp32 (fp64 works too), any strides (e.g. ``[B, L, H, D]``
            transposed).
        key_padding_mask: optional bool ``[B, L]``, True = valid key. Padded keys get exactly zero weight, so the
            outputs of valid tokens equal those of the same call without the padding.
        sm_scale: softmax scale, default ``1 / sqrt(D)``.
        backend: "auto" (what the kernel plan says: the Gluon kernel on Hopper at head dim 128, the Triton kernel
            on other sm_89+ GPUs, the torch emulation elsewhere), "triton" (the GPU kernels or an error saying why
            not) or "reference" (the torch emulation, any device, slow).
        plan: the model's kernel plan (``fp8.kernel_plan``); default: the plan of q's device.

    Returns:
        ``[B, H, L, D]`` in q's dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)}")
    _check_inputs(q, k, v, key_padding_mask)
    D = q.shape[-1]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    if not (math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale}")

    kernel, quantizers = _kernels(backend, plan, q.device, q.dtype, D)
    if kernel not in FAST:
        qkv = QuantizedQKV.from_parts(quantize_q_torch(q, sm_scale), quantize_kv_torch(k, v, key_padding_mask), False)
        return attention_reference(qkv, q.dtype)
    return _gpu_path(q, k, v, key_padding_mask, sm_scale, kernel.value, quantizers.value)


def fp8_attention_quantized_q(
    q: QuantizedQ,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
    plan: KernelPlan | None = None,
) -> torch.Tensor:
    """:func:`fp8_attention` on queries that are already quantized, e.g. by the attention prologue that normalises and
    rotates them (``fp8.fused.qk_norm_rope_quant_q``): Q is then written once, as int8, and never read in bf16.

    Args:
        q: from :func:`.quantize_qkv.quantize_q_torch` or a producer filling :func:`.quantize_qkv.empty_quantized_q`;
            its ``sm_scale`` is the softmax scale.
        k, v: ``[B, H, L, D]`` with ``B, H, L`` of ``q``, as in :func:`fp8_attention`.

    Returns:
        ``[B, H, L, D]`` in k's dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)}")
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k and v must have the same [B, H, L, D] shape, got {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, L, D = k.shape
    if not q.fits(B, H, L, D):
        raise ValueError(f"quantized q (int8 {tuple(q.q.shape)}, scales {tuple(q.q_scale.shape)}, B, H, L = "
                         f"{q.batch}, {q.heads}, {q.seq_len}) does not match k, v [B, H, L, D] = {[B, H, L, D]}: "
                         "make it with empty_quantized_q / quantize_q_torch for these shapes")  # fmt: skip
    _check_tensors((("k", k), ("v", v)), key_padding_mask)
    if q.q.device != k.device or q.q_scale.device != k.device:
        raise ValueError(f"quantized q is on {q.q.device} but k is on {k.device}: put them on one device")
    kernel, quantizers = _kernels(backend, plan, k.device, k.dtype, D)
    if kernel not in FAST:
        return attention_reference(QuantizedQKV.from_parts(q, quantize_kv_torch(k, v, key_padding_mask), False),
                                   k.dtype)  # fmt: skip
    return _gpu_path_quantized_q(q.q, q.q_scale, k, v, key_padding_mask, q.sm_scale, kernel.value, quantizers.value)


def _kernels(backend: str, plan: KernelPlan | None, device: torch.device, dtype: torch.dtype,
             head_dim: int) -> tuple[Kernel, Kernel]:  # fmt: skip
    """(attention kernel, quantizers) of this call: the plan's, or the reference when asked for."""
    if backend == "reference":
        return Kernel.EMULATED, Kernel.TORCH
    if plan is None:
        plan = device_plan(device, dtype, head_dim)
    if backend == "triton" and plan.attention not in FAST:
        if device.type != "cuda":
            raise RuntimeError(f"the FP8 attention kernels run on CUDA GPUs, not {device.type}: "
                               "use backend='reference'")
        raise RuntimeError("the FP8 attention kernels cannot run here: " + "; ".join(plan.notes))
    return plan.attention, plan.attention_quantizers


def _attend(q: QuantizedQ, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
            out_dtype: torch.dtype, kernel: str, quantizers: str) -> torch.Tensor:
    """Quantize K and V in the order the kernel reads them, then run the Gluon kernel (Hopper) or the Triton one."""
    from .triton_kernel import attention_triton, config_for

    capability = torch.cuda.get_device_capability(k.device)
    out = torch.empty(k.shape, dtype=out_dtype, device=k.device)
    quantize_kv = quantize_kv_triton if quantizers == Kernel.TRITON.value else quantize_kv_torch
    if kernel == Kernel.GLUON.value and not gluon_failed(capability):
        from .gluon_kernel import attention_gluon

        qkv = QuantizedQKV.from_parts(q, quantize_kv(k, v, key_padding_mask, interleave_k=True), True)
        try:  # Gluon is experimental: another Triton may reject the kernel at its first launch
            return attention_gluon(qkv, out)
        except Exception as e:  # noqa: BLE001 (any compile/launch failure: the Triton kernel computes the same)
            record_gluon_failure(capability, e)
    qkv = QuantizedQKV.from_parts(q, quantize_kv(k, v, key_padding_mask), False)
    return attention_triton(qkv, out, config_for(capability))


def _gpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                   sm_scale: float, kernel: str, quantizers: str) -> torch.Tensor:  # fmt: skip
    quantize_q = quantize_q_triton if quantizers == Kernel.TRITON.value else quantize_q_torch
    return _attend(quantize_q(q, sm_scale), k, v, key_padding_mask, q.dtype, kernel, quantizers)


def _gpu_attention_quantized_q(q8: torch.Tensor, q_scale: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               key_padding_mask: torch.Tensor | None, sm_scale: float, kernel: str,
                               quantizers: str) -> torch.Tensor:  # fmt: skip
    B, H, L, _ = k.shape
    return _attend(QuantizedQ(q8, q_scale, sm_scale, B, H, L), k, v, key_padding_mask, k.dtype, kernel, quantizers)


# Under torch.compile the GPU path is one opaque graph node (hyvideo_fp8::fp8_attention): Dynamo does not trace the
# data-dependent key packing, and Inductor does not re-launch our kernels through its own wrappers (it did on an
# H200 and faulted with an illegal memory access).
_gpu_path = compiling_or_eager(
    register_custom_op("fp8_attention", _gpu_attention,
                       lambda q, k, v, mask, scale, kernel, quantizers: q.new_empty(q.shape)),
    _gpu_attention,
)
_gpu_path_quantized_q = compiling_or_eager(
    register_custom_op("fp8_attention_quantized_q", _gpu_attention_quantized_q,
                       lambda q8, q_scale, k, v, mask, scale, kernel, quantizers: k.new_empty(k.shape)),
    _gpu_attention_quantized_q,
)
