"""Loader node: a HunyuanVideo checkpoint from ComfyUI's ``diffusion_models`` folder, in FP8 under a policy, as a
native ``MODEL`` (drivable by KSampler / SamplerCustomAdvanced / ModelSamplingSD3 / FluxGuidance and by our sampler).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ..fp8.formats import HIGH_PRECISION_DTYPES, ComputeMode
from ..fp8.hardware import fp8_compute_support
from ..fp8.policy import PrecisionPolicy
from ..hunyuan.config import HunyuanConfig
from ..hunyuan.plan import kernel_plan
from ..hunyuan.policies import DEFAULT_PRESET, PRESETS
from .model_files import diffusion_model_files
from .model_patcher import BLOCK_SWAP_MODES, parse_block_swap
from .policy import CATEGORY, POLICY_TYPE, NodePolicy

logger = logging.getLogger("hyvideo_fp8")


def uses_fp8_compute(policy: PrecisionPolicy) -> bool:
    """Whether any layer or the attention of ``policy`` needs FP8 tensor cores."""
    modes = [policy.default_mode, *(r.mode for r in policy.rules)]
    return ComputeMode.FP8 in modes or policy.attention == "fp8"


def check_device(policy: PrecisionPolicy, device: torch.device) -> None:
    """Refuse an FP8-compute policy on a device without FP8 matmuls, naming the way out."""
    if not uses_fp8_compute(policy):
        return
    ok, reason = fp8_compute_support(device)
    if not ok:
        raise RuntimeError(f"precision policy '{policy.name}' computes in FP8, but {reason}.")


def resolve_node_policy(preset: str, policy: Optional[NodePolicy]) -> NodePolicy:
    """The connected policy if any, else the preset widget's."""
    if policy is not None:
        if not isinstance(policy, NodePolicy):
            raise ValueError(f"the 'policy' input must come from the HunyuanVideo FP8 Policy node, got "
                             f"{type(policy).__name__}")
        return policy
    if preset not in PRESETS:
        raise ValueError(f"unknown precision preset {preset!r}; valid presets: {list(PRESETS)}")
    return NodePolicy(PRESETS[preset])


def load_model_file(path: str, node_policy: NodePolicy, load_device: torch.device, build_device: torch.device,
                    check_config: Optional[Callable[[HunyuanConfig], object]] = None):
    """Read, detect and build the transformer; returns (transformer, config, info). ComfyUI-free for direct tests.

    ``check_config`` sees the detected config before any weight is read (the host refuses a variant it cannot run
    there, not after the whole model was built)."""
    from ..hunyuan.checkpoint.canonical import open_canonical
    from ..hunyuan.loader import load_transformer

    policy = node_policy.policy
    check_device(policy, load_device)
    with open_canonical(path) as ckpt:  # streamed: the model plus one tensor in memory, never the whole file
        info, cfg = ckpt.info, ckpt.info.config
        if check_config is not None:
            check_config(cfg)
        transformer = load_transformer(ckpt.lazy_state_dict(), policy, build_device, config=cfg, consume=True)
    return transformer, cfg, info


class HyVideoFP8Loader:
    """ComfyUI node: load a HunyuanVideo diffusion model with FP8 compute."""

    DESCRIPTION = ("Loads a HunyuanVideo diffusion model (v1 text-to-video, HunyuanVideo-I2V, SkyReels I2V, or "
                   "HunyuanVideo 1.5 incl. step-distilled and super-resolution, told apart from the file; Tencent, "
                   "ComfyUI or diffusers names, .pt or safetensors, with or without fp8_map, scaled-FP8, comfy_quant "
                   "or our FP8 files) and runs it with real FP8 compute under a precision policy. Use it in place of "
                   "'Load Diffusion Model' (UNETLoader): ComfyUI's own conditioning nodes for the model apply.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A native ComfyUI HunyuanVideo MODEL: works with KSampler, SamplerCustomAdvanced, "
                       "ModelSamplingSD3, FluxGuidance and the HunyuanVideo FP8 Sampler.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (diffusion_model_files(), {"tooltip": (
                    "A HunyuanVideo transformer file from models/diffusion_models (or models/unet).")}),
                "preset": (list(PRESETS), {"default": DEFAULT_PRESET, "tooltip": (
                    "Precision preset, used when no policy is connected. " + "; ".join(
                        f"{name}: {p.description}" for name, p in PRESETS.items()))}),
            },
            "optional": {
                "policy": (POLICY_TYPE, {"tooltip": (
                    "A policy from the 'HunyuanVideo FP8 Precision Policy' node; overrides the preset widget and "
                    "sets the hybrid high-precision steps.")}),
                "block_swap": (list(BLOCK_SWAP_MODES), {"default": "auto", "tooltip": (
                    "When the model does not fit beside the video being sampled: auto keeps as many transformer "
                    "blocks on the GPU as ComfyUI's memory management can give it and streams the rest from pinned "
                    "host memory (slower, not out of memory); fixed keeps resident_blocks blocks on the GPU; off "
                    "loads the whole model (may run out of memory on small cards). One log line says what it chose.")}),
                "resident_blocks": ("INT", {"default": 40, "min": 0, "max": 1000, "tooltip": (
                    "With block_swap fixed: how many blocks (double, then single, in execution order) stay on the "
                    "GPU; the rest stream.")}),
            },
        }

    def load(self, model_name: str, preset: str, policy: Optional[NodePolicy] = None, block_swap: str = "auto",
             resident_blocks: int = 40) -> tuple:
        import comfy.model_management as mm
        import folder_paths

        from .comfy_model import comfy_model_config, wrap_transformer

        node_policy = resolve_node_policy(preset, policy)
        swap = parse_block_swap(block_swap, resident_blocks)
        path = folder_paths.get_full_path_or_raise("diffusion_models", model_name)
        dtype = HIGH_PRECISION_DTYPES[node_policy.policy.compute_dtype]
        transformer, cfg, info = load_model_file(path, node_policy, mm.get_torch_device(), mm.unet_offload_device(),
                                                 check_config=lambda c: comfy_model_config(c, dtype))
        # which kernel runs each part on the GPU it will sample on: decided and logged once, at load
        kernel_plan(transformer, mm.get_torch_device(), dtype)
        model = wrap_transformer(transformer, cfg, node_policy.policy.compute_dtype, node_policy.hybrid,
                                 info={"policy": node_policy.policy.to_dict(), "file": model_name}, block_swap=swap)
        logger.info("[hyvideo_fp8] loaded %s (%s) under policy '%s' (hybrid steps %s)", model_name, cfg.describe(),
                    node_policy.policy.name, node_policy.hybrid)
        return (model,)
