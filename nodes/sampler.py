"""Sampler node: our flow-matching Euler sampler with the hybrid precision schedule, on a MODEL from our loader."""

from __future__ import annotations

from typing import Any

import torch

from ..hunyuan.sampler import TextCondition, initial_noise, sample
from . import widgets
from .comfy_model import PACK_KEY, our_transformer
from .policy import CATEGORY


def text_condition(conditioning: Any, batch: int, which: str = "positive") -> TextCondition:
    """ComfyUI CONDITIONING ``[[tokens [B, L, 4096], {"pooled_output": [B, 768], "attention_mask"?}]]`` -> ours."""
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise ValueError(f"{which} conditioning is empty: connect a text encoder (CLIPTextEncode with a "
                         "DualCLIPLoader of type hunyuan_video)")
    if len(conditioning) > 1:
        raise ValueError(f"{which} conditioning has {len(conditioning)} entries (combined prompts); this sampler "
                         "takes one prompt: use ConditioningConcat or KSampler for combined/area prompts")
    tokens, extras = conditioning[0][0], conditioning[0][1]
    pooled = extras.get("pooled_output")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or pooled is None:
        raise ValueError(f"{which} conditioning is not HunyuanVideo text conditioning (needs token states "
                         "[B, L, 4096] and a pooled CLIP-L output): encode with DualCLIPLoader type hunyuan_video")
    mask = extras.get("attention_mask")
    if tokens.shape[0] != batch:
        if tokens.shape[0] != 1:
            raise ValueError(f"{which} conditioning batch {tokens.shape[0]} does not match the latent batch {batch}")
        tokens, pooled = tokens.expand(batch, -1, -1), pooled.expand(batch, -1)
        mask = mask.expand(batch, -1) if mask is not None else None
    return TextCondition(tokens, pooled, mask)


def check_latent(samples: torch.Tensor, in_channels: int, patch_size: tuple[int, int, int]) -> None:
    """Reject latents the transformer cannot take, in video terms the user set."""
    if samples.dim() != 5:
        raise ValueError(f"latent has shape {tuple(samples.shape)}; HunyuanVideo needs a video latent "
                         "[batch, 16, frames, height/8, width/8] from 'EmptyHunyuanLatentVideo'")
    if samples.shape[1] != in_channels:
        raise ValueError(f"latent has {samples.shape[1]} channels, the model takes {in_channels}: use "
                         "'EmptyHunyuanLatentVideo' (16 channels)")
    _, ph, pw = patch_size
    if samples.shape[3] % ph or samples.shape[4] % pw:
        raise ValueError(f"video size {samples.shape[4] * 8}x{samples.shape[3] * 8} is not a multiple of "
                         f"{8 * pw}x{8 * ph}: pick a width and height divisible by 16")


class HyVideoFP8Sampler:
    """ComfyUI node: sample a video latent with the hybrid FP8/high-precision schedule."""

    DESCRIPTION = ("Flow-matching Euler sampler of the released HunyuanVideo (shift, embedded guidance, optional "
                   "true CFG) with a hybrid schedule: the first and last steps in high precision, the rest in FP8, "
                   "on the same weights. Needs a MODEL from the HunyuanVideo FP8 Loader.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised video latent (decode with VAEDecode or VAEDecodeTiled).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model from the HunyuanVideo FP8 Loader."}),
                "positive": widgets.positive(),
                "latent": ("LATENT", {"tooltip": (
                    "From EmptyHunyuanLatentVideo: sets frames, size and batch. Sampling starts from pure noise.")}),
                "seed": widgets.seed("Noise seed; the noise is drawn on the CPU, so a seed gives the same video on any "
                                     "GPU (and the same noise as KSampler).", control_after_generate=True),
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000, "tooltip": (
                    "Denoising steps (the official scripts use 50, ComfyUI's template 20).")}),
                "shift": widgets.shift("Flow time shift; 7.0 for the released model. Lower (2-5) for small videos."),
                "guidance": widgets.guidance("Embedded guidance scale (6.0 default; replaces FluxGuidance)."),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 100.0, "step": 0.1, "tooltip": (
                    "True classifier-free guidance with the negative prompt. 1 = off (the released model relies "
                    "on embedded guidance); above 1 doubles the cost of each step.")}),
                "hybrid_first_steps": ("INT", {"default": -1, "min": -1, "max": 1000, "tooltip": (
                    "First steps computed in high precision on the same FP8 weights. -1 = as set on the "
                    "loader's policy (0 without a policy).")}),
                "hybrid_last_steps": ("INT", {"default": -1, "min": -1, "max": 1000, "tooltip": (
                    "Last steps computed in high precision. -1 = as set on the loader's policy.")}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt, used only when cfg > 1."}),
            },
        }

    def run(self, model, positive, latent: dict, seed: int, steps: int, shift: float, guidance: float, cfg: float,
            hybrid_first_steps: int, hybrid_last_steps: int, negative=None) -> tuple[dict]:
        import comfy.model_management as mm
        import latent_preview

        transformer = our_transformer(model)
        if transformer.config.variant != "v1":
            raise ValueError(f"the HunyuanVideo FP8 Sampler runs v1 text-to-video models and this MODEL is "
                             f"{transformer.config.describe()}: sample it with KSampler or SamplerCustomAdvanced and "
                             "ComfyUI's own conditioning nodes for it (the loader's MODEL works there)")
        samples = latent["samples"]
        pack = model.model_options.get(PACK_KEY, {})
        check_latent(samples, pack["config"]["in_channels"], tuple(pack["config"]["patch_size"]))
        if cfg > 1.0 and negative is None:
            raise ValueError(f"cfg is {cfg} but no negative prompt is connected: connect one or set cfg to 1")
        policy_hybrid = pack.get("hybrid", (0, 0))
        hybrid = (policy_hybrid[0] if hybrid_first_steps < 0 else hybrid_first_steps,
                  policy_hybrid[1] if hybrid_last_steps < 0 else hybrid_last_steps)
        batch = samples.shape[0]
        pos = text_condition(positive, batch)
        neg = text_condition(negative, batch, "negative") if negative is not None and cfg > 1.0 else None

        mm.load_models_gpu([model])
        device = model.load_device
        preview = latent_preview.prepare_callback(model, steps)

        def on_step(step: int, total: int, x0: torch.Tensor) -> None:
            mm.throw_exception_if_processing_interrupted()
            preview(step, x0, None, total)

        noise = initial_noise(samples.shape, seed)
        out = sample(transformer, noise.to(device), pos.context, pos.y, attention_mask=pos.attention_mask,
                     steps=steps, shift=shift, guidance=guidance, cfg=cfg, negative=neg, hybrid=hybrid,
                     callback=on_step, device=device)
        out = model.model.process_latent_out(out.to(mm.intermediate_device()))
        return ({"samples": out},)
