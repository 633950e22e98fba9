"""Converter node: write an FP8 copy of a HunyuanVideo checkpoint into ComfyUI's ``diffusion_models`` folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from ..hunyuan.checkpoint.comfy_compat import loaders_note
from ..hunyuan.checkpoint.writer import OUTPUT_FORMATS
from ..hunyuan.policies import PRESETS
from .loader import resolve_node_policy
from .model_files import diffusion_model_files
from .policy import CATEGORY, POLICY_TYPE, NodePolicy

logger = logging.getLogger("hyvideo_fp8")


def output_path(folder: str, output_name: str) -> Path:
    """``folder/output_name.safetensors``; the name must be a plain file name (no folders, no traversal)."""
    name = output_name.strip()
    if not name or name in (".", "..") or os.sep in name or "/" in name or (os.altsep and os.altsep in name):
        raise ValueError(f"output_name {output_name!r} must be a plain file name such as "
                         "'hunyuan_video_t2v_720p_fp8.safetensors'")
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    return Path(folder) / name


def convert_file(src: str, dst: Path, node_policy: NodePolicy, output_format: str, overwrite: bool,
                 progress=None) -> str:
    """Run the streaming converter; returns its one-line summary. ComfyUI-free for direct tests."""
    from ..hunyuan.checkpoint.convert import convert_checkpoint

    if Path(src).resolve() == dst.resolve():
        raise ValueError(f"output {dst.name} is the source file: choose another output_name")
    report = convert_checkpoint(src, dst, node_policy.policy, output_format=output_format, overwrite=overwrite,
                                progress=progress)
    return report.summary()


class HyVideoFP8Converter:
    """ComfyUI node: convert a checkpoint to FP8 once, so later loads read half the bytes and skip quantization."""

    DESCRIPTION = ("Writes an FP8 copy of a HunyuanVideo checkpoint (any supported layout) into "
                   "models/diffusion_models under a precision policy. Linears the policy keeps in high precision "
                   "stay bf16. Load the result with the HunyuanVideo FP8 Loader; the scaled_fp8 and comfy_quant "
                   "layouts also load in ComfyUI's own Load Diffusion Model, as the summary says for each version.")
    CATEGORY = CATEGORY
    FUNCTION = "convert"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    OUTPUT_TOOLTIPS = ("What was written: layer counts, size, worst per-layer weight error.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (diffusion_model_files(), {"tooltip": (
                    "The source HunyuanVideo checkpoint (bf16, Tencent .pt, diffusers or another FP8 file).")}),
                "output_name": ("STRING", {"default": "hunyuan_video_t2v_720p_fp8.safetensors", "tooltip": (
                    "File name to write in the first diffusion_models folder (.safetensors is added if missing).")}),
                "preset": (list(PRESETS), {"default": "fp8-balanced", "tooltip": (
                    "Which linears to store in FP8, when no policy is connected.")}),
                "output_format": (list(OUTPUT_FORMATS), {"default": OUTPUT_FORMATS[0], "tooltip": (
                    "ours: per-output-channel scales (best accuracy). comfy_quant: per-tensor scales, ComfyUI's "
                    "mixed-precision layout. scaled_fp8: ComfyUI's legacy per-tensor layout (every linear in FP8). "
                    + " ".join(f"A {fmt} file {loaders_note(fmt)}." for fmt in OUTPUT_FORMATS))}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": (
                    "Replace an existing file of the same name (it is only replaced after a successful write).")}),
            },
            "optional": {
                "policy": (POLICY_TYPE, {"tooltip": "A policy from the Precision Policy node; overrides the preset."}),
            },
        }

    def convert(self, model_name: str, output_name: str, preset: str, output_format: str, overwrite: bool,
                policy: Optional[NodePolicy] = None) -> dict:
        import comfy.utils
        import folder_paths

        node_policy = resolve_node_policy(preset, policy)
        src = folder_paths.get_full_path_or_raise("diffusion_models", model_name)
        dst = output_path(folder_paths.get_folder_paths("diffusion_models")[0], output_name)
        bar = comfy.utils.ProgressBar(1)
        summary = convert_file(src, dst, node_policy, output_format, overwrite,
                               progress=lambda done, total: bar.update_absolute(done, total))
        logger.info("[hyvideo_fp8] %s", summary)
        return {"ui": {"text": [summary]}, "result": (summary,)}
