"""Precision policy node: a preset plus per-group overrides, or a pasted policy JSON, and the hybrid step counts.

The node's output travels as the custom type ``HYVIDEO_FP8_POLICY`` (a :class:`NodePolicy`); the effective policy
JSON is also returned as a STRING so it can be shown or saved, and every choice is a widget, so the whole policy is
stored in the workflow JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..fp8.formats import MODE_NAMES
from ..fp8.policy import PrecisionPolicy, Rule
from ..hunyuan.policies import DEFAULT_PRESET, FAST_ACCUM_MAX_K, LINEAR_GROUPS, PRESETS

CATEGORY = "HunyuanVideo FP8"
POLICY_TYPE = "HYVIDEO_FP8_POLICY"
KEEP = "preset"
FAST_ACCUMULATION = {"on": FAST_ACCUM_MAX_K, "off": 0}  # -> PrecisionPolicy.fast_accum_max_k; KEEP: the preset's

# Override groups: widget name -> module globs (ComfyUI internal names) it sets.
GROUPS = LINEAR_GROUPS
_GROUP_HELP = {
    "attention_linears": "q/k/v and output projections of the 20 double-stream blocks",
    "mlp_linears": "MLP linears of the 20 double-stream blocks",
    "single_block_linears": "fused linear1/linear2 of the 40 single-stream blocks",
    "modulation_linears": "adaLN modulation linears (a quarter of the weights, negligible FLOPs; sensitive)",
}
_MODE_HELP = ("fp8 = W8A8 FP8 matmul (Ada/Hopper); fp8-weight-only = FP8 storage, bf16 matmul (any GPU); "
              "bf16/fp32 = high precision; 'preset' keeps the preset's choice.")


@dataclass(frozen=True)
class NodePolicy:
    """What flows along a HYVIDEO_FP8_POLICY link: the layer policy and the hybrid step counts."""

    policy: PrecisionPolicy
    hybrid_first_steps: int = 0
    hybrid_last_steps: int = 0

    @property
    def hybrid(self) -> tuple[int, int]:
        return (self.hybrid_first_steps, self.hybrid_last_steps)

    def to_json(self) -> str:
        return json.dumps({"policy": self.policy.to_dict(), "hybrid_steps": list(self.hybrid)}, indent=2)


def build_policy(
    preset: str,
    attention: str = KEEP,
    boundary_blocks: int = -1,
    policy_json: str = "",
    fast_accumulation: str = KEEP,
    **group_modes: str,
) -> PrecisionPolicy:
    """The preset (or ``policy_json`` when given) with the group overrides applied on top (first rule wins)."""
    if fast_accumulation not in (KEEP, *FAST_ACCUMULATION):
        raise ValueError(f"fast_accumulation is {fast_accumulation!r}; allowed: {[KEEP, *FAST_ACCUMULATION]}")
    unknown = sorted(set(group_modes) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown override group(s) {unknown}; known: {list(GROUPS)}")
    if policy_json.strip():
        try:
            base = PrecisionPolicy.from_json(policy_json)
        except ValueError as e:
            raise ValueError(f"policy_json: {e}. Clear the policy_json box to use the preset instead.") from None
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown precision preset {preset!r}; valid presets: {list(PRESETS)}")
        base = PRESETS[preset]
    rules: list[Rule] = []
    for group, mode in group_modes.items():
        if mode == KEEP:
            continue
        if mode not in MODE_NAMES:
            raise ValueError(f"{group}: {mode!r} is not a compute mode; allowed: {[KEEP, *MODE_NAMES]}")
        rules += [Rule(p, mode) for p in GROUPS[group]]
    changes: dict = {}
    if rules:
        changes["rules"] = tuple(rules) + base.rules
    if attention != KEEP:
        changes["attention"] = attention
    if boundary_blocks >= 0:
        changes["high_precision_boundary_blocks"] = boundary_blocks
    if fast_accumulation != KEEP:
        changes["fast_accum_max_k"] = FAST_ACCUMULATION[fast_accumulation]
    if changes:
        changes["name"] = f"{base.name}+overrides"
        return base.with_overrides(**changes)
    return base


class HyVideoFP8Policy:
    """ComfyUI node: build a precision policy from a preset and overrides."""

    DESCRIPTION = ("Chooses which parts of HunyuanVideo compute in FP8. Start from a preset, override groups of "
                   "layers, or paste a full policy JSON. Connect to the loader's 'policy' input.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (POLICY_TYPE, "STRING")
    RETURN_NAMES = ("policy", "policy_json")
    OUTPUT_TOOLTIPS = ("The precision policy (for the HunyuanVideo FP8 loader).",
                       "The effective policy as JSON (to inspect, or paste into policy_json / save as a file).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        modes = [KEEP, *MODE_NAMES]
        required = {
            "preset": (list(PRESETS), {"default": DEFAULT_PRESET, "tooltip": "Starting point. " + "; ".join(
                f"{name}: {p.description}" for name, p in PRESETS.items())}),
            "attention": ([KEEP, "sdpa", "fp8"], {"default": KEEP, "tooltip": (
                "Attention kernel: sdpa = PyTorch bf16 attention, fp8 = FP8 attention (the big speed lever at 720p); "
                "'preset' keeps the preset's choice. The preset's per-block exceptions (boundary blocks, the "
                "token refiner in fp8-balanced) stay.")}),
        }
        for group in GROUPS:
            required[group] = (modes, {"default": KEEP, "tooltip": f"{_GROUP_HELP[group]}. {_MODE_HELP}"})
        required["boundary_blocks"] = ("INT", {"default": -1, "min": -1, "max": 30, "tooltip": (
            "Run the first and last N transformer blocks entirely in high precision with sdpa attention "
            "(they are the most error-sensitive). -1 keeps the preset's value.")})
        required["hybrid_first_steps"] = ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": (
            "Run this many first sampling steps with high-precision compute on the same FP8 weights (no reload). "
            "Applies to native samplers (KSampler, SamplerCustomAdvanced) and, unless overridden, to our sampler.")})
        required["hybrid_last_steps"] = ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": (
            "Run this many last sampling steps with high-precision compute (fine detail is decided there).")})
        required["policy_json"] = ("STRING", {"default": "", "multiline": True, "tooltip": (
            "Optional full policy JSON (as output by this node or 'python tools.py'). When not empty it replaces "
            "the preset; the overrides above still apply on top.")})
        # Optional, so workflow files saved before this widget existed still load with the preset's choice.
        optional = {"fast_accumulation": ([KEEP, *FAST_ACCUMULATION], {"default": KEEP, "tooltip": (
            "FP8 GEMMs accumulate in the tensor cores' fast, reduced-precision accumulator instead of promoting to "
            "fp32: faster GEMMs for a small extra error, well below the FP8 rounding itself. "
            "'preset' keeps the preset's choice (on for fp8-balanced and fp8-max).")})}
        return {"required": required, "optional": optional}

    def build(self, preset: str, attention: str, boundary_blocks: int, hybrid_first_steps: int,
              hybrid_last_steps: int, policy_json: str = "", fast_accumulation: str = KEEP,
              **group_modes: str) -> tuple[NodePolicy, str]:
        policy = build_policy(preset, attention, boundary_blocks, policy_json, fast_accumulation, **group_modes)
        node_policy = NodePolicy(policy, hybrid_first_steps, hybrid_last_steps)
        return (node_policy, node_policy.to_json())
