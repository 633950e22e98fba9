"""Sampler node: our flow-matching Euler sampler with the hybrid precision schedule, on a MODEL from our loader.

The CONDITIONING becomes the transformer's inputs through the MODEL itself: our loader's MODEL is ComfyUI's own
``model_base`` class for the file (``HunyuanVideo``, ``HunyuanVideoI2V``, ``HunyuanVideo15``...), and its
``extra_conds`` gives the text states, pooled vector, mask, the image-to-video channels (``c_concat``), 1.5's byT5 and
vision states, the guiding frame and the reference latent exactly as ComfyUI's samplers get them. What this sampler
cannot apply (areas, masks, ControlNet, hooks, timestep ranges, a latent's batch index) is refused by name. A latent's
noise mask (HunyuanImageToVideo's "v2 (replace)" start frames) is applied as ComfyUI's samplers apply it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..hunyuan.config import HunyuanConfig
from ..hunyuan.sampler import TextCondition, initial_noise, sample
from . import widgets
from .comfy_model import PACK_KEY, our_transformer
from .policy import CATEGORY

# Conditioning entries the HunyuanVideo family's ``extra_conds`` turns into model inputs: the text encoders' pooled
# vector, mask and byT5 states, FluxGuidance's guidance, the image-to-video nodes' image latent, mask, vision states,
# guiding frame and reference latent, the super-resolution node's noise augmentation.
MODEL_CONDITIONING = frozenset({
    "pooled_output", "attention_mask", "conditioning_byt5small", "guidance", "concat_latent_image", "concat_mask",
    "clip_vision_output", "guiding_frame_index", "ref_latent", "noise_augmentation",
})
# What ``extra_conds`` gives besides the text, pooled vector, mask, guidance and image channels: transformer keywords.
TRANSFORMER_KEYWORDS = frozenset({"txt_byt5", "clip_fea", "guiding_frame_index", "ref_latent", "disable_time_r"})
# Latent entries this sampler applies: the tensor, what describes it (ComfyUI's empty-latent nodes set that) and a
# noise mask (the latent stays where it is 0); anything else is refused.
LATENT_ENTRIES = frozenset({"samples", "downscale_ratio_spacial", "downscale_ratio_temporal", "noise_mask"})
# The empty-latent and image-to-video nodes that make a family member's latent, by the VAE's spatial compression.
LATENT_NODES = {8: "'EmptyHunyuanLatentVideo' or 'HunyuanImageToVideo'",
                16: "'EmptyHunyuanVideo15Latent' or 'HunyuanVideo15ImageToVideo'"}
ENCODERS = "DualCLIPLoader type hunyuan_video for v1, hunyuan_video_15 for 1.5"
SAMPLER_NODE = "HunyuanVideo FP8 Sampler"


def _single_entry(conditioning: Any, which: str) -> tuple[torch.Tensor, dict]:
    """The one ``[tokens, extras]`` entry of a CONDITIONING (combined or area prompts are refused)."""
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise ValueError(f"{which} conditioning is empty: connect a text encoder (CLIPTextEncode with a "
                         f"{ENCODERS})")
    if len(conditioning) > 1:
        raise ValueError(f"{which} conditioning has {len(conditioning)} entries (combined prompts); this sampler "
                         "takes one prompt: use ConditioningConcat or KSampler for combined/area prompts")
    tokens, extras = conditioning[0][0], conditioning[0][1]
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or "pooled_output" not in extras:
        raise ValueError(f"{which} conditioning is not HunyuanVideo text conditioning (needs token states "
                         f"[B, L, dim] and the encoder's pooled output entry): encode with CLIPTextEncode and a "
                         f"{ENCODERS}")
    return tokens, extras


def text_condition(conditioning: Any, batch: int, which: str = "positive") -> TextCondition:
    """ComfyUI CONDITIONING ``[[tokens [B, L, 4096], {"pooled_output": [B, 768], "attention_mask"?}]]`` -> ours."""
    tokens, extras = _single_entry(conditioning, which)
    pooled = extras["pooled_output"]
    if pooled is None:
        raise ValueError(f"{which} conditioning is not HunyuanVideo text conditioning (needs token states "
                         "[B, L, 4096] and a pooled CLIP-L output): encode with DualCLIPLoader type hunyuan_video")
    mask = extras.get("attention_mask")
    if tokens.shape[0] != batch:
        if tokens.shape[0] != 1:
            raise ValueError(f"{which} conditioning batch {tokens.shape[0]} does not match the latent batch {batch}")
        tokens, pooled = tokens.expand(batch, -1, -1), pooled.expand(batch, -1)
        mask = mask.expand(batch, -1) if mask is not None else None
    return TextCondition(tokens, pooled, mask)


@dataclass(frozen=True)
class ModelConditioning:
    """One prompt as the transformer takes it: the text, the image-conditioning channels (None: the model has none)
    and further keyword inputs."""

    text: TextCondition
    image_channels: Optional[torch.Tensor]
    inputs: dict[str, Any]


def model_conditioning(model, cfg: HunyuanConfig, conditioning: Any, noise: torch.Tensor,
                       latent_image: torch.Tensor, denoise_mask: Optional[torch.Tensor], seed: int, guidance: float,
                       which: str = "positive") -> ModelConditioning:
    """A CONDITIONING through the MODEL's own ``extra_conds`` (called with the entries, noise, device, latent, denoise
    mask and seed as ComfyUI's samplers call it), at the latent's batch; entries and inputs this sampler cannot apply
    are refused.
    ``guidance`` is the node's embedded guidance, which a guidance set on the conditioning must agree with."""
    tokens, extras = _single_entry(conditioning, which)
    batch = noise.shape[0]
    unknown = sorted(set(extras) - MODEL_CONDITIONING)
    if unknown:
        raise ValueError(f"{which} conditioning carries {', '.join(map(repr, unknown))}, which the HunyuanVideo FP8 "
                         "Sampler does not apply (it takes one prompt from the text encoder and the HunyuanVideo "
                         "image-to-video nodes): sample with KSampler or SamplerCustomAdvanced")
    if cfg.guidance_embed and "guidance" in extras and (
            extras["guidance"] is None or float(extras["guidance"]) != float(guidance)):
        raise ValueError(f"the {which} conditioning sets guidance {extras['guidance']} (FluxGuidance) and the "
                         f"sampler's guidance widget is {guidance}: the widget is the embedded guidance here; set it "
                         "and remove FluxGuidance")
    if tokens.shape[0] not in (1, batch):
        raise ValueError(f"{which} conditioning batch {tokens.shape[0]} does not match the latent batch {batch}")
    if tokens.shape[2] != cfg.context_in_dim:
        raise ValueError(f"{which} conditioning has {tokens.shape[2]}-wide token states and this model "
                         f"({cfg.describe()}) takes {cfg.context_in_dim}: encode the prompt with this model's text "
                         f"encoder ({ENCODERS})")
    params = {**extras, "cross_attn": tokens, "device": noise.device, "noise": noise, "latent_image": latent_image,
              "denoise_mask": denoise_mask, "seed": seed, "prompt_type": which}
    conds = {key: cond.process_cond(batch_size=batch, area=None).cond
             for key, cond in model.model.extra_conds(**params).items()}
    context = conds.pop("c_crossattn")
    y = conds.pop("y", None)
    if y is None:
        if cfg.vec_in_dim:
            raise ValueError(f"{which} conditioning has no pooled text vector, which this model ({cfg.describe()}) "
                             f"needs: encode the prompt with this model's text encoder ({ENCODERS})")
        y = context.new_zeros(batch, 0)
    mask = conds.pop("attention_mask", None)
    conds.pop("guidance", None)  # the node's guidance widget runs (checked above)
    channels = conds.pop("c_concat", None)
    leftover = sorted(set(conds) - TRANSFORMER_KEYWORDS)
    if leftover:
        raise ValueError(f"{which} conditioning gives the model {', '.join(map(repr, leftover))}, which the "
                         "HunyuanVideo FP8 Sampler does not pass on: sample with KSampler or SamplerCustomAdvanced")
    return ModelConditioning(TextCondition(context, y, mask), channels, conds)


def check_latent(samples: torch.Tensor, channels: int, patch_size: tuple[int, int, int],
                 spatial_compression: int = 8) -> None:
    """Reject latents the transformer cannot take, in video terms the user set: ``channels`` is the model's latent
    (output) channels, ``spatial_compression`` its VAE's pixels per latent pixel."""
    s = spatial_compression
    node = LATENT_NODES.get(s, "an empty video latent node for this model")
    if samples.dim() != 5:
        raise ValueError(f"latent has shape {tuple(samples.shape)}; HunyuanVideo needs a video latent "
                         f"[batch, {channels}, frames, height/{s}, width/{s}] from {node}")
    if samples.shape[1] != channels:
        raise ValueError(f"latent has {samples.shape[1]} channels, the model takes {channels}: use {node} "
                         f"({channels} channels)")
    _, ph, pw = patch_size
    if samples.shape[3] % ph or samples.shape[4] % pw:
        raise ValueError(f"video size {samples.shape[4] * s}x{samples.shape[3] * s} is not a multiple of "
                         f"{s * pw}x{s * ph}: pick a width and height divisible by {s * max(ph, pw)}")


def model_latent(model, samples: torch.Tensor) -> torch.Tensor:
    """The LATENT's samples as the model's conditioning sees them (fp32): as ComfyUI's guider, a non-empty latent in
    the model's own scale (v1 image-to-video's concat falls back to it), an empty one as is."""
    return (model.model.process_latent_in(samples) if torch.count_nonzero(samples) else samples).float()


def check_latent_entries(latent: dict, model_options: dict, node: str = SAMPLER_NODE) -> None:
    """Latent entries ``node`` cannot apply (a batch index...) and a noise mask under a mask function are refused by
    name."""
    unknown = sorted(set(latent) - LATENT_ENTRIES)
    if unknown:
        raise ValueError(f"the latent carries {', '.join(map(repr, unknown))}, which the {node} does not apply (it "
                         "samples the whole batch from the seed's noise): sample with KSampler or "
                         "SamplerCustomAdvanced")
    if "noise_mask" in latent and "denoise_mask_function" in model_options:
        raise ValueError("the MODEL carries a denoise_mask_function (e.g. Differential Diffusion) for the latent's "
                         f"noise_mask, which the {node} does not apply: sample with KSampler or "
                         "SamplerCustomAdvanced")


def check_node_inputs(model, latent: dict, shift: float, node: str, instead: str) -> HunyuanConfig:
    """What a node that calls the transformer itself checks before anything loads: the latent's entries, the MODEL
    features it would not apply (``instead`` says what to do), the latent's shape. Returns the transformer's
    config."""
    config = our_transformer(model).config
    check_latent_entries(latent, model.model_options, node)
    unapplied = unapplied_model_features(model, shift)
    if unapplied:
        raise ValueError(f"the MODEL carries {', '.join(unapplied)}, which the {node} does not apply (it calls the "
                         f"transformer itself): {instead}")
    check_latent(latent["samples"], config.out_channels, config.patch_size, config.vae_spatial_compression)
    return config


SAMPLER_FUNCTIONS = ("sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function",
                     "model_function_wrapper", "sampler_calc_cond_batch_function")


def _registered(table: Any, what: str) -> list[str]:
    """``"<what> <type> '<key>'"`` for each non-empty entry of a ComfyUI wrappers/callbacks table (but the pack's own:
    its hybrid-steps wrapper, whose work this sampler does itself)."""
    found = []
    for kind, by_key in (table or {}).items():
        for key, fns in (by_key or {}).items():
            if fns and key != PACK_KEY:
                found.append(f"{what} {kind} {key!r}")
    return found


def unapplied_model_features(model, shift: float) -> list[str]:
    """What other nodes attached to the MODEL that this sampler, which calls the transformer itself, would not apply:
    ComfyUI's wrappers and callbacks (EasyCache...), CFG functions (SkipLayerGuidance, RescaleCFG...), transformer
    patches, and a model_sampling patch whose shift differs from the sampler's."""
    options = model.model_options
    transformer_options = options.get("transformer_options", {})
    found = _registered(getattr(model, "wrappers", None), "wrapper")
    found += _registered(getattr(model, "callbacks", None), "callback")
    found += _registered(transformer_options.get("wrappers"), "wrapper")
    found += _registered(transformer_options.get("callbacks"), "callback")
    found += [name for name in SAMPLER_FUNCTIONS if options.get(name)]
    for key in ("patches", "patches_replace"):
        found += [f"transformer_options {key} {name!r}" for name, v in transformer_options.get(key, {}).items() if v]
    patched = getattr(model, "object_patches", {}).get("model_sampling")
    patched_shift = getattr(patched, "shift", None)
    if patched_shift is not None and abs(float(patched_shift) - shift) > 1e-6:
        found.append(f"a model_sampling patch with shift {float(patched_shift):g} (ModelSamplingSD3; the sampler's "
                     f"shift widget is {shift:g})")
    return found


class HyVideoFP8Sampler:
    """ComfyUI node: sample a video latent with the hybrid FP8/high-precision schedule."""

    DESCRIPTION = ("Flow-matching Euler sampler (shift, embedded guidance, optional true CFG) with a hybrid schedule: "
                   "the first and last steps in high precision, the rest in FP8, on the same weights. Runs every "
                   "model the HunyuanVideo FP8 Loader loads, with ComfyUI's own text encoder and conditioning nodes: "
                   "HunyuanVideo text-to-video and image-to-video (HunyuanImageToVideo's concat, replace and "
                   "reference modes, SkyReels), HunyuanVideo 1.5 text-to-video, image-to-video "
                   "(HunyuanVideo15ImageToVideo, step-distilled included) and super-resolution. Needs a MODEL from "
                   "the HunyuanVideo FP8 Loader.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised video latent (decode with VAEDecode or VAEDecodeTiled).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model from the HunyuanVideo FP8 Loader (v1 or 1.5, text- or "
                                               "image-to-video)."}),
                "positive": widgets.positive(
                    f"The prompt: CLIPTextEncode with the model's text encoder ({ENCODERS}); for image-to-video "
                    "through HunyuanImageToVideo or HunyuanVideo15ImageToVideo."),
                "latent": ("LATENT", {"tooltip": (
                    "From EmptyHunyuanLatentVideo (v1), EmptyHunyuanVideo15Latent (1.5) or the image-to-video node: "
                    "sets frames, size and batch. Sampling starts from pure noise; where the latent has a noise "
                    "mask (the image-to-video node's replaced start frames) the masked-out part is kept.")}),
                "seed": widgets.seed("Noise seed; the noise is drawn on the CPU, so a seed gives the same video on any "
                                     "GPU (and the same noise as KSampler).", control_after_generate=True),
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000, "tooltip": (
                    "Denoising steps (the official scripts use 50, ComfyUI's template 20; step-distilled 1.5 "
                    "models 8).")}),
                "shift": widgets.shift("Flow time shift; 7.0 for the released v1 model (1.5: as its workflows set "
                                       "it). Lower (2-5) for small videos."),
                "guidance": widgets.guidance("Embedded guidance scale (6.0 default; replaces FluxGuidance). Only "
                                             "models with a guidance embedding (v1) use it."),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 100.0, "step": 0.1, "tooltip": (
                    "True classifier-free guidance with the negative prompt. 1 = off (v1 relies on embedded "
                    "guidance; 1.5 text-to-video and image-to-video use true CFG, the step-distilled model 1); "
                    "above 1 doubles the cost of each step.")}),
                "hybrid_first_steps": ("INT", {"default": -1, "min": -1, "max": 1000, "tooltip": (
                    "First steps computed in high precision on the same FP8 weights. -1 = as set on the "
                    "loader's policy (0 without a policy).")}),
                "hybrid_last_steps": ("INT", {"default": -1, "min": -1, "max": 1000, "tooltip": (
                    "Last steps computed in high precision. -1 = as set on the loader's policy.")}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt, used only when cfg > 1 (for "
                                                         "image-to-video, the image node's negative output)."}),
            },
        }

    def run(self, model, positive, latent: dict, seed: int, steps: int, shift: float, guidance: float, cfg: float,
            hybrid_first_steps: int, hybrid_last_steps: int, negative=None) -> tuple[dict]:
        import comfy.model_management as mm
        import comfy.sampler_helpers
        import latent_preview

        transformer = our_transformer(model)
        samples = latent["samples"]
        config = check_node_inputs(model, latent, shift, SAMPLER_NODE,
                                   "sample with KSampler or SamplerCustomAdvanced, which run them on this MODEL, or "
                                   "remove those nodes (for a shift, set the sampler's)")
        if cfg > 1.0 and negative is None:
            raise ValueError(f"cfg is {cfg} but no negative prompt is connected: connect one or set cfg to 1")
        pack = model.model_options.get(PACK_KEY, {})
        policy_hybrid = pack.get("hybrid", (0, 0))
        hybrid = (policy_hybrid[0] if hybrid_first_steps < 0 else hybrid_first_steps,
                  policy_hybrid[1] if hybrid_last_steps < 0 else hybrid_last_steps)

        # the conditioning is resolved on the CPU, before the model loads (a refused entry loads nothing)
        noise = initial_noise(samples.shape, seed)
        latent_image = model_latent(model, samples).to(device=noise.device)
        denoise_mask = None
        if "noise_mask" in latent:  # ComfyUI's own shaping of a noise mask to the latent
            denoise_mask = comfy.sampler_helpers.prepare_mask(latent["noise_mask"], noise.shape, noise.device).float()
        pos = model_conditioning(model, config, positive, noise, latent_image, denoise_mask, seed, guidance)
        neg = None
        if cfg > 1.0:
            neg = model_conditioning(model, config, negative, noise, latent_image, denoise_mask, seed, guidance,
                                     "negative")

        mm.load_models_gpu([model])
        device = model.load_device
        preview = latent_preview.prepare_callback(model, steps)

        def on_step(step: int, total: int, x0: torch.Tensor) -> None:
            mm.throw_exception_if_processing_interrupted()
            preview(step, x0, None, total)

        out = sample(transformer, noise.to(device), pos.text.context, pos.text.y,
                     attention_mask=pos.text.attention_mask, steps=steps, shift=shift,
                     guidance=guidance if config.guidance_embed else None, cfg=cfg,
                     negative=neg.text if neg is not None else None, hybrid=hybrid, callback=on_step, device=device,
                     model_inputs=pos.inputs, image_channels=pos.image_channels,
                     negative_model_inputs=neg.inputs if neg is not None else None,
                     negative_image_channels=neg.image_channels if neg is not None else None,
                     denoise_mask=denoise_mask, keep_latent=latent_image if denoise_mask is not None else None)
        out = model.model.process_latent_out(out.to(mm.intermediate_device()))
        return ({"samples": out},)
