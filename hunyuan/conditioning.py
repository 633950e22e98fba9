"""HunyuanVideo 1.5's extra conditioning inputs: the byT5 glyph-text mapper, the SigLIP vision projection and the
condition-type embedding that tells text, byT5 and vision tokens apart, plus the meanflow ``time_r`` target of the
step-distilled models.

Parameter names are ComfyUI's (``byt5_in.*``, ``vision_in.proj.{0,1,3,4}.*``, ``cond_type_embedding.weight``), which
are also Tencent's. All of it runs on a few hundred tokens or one vector per sample, so it stays in high precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LayerNorm

# cond_type_embedding rows
TEXT, BYT5, VISION = 0, 1, 2
TORCH_LAYERNORM_EPS = 1e-5  # these LayerNorms are torch's default ones in Tencent's and ComfyUI's models


class ByT5Mapper(nn.Module):
    """``byt5_in``: LayerNorm -> fc1 -> GELU -> fc2 -> GELU -> fc3, byT5 states to the hidden size."""

    def __init__(self, in_dim: int, hidden_dim: int, mid_dim: int, out_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.layernorm = LayerNorm(in_dim, TORCH_LAYERNORM_EPS, device=device, dtype=dtype)
        self.fc1 = nn.Linear(in_dim, hidden_dim, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden_dim, mid_dim, device=device, dtype=dtype)
        self.fc3 = nn.Linear(mid_dim, out_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, norm_dtype: torch.dtype) -> Tensor:
        x = self.fc1(self.layernorm(x, norm_dtype))
        return self.fc3(F.gelu(self.fc2(F.gelu(x))))


class VisionProjection(nn.Module):
    """``vision_in``: LayerNorm -> Linear -> GELU -> Linear -> LayerNorm, SigLIP features to the hidden size (the
    module indices 0, 1, 3, 4 of ComfyUI's ``nn.Sequential``; 2 is the GELU)."""

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({
            "0": LayerNorm(in_dim, TORCH_LAYERNORM_EPS, device=device, dtype=dtype),
            "1": nn.Linear(in_dim, in_dim, device=device, dtype=dtype),
            "3": nn.Linear(in_dim, out_dim, device=device, dtype=dtype),
            "4": LayerNorm(out_dim, TORCH_LAYERNORM_EPS, device=device, dtype=dtype),
        })

    def forward(self, x: Tensor, norm_dtype: torch.dtype) -> Tensor:
        p = self.proj
        return p["4"](p["3"](F.gelu(p["1"](p["0"](x, norm_dtype)))), norm_dtype)


def add_cond_type(x: Tensor, embedding: nn.Embedding | None, kind: int) -> Tensor:
    """``x + embedding[kind]`` over every token (no-op without the embedding)."""
    if embedding is None:
        return x
    return x + embedding.weight[kind].to(x.dtype)


def meanflow_target(transformer_options: dict, batch: int) -> Tensor | None:
    """The sigma the step-distilled model jumps to: the sampler's next sigma after the current one, ``[batch]``.

    ComfyUI's samplers put the current ``sigmas`` and the whole schedule ``sample_sigmas`` in ``transformer_options``;
    None when the current sigma is not on the schedule (e.g. a sampler's intermediate evaluation).
    """
    sigmas, schedule = transformer_options.get("sigmas"), transformer_options.get("sample_sigmas")
    if sigmas is None or schedule is None:
        raise ValueError("this step-distilled (meanflow) model needs the sampler's sigmas: transformer_options "
                         "['sigmas'] (the current one) and ['sample_sigmas'] (the schedule), as ComfyUI's samplers "
                         "set them; or pass disable_time_r=True to run it without its time_r target")
    current = sigmas.reshape(-1)[0]
    schedule = schedule.reshape(-1)
    at = torch.nonzero(schedule == current.to(schedule.device, schedule.dtype)).flatten()
    if at.numel() == 0 or int(at[0]) + 1 >= schedule.numel():
        return None
    return schedule[int(at[0]) + 1].reshape(1).expand(batch)


__all__ = ["ByT5Mapper", "VisionProjection", "add_cond_type", "meanflow_target", "TEXT", "BYT5", "VISION"]
