"""Build a ``HunyuanVideoTransformer`` from a canonical state dict, one tensor at a time.

The model is built on the meta device, then every linear is made by ``fp8.apply.make_linear``
(quantized on the target device right away) and every other tensor is materialized. Peak memory
is therefore the finished model plus one layer, never a full-precision copy of it. The same path
builds random models (``build_random``) for benchmarks, generating each tensor on the target device.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

from ..fp8.apply import quantization_report
from ..fp8.formats import high_precision_dtype, is_fp8
from ..fp8.quantize import dequantize
from .checkpoint.values import check_values
from .config import HunyuanConfig, canonical_shapes, detect_config
from .layers import LayerNorm, RMSNorm
from .model import HunyuanVideoTransformer, _upcast
from .plan import kernel_plan

logger = logging.getLogger("hyvideo_fp8")

INIT_STD = 0.02
_LINEAR_EXTRAS = (".weight_scale", ".input_scale")  # consumed with their layer; input_scale is not used


class StateDictError(ValueError):
    """The state dict does not fit the HunyuanVideo config (missing, unexpected or mis-shaped tensors)."""


def _list(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def check_state_dict(shapes: Mapping[str, Any], config: HunyuanConfig, linear_names: list[str]) -> None:
    """Raise ``StateDictError`` naming every missing, unexpected or mis-shaped tensor (before anything is built)."""
    expected = canonical_shapes(config)
    allowed = {n + extra for n in linear_names for extra in _LINEAR_EXTRAS}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected and k not in allowed]
    wrong = [f"{k} {tuple(shapes[k])} (expected {expected[k]})" for k in expected
             if k in shapes and tuple(shapes[k]) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_list(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape: {'; '.join(wrong[:5])}")
    if problems:
        raise StateDictError(
            f"the state dict does not fit HunyuanVideo config (hidden {config.hidden_size}, {config.depth} double + "
            f"{config.depth_single_blocks} single blocks): " + " | ".join(problems)
            + ". Convert the checkpoint to the canonical ComfyUI layout (hunyuan.checkpoint) or pass the right config."
        )


def _param_dtypes(policy, dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of plain tensors and high-precision linears, dtype of norm weights)."""
    if policy is None:
        param = dtype or torch.float32
        return param, _upcast(param)
    param = high_precision_dtype(policy.compute_dtype)
    if dtype is not None and dtype != param:
        raise ValueError(f"dtype={dtype} conflicts with the policy's compute_dtype {policy.compute_dtype!r}; "
                         "pass dtype=None (the policy decides) or change the policy")
    return param, (torch.float32 if policy.norm_dtype == "fp32" else param)


def _dense(t: Tensor, scale: Tensor | None, dtype: torch.dtype, device) -> Tensor:
    """A plain tensor in ``dtype`` on ``device``; FP8 tensors are dequantized with their scale (or 1)."""
    t = t.to(device)
    if is_fp8(t):
        return dequantize(t, scale if scale is not None else torch.ones(()), dtype)
    return t.detach().to(dtype)


def _plain_linear(w: Tensor, b: Tensor | None, scale: Tensor | None, dtype: torch.dtype, device) -> nn.Linear:
    weight = _dense(w, scale, dtype, device)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None, device="meta", dtype=dtype)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if b is not None:
        layer.bias = nn.Parameter(_dense(b, None, dtype, device), requires_grad=False)
    return layer


def _fill(model: HunyuanVideoTransformer, take: Callable[[str], Tensor | None], policy, device,
          param_dtype: torch.dtype, norm_dtype: torch.dtype) -> None:
    """Materialize every meta tensor of ``model`` from ``take(name)`` (None: absent), module by module."""
    from ..fp8.apply import make_linear

    order = model.config.block_order()
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            w, b, scale = take(f"{name}.weight"), take(f"{name}.bias"), take(f"{name}.weight_scale")
            take(f"{name}.input_scale")
            if policy is None:
                new = _plain_linear(w, b, scale, param_dtype, device)
            else:
                # High-precision weights are rounded to the compute dtype first, so a layer quantized here equals
                # one quantized later by set_policy from the loaded model (and the transient copy is smaller).
                weight = w.to(device) if is_fp8(w) else _dense(w, None, param_dtype, device)
                bias = _dense(b, None, param_dtype, device) if b is not None else None
                new = make_linear(name, weight, bias, policy, order,
                                  weight_scale=scale.to(device) if scale is not None else None)
            del w, b, scale
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
            continue
        dtype = norm_dtype if isinstance(module, (RMSNorm, LayerNorm)) else param_dtype
        for pname, _ in list(module.named_parameters(recurse=False)):
            full = f"{name}.{pname}" if name else pname
            tensor = _dense(take(full), None, dtype, device)
            setattr(module, pname, nn.Parameter(tensor, requires_grad=False))
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"internal error: parameters left on the meta device: {_list(left)}")


def load_transformer(state_dict: MutableMapping[str, Tensor] | Mapping[str, Tensor], policy, device="cpu",
                     dtype: torch.dtype | None = None, config: HunyuanConfig | None = None,
                     consume: bool = False) -> HunyuanVideoTransformer:
    """Build the model from a canonical (ComfyUI-named) state dict under ``policy``.

    Args:
        policy: a ``PrecisionPolicy``; None keeps every linear a plain ``nn.Linear`` in ``dtype``
            (default fp32), FP8 weights dequantized.
        dtype: only with ``policy=None`` (with a policy its ``compute_dtype`` decides).
        config: detected from the shapes when None.
        consume: the caller hands over the dict: each tensor is popped as it is used, so the
            source is freed layer by layer. With ``open_canonical(path).lazy_state_dict()`` each tensor is
            read from the file only then: loading holds the model plus one tensor, never the whole file.
    Raises ``NotHunyuanVideoError`` for another model's dict and ``StateDictError`` naming missing,
    unexpected or mis-shaped keys; both are raised before any weight is converted. A tensor holding
    NaN/Inf, or an FP8 scale that is not a positive finite number, raises ``InvalidValuesError``.
    """
    shapes = getattr(state_dict, "shapes", None)  # a lazy mapping (checkpoint.LazyStateDict) knows them unread
    shapes = dict(shapes) if shapes is not None else {k: tuple(v.shape) for k, v in state_dict.items()}
    config = config or detect_config(shapes)
    param_dtype, norm_dtype = _param_dtypes(policy, dtype)
    model = HunyuanVideoTransformer(config, policy=policy, device="meta")
    check_state_dict(shapes, config, _linear_names(model))

    def take(key: str) -> Tensor | None:
        if key not in state_dict:
            return None
        tensor = state_dict.pop(key) if consume else state_dict[key]
        check_values(key, tensor, "state dict")  # NaN/Inf or a bad FP8 scale: refused as each tensor streams in
        return tensor

    _fill(model, take, policy, device, param_dtype, norm_dtype)
    return _loaded(model, device, param_dtype)


def _loaded(model: HunyuanVideoTransformer, device, compute_dtype: torch.dtype) -> HunyuanVideoTransformer:
    """Log the one-line load summary (linear layers per compute mode) and, on a GPU, the kernel plan there."""
    logger.info(quantization_report(model).summary())
    if torch.device(device).type == "cuda":
        kernel_plan(model, torch.device(device), compute_dtype)
    return model.eval()


# --- random models ------------------------------------------------------------------------------------------------

# the affine LayerNorm weights of 1.5's byT5 mapper and vision projection
_LAYERNORM_WEIGHTS = ("byt5_in.layernorm.weight", "vision_in.proj.0.weight", "vision_in.proj.4.weight")


def _is_norm_scale(name: str) -> bool:
    return (name.endswith(".scale") or name.endswith(".norm1.weight") or name.endswith(".norm2.weight")
            or name in _LAYERNORM_WEIGHTS)


def random_tensor(name: str, shape: tuple[int, ...], seed: int, device="cpu") -> Tensor:
    """The fp32 value of tensor ``name`` in the random model ``seed``: N(0, 0.02), norm scales ones.

    Each tensor has its own generator (seeded from ``seed`` and the name), so any subset can be
    made in any order, on the device that will hold it.
    """
    if _is_norm_scale(name):
        return torch.ones(shape, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=gen, device=device) * INIT_STD


def random_state_dict(config: HunyuanConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """A canonical state dict of random weights (CPU), equal to what ``build_random`` builds with the same seed."""
    return {k: random_tensor(k, s, seed).to(dtype) for k, s in canonical_shapes(config).items()}


def build_random(config: HunyuanConfig, policy=None, seed: int = 0, device="cpu",
                 dtype: torch.dtype = torch.float32) -> HunyuanVideoTransformer:
    """A random model built layer by layer on ``device`` (each layer quantized as soon as it exists).

    Safe at full 13B size with an FP8 policy: no full-precision copy of all weights ever exists.
    ``dtype`` applies with ``policy=None``; with a policy, weights are drawn in its compute dtype.
    """
    shapes = canonical_shapes(config)
    param_dtype, norm_dtype = _param_dtypes(policy, dtype if policy is None else None)

    def take(key: str) -> Tensor | None:
        if key not in shapes:
            return None
        return random_tensor(key, shapes[key], seed, device).to(param_dtype)

    model = HunyuanVideoTransformer(config, policy=policy, device="meta")
    _fill(model, take, policy, device, param_dtype, norm_dtype)
    return _loaded(model, device, param_dtype)


__all__ = ["StateDictError", "check_state_dict", "load_transformer", "random_tensor", "random_state_dict",
           "build_random", "INIT_STD"]
