"""Hand our transformer to ComfyUI as a native HunyuanVideo ``MODEL``.

ComfyUI's own ``model_base.HunyuanVideo`` is built without its diffusion model (``disable_unet_model_creation``) and
ours is put in its place: it has the same parameter names and forward signature, so the native samplers,
``ModelSamplingSD3`` (shift), ``FluxGuidance`` (embedded guidance) and the conditioning plumbing all work unchanged,
and loading/offloading goes through ComfyUI's model management (VRAM shared with text encoders and VAE).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch

from ..fp8.formats import HIGH_PRECISION_DTYPES
from ..hunyuan.config import HunyuanConfig
from ..hunyuan.sampler import precision_plan

PACK_KEY = "hyvideo_fp8"  # our entry in ModelPatcher.model_options and wrapper/callback key


def comfy_unet_config(cfg: HunyuanConfig, dtype: torch.dtype) -> dict[str, Any]:
    """ComfyUI's ``unet_config`` for the detected model (what ``detect_unet_config`` would have produced)."""
    return {
        "image_model": "hunyuan_video", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "vec_in_dim": cfg.vec_in_dim or None, "context_in_dim": cfg.context_in_dim, "hidden_size": cfg.hidden_size,
        "mlp_ratio": cfg.mlp_ratio, "num_heads": cfg.num_heads, "depth": cfg.depth,
        "depth_single_blocks": cfg.depth_single_blocks, "axes_dim": list(cfg.axes_dim), "theta": cfg.theta,
        "patch_size": list(cfg.patch_size), "qkv_bias": cfg.qkv_bias, "guidance_embed": cfg.guidance_embed,
        "dtype": dtype, "disable_unet_model_creation": True,
    }


def step_index(transformer_options: dict) -> Optional[tuple[int, int]]:
    """(step, total) of the current model call inside a native sampler, from the sigmas ComfyUI puts there."""
    sample_sigmas = transformer_options.get("sample_sigmas")
    sigmas = transformer_options.get("sigmas")
    if sample_sigmas is None or sigmas is None or len(sample_sigmas) < 2:
        return None
    current = float(sigmas.reshape(-1)[0])
    i = int(torch.argmin((sample_sigmas.float().cpu() - current).abs()))
    return min(i, len(sample_sigmas) - 2), len(sample_sigmas) - 1


def hybrid_wrapper(hybrid: Sequence[int], high_precision: Callable[[torch.nn.Module], Any]) -> Callable:
    """An APPLY_MODEL wrapper running the first/last hybrid steps of a native sampler under ``high_precision``."""

    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        where = step_index(transformer_options or {})
        if where is not None and precision_plan(where[1], hybrid)[where[0]]:
            with high_precision(executor.class_obj.diffusion_model):
                return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    return wrapper


def run_diffusion_model_wrappers(forward: Callable, *args, **kwargs):
    """ComfyUI's DIFFUSION_MODEL wrappers (EasyCache, LazyCache, ...) around our forward, as the native HunyuanVideo
    runs them around its own: positional ``(x, timestep, context, y, guidance, attention_mask, transformer_options)``,
    ``transformer_options`` last, the transformer as ``executor.class_obj``."""
    import comfy.patcher_extension as ext

    transformer_options = args[-1]
    wrappers = ext.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL, transformer_options)
    if not wrappers:
        return forward(*args, **kwargs)
    return ext.WrapperExecutor.new_class_executor(forward, forward.__self__, wrappers).execute(*args, **kwargs)


def wrap_transformer(
    transformer: torch.nn.Module,
    cfg: HunyuanConfig,
    compute_dtype: str = "bf16",
    hybrid: Sequence[int] = (0, 0),
    info: Optional[dict] = None,
    block_swap: Union[str, int] = "off",
):
    """A ``MODEL`` around ``comfy.model_base.HunyuanVideo`` holding ``transformer``, managed by our ModelPatcher
    (``nodes.model_patcher``: partial loads stream whole blocks as ``block_swap`` says)."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.patcher_extension
    import comfy.supported_models

    from ..hunyuan.sampler import default_high_precision
    from .model_patcher import patcher_class

    dtype = HIGH_PRECISION_DTYPES[compute_dtype]
    model_config = comfy.supported_models.HunyuanVideo(comfy_unet_config(cfg, dtype))
    model_config.set_inference_dtype(dtype, None)
    offload_device = mm.unet_offload_device()
    base = comfy.model_base.HunyuanVideo(model_config, device=offload_device)
    transformer.forward_wrapper = run_diffusion_model_wrappers
    base.diffusion_model = transformer
    patcher = patcher_class()(base, load_device=mm.get_torch_device(), offload_device=offload_device)
    patcher.block_swap = block_swap
    patcher.model_options[PACK_KEY] = {"hybrid": tuple(hybrid), "config": cfg.to_dict(), "block_swap": block_swap,
                                       **(info or {})}
    if any(hybrid):
        patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, PACK_KEY,
                                     hybrid_wrapper(hybrid, default_high_precision))
    return patcher


def our_transformer(model) -> torch.nn.Module:
    """The transformer inside a MODEL from our loader; a clear error for any other MODEL."""
    from ..hunyuan.model import HunyuanVideoTransformer

    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(inner, HunyuanVideoTransformer):
        kind = type(inner).__module__ + "." + type(inner).__name__ if inner is not None else type(model).__name__
        raise ValueError(
            f"this MODEL is a {kind}, not a HunyuanVideo FP8 transformer: load it with the "
            "'HunyuanVideo FP8 Loader' node (the sampler drives only models from that loader; use KSampler for others)"
        )
    return inner
