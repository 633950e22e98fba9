"""Hand our transformer to ComfyUI as a native HunyuanVideo ``MODEL``.

The model class ComfyUI itself would build for the file (``supported_models.HunyuanVideo``, ``HunyuanVideoI2V``,
``HunyuanVideoSkyreelsI2V``, ``HunyuanVideo15``, ``HunyuanVideo15_SR_Distilled``, chosen by the checkpoint's variant)
is built without its diffusion model (``disable_unet_model_creation``) and ours is put in its place: it has the same
parameter names and forward signature, so the native samplers, the variant's latent format and model sampling
(shift), ``FluxGuidance`` (embedded guidance), the image-to-video conditioning (concatenated image latent, guiding
frame, byT5 and vision inputs) and the rest of the conditioning plumbing all work unchanged, and loading/offloading
goes through ComfyUI's model management (VRAM shared with text encoders and VAE).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch

from ..fp8.formats import HIGH_PRECISION_DTYPES
from ..hunyuan.config import HunyuanConfig
from ..hunyuan.offload import estimate_activation_bytes
from ..hunyuan.sampler import precision_plan

PACK_KEY = "hyvideo_fp8"  # our entry in ModelPatcher.model_options and wrapper/callback key
# variant -> the ``comfy.supported_models`` config ComfyUI's detection picks for such a file (its ``get_model`` builds
# the matching ``comfy.model_base`` class)
COMFY_MODEL_CONFIGS = {
    "v1": "HunyuanVideo",
    "v1-i2v": "HunyuanVideoI2V",
    "v1-skyreels-i2v": "HunyuanVideoSkyreelsI2V",
    "1.5": "HunyuanVideo15",
    "1.5-sr": "HunyuanVideo15_SR_Distilled",
}
FIRST_COMFYUI_WITH_15 = "0.3.71"


def comfy_unet_config(cfg: HunyuanConfig, dtype: torch.dtype) -> dict[str, Any]:
    """ComfyUI's ``unet_config`` for the detected model (what ``detect_unet_config`` would have produced)."""
    return {
        "image_model": "hunyuan_video", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "vec_in_dim": cfg.vec_in_dim or None, "context_in_dim": cfg.context_in_dim, "hidden_size": cfg.hidden_size,
        "mlp_ratio": cfg.mlp_ratio, "num_heads": cfg.num_heads, "depth": cfg.depth,
        "depth_single_blocks": cfg.depth_single_blocks, "axes_dim": list(cfg.axes_dim), "theta": cfg.theta,
        "patch_size": list(cfg.patch_size), "qkv_bias": cfg.qkv_bias, "guidance_embed": cfg.guidance_embed,
        "byt5": bool(cfg.byt5_dims), "meanflow": cfg.meanflow, "use_cond_type_embedding": cfg.cond_type_embedding,
        "vision_in_dim": cfg.vision_in_dim or None, "meanflow_sum": cfg.meanflow_sum,
        "dtype": dtype, "disable_unet_model_creation": True,
    }


def comfy_model_config(cfg: HunyuanConfig, dtype: torch.dtype):
    """The ``comfy.supported_models`` config ComfyUI would use for this checkpoint (latent format, shift, model class);
    a clear error where this ComfyUI predates the variant."""
    import comfy.supported_models

    name = COMFY_MODEL_CONFIGS[cfg.variant]
    config_class = getattr(comfy.supported_models, name, None)
    if config_class is None:
        try:
            from comfyui_version import __version__ as version
        except ImportError:
            version = "unknown"
        raise RuntimeError(f"this is a {cfg.describe()} checkpoint and this ComfyUI (version {version}) has no "
                           f"{name} model: update ComfyUI to {FIRST_COMFYUI_WITH_15} or newer to run HunyuanVideo 1.5")
    model_config = config_class(comfy_unet_config(cfg, dtype))
    model_config.set_inference_dtype(dtype, None)
    return model_config


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
    ``transformer_options`` last, the transformer as ``executor.class_obj``. Running out of GPU memory raises the same
    error type (ComfyUI's executor frees memory on it) with what to change."""
    import comfy.patcher_extension as ext

    transformer_options = args[-1]
    wrappers = ext.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL, transformer_options)
    try:
        if not wrappers:
            return forward(*args, **kwargs)
        return ext.WrapperExecutor.new_class_executor(forward, forward.__self__, wrappers).execute(*args, **kwargs)
    except torch.OutOfMemoryError as e:
        raise torch.OutOfMemoryError(out_of_memory_advice(forward.__self__, args[0].shape)) from e


def out_of_memory_advice(transformer: torch.nn.Module, latent_shape: Sequence[int]) -> str:
    """What ran out of memory and the option that helps: block swap when it is off, a smaller video when every
    block already streams."""
    swap = getattr(transformer, "block_swap", None)
    streamed = len(swap.blocks) if swap is not None else 0
    total = len(transformer.double_blocks) + len(transformer.single_blocks)
    video = "x".join(str(d) for d in latent_shape)
    where = f"the GPU ran out of memory in a HunyuanVideo FP8 step (latent {video}"
    if streamed == 0:
        return (f"{where}, all {total} blocks on the GPU): set block_swap to auto on the HunyuanVideo FP8 Loader to "
                "stream the blocks that do not fit from host memory, or lower the resolution, frame count or batch")
    if streamed < total:
        return (f"{where}, {streamed} of {total} blocks streamed from host memory): set block_swap to fixed on the "
                "HunyuanVideo FP8 Loader with fewer resident_blocks, or lower the resolution, frame count or batch")
    return (f"{where}, every block already streamed from host memory): lower the resolution, frame count or batch "
            "(CFG above 1 runs a batch of 2), or free GPU memory other programs hold")


def activation_memory(transformer: torch.nn.Module, cfg: HunyuanConfig) -> Callable[..., int]:
    """Our ``memory_required`` for ComfyUI's ``BaseModel``: its generic per-pixel estimate is several times what this
    transformer needs, and ComfyUI sizes partial loads (and unloads other models) from it, so with its estimate block
    swap would stream blocks that could stay on the GPU."""

    def memory_required(input_shape: Sequence[int], *args, **kwargs) -> int:
        return estimate_activation_bytes(cfg.hidden_size, cfg.patch_size, tuple(input_shape), transformer.token_chunk)

    return memory_required


def wrap_transformer(
    transformer: torch.nn.Module,
    cfg: HunyuanConfig,
    compute_dtype: str = "bf16",
    hybrid: Sequence[int] = (0, 0),
    info: Optional[dict] = None,
    block_swap: Union[str, int] = "off",
):
    """A ``MODEL`` around the ``comfy.model_base`` class ComfyUI builds for ``cfg``'s variant (``HunyuanVideo``,
    ``HunyuanVideoI2V``, ``HunyuanVideo15``...) holding ``transformer``, managed by our ModelPatcher
    (``nodes.model_patcher``: partial loads stream whole blocks as ``block_swap`` says)."""
    import comfy.model_management as mm
    import comfy.patcher_extension

    from ..hunyuan.sampler import default_high_precision
    from .model_patcher import patcher_class

    dtype = HIGH_PRECISION_DTYPES[compute_dtype]
    model_config = comfy_model_config(cfg, dtype)
    offload_device = mm.unet_offload_device()
    base = model_config.get_model({}, device=offload_device)
    transformer.forward_wrapper = run_diffusion_model_wrappers
    base.diffusion_model = transformer
    base.memory_required = activation_memory(transformer, cfg)
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
