"""The kernel plan of a HunyuanVideo model on a device (``fp8.kernel_plan``), made once and kept on the model."""

from __future__ import annotations

import torch
from torch import nn

from ..fp8.formats import ComputeMode
from ..fp8.kernel_plan import KernelPlan, log_plan, make_plan, with_gluon_failures


def _uses_fp8(policy) -> bool:
    """Whether ``policy`` asks for FP8 compute anywhere (then a slow fallback deserves a warning)."""
    if policy is None:
        return False
    modes = [policy.default_mode, *(r.mode for r in policy.rules)]
    return ComputeMode.FP8 in modes or "fp8" in (policy.attention, *(r.kernel for r in policy.attention_rules))


def kernel_plan(model: nn.Module, device: torch.device, compute_dtype: torch.dtype) -> KernelPlan:
    """The plan for ``model`` (a ``HunyuanVideoTransformer``) computing in ``compute_dtype`` on ``device``: made from
    its config on first use, stored in ``model.kernel_plans`` and logged in one line (warnings when its policy uses
    FP8 and the GPU would run a reference or emulated path). Once made, a plain dict lookup (traceable by
    torch.compile)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    plan = model.kernel_plans.get((device, compute_dtype))
    if plan is None:
        plan = _new_plan(model, device, compute_dtype)
    return with_gluon_failures(plan)


@torch.compiler.disable
def _new_plan(model: nn.Module, device: torch.device, compute_dtype: torch.dtype) -> KernelPlan:
    cfg = model.config
    plan = make_plan(device, compute_dtype, cfg.num_heads, cfg.hidden_size // cfg.num_heads,
                     row_channels=cfg.hidden_size + cfg.mlp_hidden)
    model.kernel_plans[device, compute_dtype] = plan
    log_plan(plan, warn=_uses_fp8(model.policy))
    return plan


__all__ = ["kernel_plan"]
