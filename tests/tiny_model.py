"""Tiny-model helpers shared by the model tests: strong random weights, a family member's inputs, and the relative
error they report."""

from __future__ import annotations

import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import random_state_dict

CFG = tiny_config()
NORMS = (".scale", ".norm1.weight", ".norm2.weight")
FAMILY_NORMS = (*NORMS, "layernorm.weight", "proj.0.weight", "proj.4.weight")  # and 1.5's conditioning layer norms


def strong_state_dict(seed: int, cfg=CFG, norms: tuple[str, ...] = NORMS) -> dict[str, torch.Tensor]:
    """Random weights large enough (std 0.1, norm scales 1 +- 0.2) that attention, RoPE and norms all matter."""
    sd = random_state_dict(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g) if k.endswith(norms) else v * 5
    return sd


def family_inputs(cfg, frames: int = 2, height: int = 4, width: int = 6, batch: int = 1, pad=None, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> dict:
    """Inputs of a family member in ``dtype``: its latent channels, 7 text tokens (the last ``pad[i]`` of sample i
    masked), and byT5, vision, the sampler's sigmas (meanflow) and the guiding frame (v1 I2V) where it has them."""
    g = torch.Generator().manual_seed(seed)
    out = dict(x=torch.randn(batch, cfg.in_channels, frames, height, width, generator=g),
               timestep=torch.full((batch,), 700.0), context=torch.randn(batch, 7, cfg.context_in_dim, generator=g))
    if cfg.vec_in_dim:
        out["y"] = torch.randn(batch, cfg.vec_in_dim, generator=g)
    if cfg.guidance_embed:
        out["guidance"] = torch.full((batch,), 6.0)
    if cfg.byt5_dims:
        out["txt_byt5"] = torch.randn(batch, 5, cfg.byt5_dims[0], generator=g)
    if cfg.vision_in_dim:
        out["clip_fea"] = torch.randn(batch, 3, cfg.vision_in_dim, generator=g)
    if pad is not None:
        mask = torch.ones(batch, 7, dtype=torch.long)
        for i, p in enumerate(pad):
            if p:
                mask[i, -p:] = 0
        out["attention_mask"] = mask
    out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    if cfg.meanflow:
        out["transformer_options"] = {"sigmas": torch.tensor([0.7]),
                                      "sample_sigmas": torch.tensor([1.0, 0.7, 0.3, 0.0])}
    if cfg.variant == "v1-i2v":
        out["guiding_frame_index"] = torch.zeros(batch)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
