"""FP8 attention with a full-precision softmax (SageAttention2-style numerics) and exact key padding.

Q and K are INT8 (Q per token, K per 128 keys after subtracting K's mean over tokens), V is FP8 e4m3 per channel,
P is FP8 e4m3 scaled by 2**8, and the softmax running max/sum and both accumulations are fp32.
``quantize_qkv.py`` describes the quantized layout, ``reference.py`` the arithmetic, ``triton_kernel.py`` the portable
kernel (Ada and Hopper) and ``gluon_kernel.py`` the faster Hopper kernel, which the Triton backend uses where it can.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from ..custom_ops import compiling_or_eager, register_custom_op
from ..hardware import MIN_CAPABILITY
from .quantize_qkv import QuantizedQKV, quantize_qkv_torch, quantize_qkv_triton, triton_quantize_fits
from .reference import attention_reference

__all__ = ["fp8_attention", "triton_backend_support", "BACKENDS", "QuantizedQKV"]

BACKENDS = ("auto", "triton", "reference")

logger = logging.getLogger("hyvideo_fp8")


def triton_backend_support(device: torch.device, head_dim: int) -> tuple[bool, str]:
    """``(supported, reason)`` for the Triton kernel on ``device`` with this head dim; the reason says what to do."""
    if device.type != "cuda":
        return False, f"the Triton FP8 attention kernel runs on CUDA GPUs, not {device.type}: use backend='reference'"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return False, (
            f"this GPU ({name}, sm_{capability[0]}{capability[1]}) has no FP8 tensor cores: "
            "use attention mode 'sdpa' (or backend='reference', which is slow)"
        )
    try:
        from .triton_kernel import SUPPORTED_HEAD_DIMS
    except ImportError as e:
        return False, f"Triton is not importable ({e}): install the Triton that matches your torch build"
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return False, f"head dim {head_dim} is not supported by the Triton kernel (supported: {SUPPORTED_HEAD_DIMS})"
    return True, "ok"


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [B, H, L, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same [B, H, L, D] shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")  # fmt: skip
    if min(q.shape) == 0:
        raise ValueError(f"empty attention input of shape {tuple(q.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_floating_point() or t.dtype.itemsize < 2:
            raise ValueError(f"{name} must be a floating dtype of 16 bits or more (bf16, fp16, fp32), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: put q, k, v on one device")
    if key_padding_mask is not None:
        B, _, L, _ = q.shape
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
) -> torch.Tensor:
    """Non-causal attention ``softmax(q k^T * sm_scale) v`` on FP8/INT8 tensor cores; ``[B, H, L, D]`` in and out.

    Args:
        q, k, v: ``[B, H, L, D]`` bf16/fp16/fp32 (fp64 works too), any strides (e.g. ``[B, L, H, D]``
            transposed).
        key_padding_mask: optional bool ``[B, L]``, True = valid key. Padded keys get exactly zero weight, so the
            outputs of valid tokens equal those of the same call without the padding.
        sm_scale: softmax scale, default ``1 / sqrt(D)``.
        backend: "triton" (CUDA sm_89+: the Gluon kernel on Hopper at head dim 128, the Triton kernel elsewhere),
            "reference" (pure torch, any device, slow) or "auto" (Triton where supported, else the reference).

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

    use_triton = backend == "triton"
    if backend != "reference":
        ok, reason = triton_backend_support(q.device, D)
        if backend == "triton" and not ok:
            raise RuntimeError(reason)
        use_triton = ok
    if not use_triton:
        qkv = quantize_qkv_torch(q, k, v, key_padding_mask, sm_scale)
        return attention_reference(qkv, q.dtype)
    return _triton_path(q, k, v, key_padding_mask, sm_scale)


@functools.cache
def _quantizer(dtype: torch.dtype, head_dim: int, capability: tuple[int, int]):
    """The Triton quantizer, or the torch one where its kernels do not fit shared memory (fp32 at D = 128 on Ada);
    the attention kernel runs either way."""
    if triton_quantize_fits(dtype, head_dim, capability):
        return quantize_qkv_triton
    logger.warning("[hyvideo_fp8] FP8 attention: %s inputs with head dim %d do not fit the Triton quantizer on this "
                   "GPU (sm_%d%d): quantizing Q/K/V in torch (slower, more memory); bf16 compute avoids this",
                   dtype, head_dim, *capability)
    return quantize_qkv_torch


_GLUON_WORKS: dict[tuple[int, int], bool] = {}  # per capability, once its first launch compiled (True) or failed


def _use_gluon(capability: tuple[int, int], head_dim: int) -> bool:
    from .gluon_kernel import gluon_supported

    return _GLUON_WORKS.get(capability, True) and gluon_supported(capability, head_dim)[0]


def _triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                      sm_scale: float) -> torch.Tensor:
    from .triton_kernel import attention_triton, config_for

    capability = torch.cuda.get_device_capability(q.device)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    quantize = _quantizer(q.dtype, q.shape[-1], capability)
    if _use_gluon(capability, q.shape[-1]):
        from .gluon_kernel import attention_gluon

        qkv = quantize(q, k, v, key_padding_mask, sm_scale, interleave_k=True)
        if _GLUON_WORKS.get(capability):
            return attention_gluon(qkv, out)
        try:  # first launch compiles: Gluon is experimental, and another Triton may reject the kernel
            attention_gluon(qkv, out)
            _GLUON_WORKS[capability] = True
            return out
        except Exception as e:  # noqa: BLE001 (any compile/launch failure: the Triton kernel computes the same)
            _GLUON_WORKS[capability] = False
            logger.warning("[hyvideo_fp8] FP8 attention: the Gluon Hopper kernel failed (%s); using the Triton "
                           "kernel from now on (about 10 %% slower)", repr(e)[:300])
    qkv = quantize(q, k, v, key_padding_mask, sm_scale)
    return attention_triton(qkv, out, config_for(capability))


# Under torch.compile the Triton path is one opaque graph node (hyvideo_fp8::fp8_attention): Dynamo does not trace the
# data-dependent key packing, and Inductor does not re-launch our kernels through its own wrappers (it did on an
# H200 and faulted with an illegal memory access).
_triton_path = compiling_or_eager(
    register_custom_op("fp8_attention", _triton_attention, lambda q, k, v, mask, scale: q.new_empty(q.shape)),
    _triton_attention,
)
