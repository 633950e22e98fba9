"""Tiny-model helpers shared by the model tests: strong random weights and the relative error they report."""

from __future__ import annotations

import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import random_state_dict

CFG = tiny_config()


def strong_state_dict(seed: int, cfg=CFG) -> dict[str, torch.Tensor]:
    """Random weights large enough (std 0.1, norm scales 1 +- 0.2) that attention, RoPE and norms all matter."""
    sd = random_state_dict(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        norm = k.endswith(".scale") or k.endswith(".norm1.weight") or k.endswith(".norm2.weight")
        sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g) if norm else v * 5
    return sd


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
