"""HunyuanVideo precision presets, as ``PrecisionPolicy`` objects over ComfyUI's internal module names.

Linear layers of the transformer (ComfyUI names): ``double_blocks.{i}.{img,txt}_{mod.lin, attn.qkv, attn.proj,
mlp.0, mlp.2}``, ``single_blocks.{i}.{linear1, linear2, modulation.lin}``, ``txt_in.*`` (embedders and the token
refiner), ``time_in.*``, ``guidance_in.*``, ``vector_in.*``, ``final_layer.{linear, adaLN_modulation.1}``.
``img_in.proj`` is a Conv3d and never quantized. The node's override groups (``LINEAR_GROUPS``) and the presets'
rules use the same globs, defined here once. Error budgets are the accepted relative L2 error of one denoising
step's output against the bf16 preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..fp8.formats import ComputeMode
from ..fp8.policy import AttentionRule, PrecisionPolicy, Rule
from ..fp8.policy import load_policy as _load_policy

__all__ = ["PRESETS", "DEFAULT_PRESET", "get_preset", "load_policy", "BLOCK_LINEARS", "MODULATION_LINEARS",
           "LINEAR_GROUPS", "REFINER_BLOCKS", "FAST_ACCUM_MAX_K"]

FP8, WEIGHT_ONLY = ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY

# Groups of linears a user may switch together (the policy node's override widgets).
LINEAR_GROUPS: dict[str, tuple[str, ...]] = {
    "attention_linears": tuple(f"double_blocks.*.{s}_attn.{n}" for s in ("img", "txt") for n in ("qkv", "proj")),
    "mlp_linears": tuple(f"double_blocks.*.{s}_mlp.{n}" for s in ("img", "txt") for n in ("0", "2")),
    "single_block_linears": ("single_blocks.*.linear1", "single_blocks.*.linear2"),
    # applied to one conditioning vector per sample: a quarter of the weights, negligible FLOPs
    "modulation_linears": ("double_blocks.*.img_mod.lin", "double_blocks.*.txt_mod.lin",
                           "single_blocks.*.modulation.lin"),
}
# The linears that carry essentially all of the transformer's FLOPs.
BLOCK_LINEARS: tuple[str, ...] = (LINEAR_GROUPS["attention_linears"] + LINEAR_GROUPS["mlp_linears"]
                                  + LINEAR_GROUPS["single_block_linears"])
MODULATION_LINEARS: tuple[str, ...] = LINEAR_GROUPS["modulation_linears"]
# The token refiner's blocks: attention over the text alone (a few hundred tokens), where FP8 has no time to gain.
REFINER_BLOCKS = "txt_in.*"

# Error budgets: the worst one-step relative L2 error against bf16 that bench/bench_quality.py measured on the full
# 13B config with random weights (bench/results/quality-2026-11-29-h200), rounded up; HunyuanVideo 1.5's come the same
# way from its full 8.3B config (bench/results/quality-15-2026-12-06-h100-80gb-hbm3). Random weights amplify rounding
# through 54-60 blocks far more than trained ones, so these are upper bounds to re-measure on real checkpoints with
# `tools.py quality`.
# Fast FP8 accumulation covers every linear of HunyuanVideo (the largest K is single_blocks.*.linear2's 15,360); its
# speed and its extra error next to the FP8 rounding are in bench/results/linear-2026-11-29-h200-interleaved.md.
FAST_ACCUM_MAX_K = 15360

PRESETS: dict[str, PrecisionPolicy] = {
    p.name: p
    for p in (
        PrecisionPolicy(
            name="bf16",
            description="Reference: every linear in bf16, SDPA attention, norms and softmax in fp32.",
            default_mode=ComputeMode.BF16,
            attention="sdpa",
            error_budget=0.0,
        ),
        PrecisionPolicy(
            name="fp8-weight-only",
            description="FP8 storage of all block linears incl. modulation (like the official FP8 release), "
                        "bf16 compute: about half the memory, no speed-up; works on any GPU.",
            rules=tuple(Rule(p, WEIGHT_ONLY) for p in ("double_blocks.*", "single_blocks.*")),
            default_mode=ComputeMode.BF16,
            attention="sdpa",
            error_budget=0.14,
            error_budgets={"1.5": 0.12},
        ),
        PrecisionPolicy(
            name="fp8-balanced",
            description="W8A8 FP8 on the attention and MLP block linears (per-token activations), FP8 attention; "
                        "modulation, embedders (1.5: byT5 mapper, vision projection, time_r too), token refiner "
                        "(attention included) and final layer in bf16; first and last block in bf16.",
            rules=tuple(Rule(p, FP8) for p in BLOCK_LINEARS),
            default_mode=ComputeMode.BF16,
            attention="fp8",
            attention_rules=(AttentionRule(REFINER_BLOCKS, "sdpa"),),
            high_precision_boundary_blocks=1,
            error_budget=0.12,
            error_budgets={"1.5": 0.11},
            fast_accum_max_k=FAST_ACCUM_MAX_K,
        ),
        PrecisionPolicy(
            name="fp8-max",
            description="Every linear in W8A8 FP8 incl. modulation, embedders and token refiner, FP8 attention "
                        "everywhere; layers whose shapes FP8 GEMMs cannot take fall back to weight-only (reported).",
            default_mode=FP8,
            attention="fp8",
            error_budget=0.22,
            error_budgets={"1.5": 0.18},
            fast_accum_max_k=FAST_ACCUM_MAX_K,
        ),
    )
}

DEFAULT_PRESET = "fp8-balanced"


def get_preset(name: str) -> PrecisionPolicy:
    """The preset called ``name``; the error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown precision preset {name!r}; valid presets: {list(PRESETS)}") from None


def load_policy(source: PrecisionPolicy | Mapping[str, Any] | str | Path) -> PrecisionPolicy:
    """A policy from a preset name, a JSON string, a JSON file, a dict or a policy object."""
    return _load_policy(source, PRESETS)
