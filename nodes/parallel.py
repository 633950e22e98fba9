"""Multi-GPU node: a MODEL from our loader, run on several GPUs at once (sequence parallelism over Ray workers).

The MODEL it returns is a native ``MODEL`` like the loader's (KSampler, SamplerCustomAdvanced, ModelSamplingSD3,
FluxGuidance, our sampler, the hybrid steps); its transformer is a ``hunyuan.parallel.ParallelTransformer`` whose
forward runs on the workers. The loader's MODEL stays as it was.
"""

from __future__ import annotations

import logging

import torch

from ..fp8.formats import HIGH_PRECISION_DTYPES
from .policy import CATEGORY

logger = logging.getLogger("hyvideo_fp8")


def _dtype_name(dtype: torch.dtype) -> str:
    return next((name for name, d in HIGH_PRECISION_DTYPES.items() if d == dtype), "bf16")


def check_unpatched(model) -> None:
    """Refuse a MODEL that carries patches the workers would not see: weight patches (LoRA) and object patches
    (ModelSamplingSD3's shift, ...) live on the ComfyUI side of the MODEL, the workers build theirs from the weights."""
    found = []
    if getattr(model, "patches", None):
        found.append(f"weight patches on {len(model.patches)} weights (a LoRA)")
    if getattr(model, "object_patches", None):
        found.append(f"object patches of {sorted(model.object_patches)} (e.g. ModelSamplingSD3)")
    if found:
        raise ValueError(f"this MODEL carries {' and '.join(found)}, which the GPU workers would not see: connect the "
                         "HunyuanVideo FP8 Multi-GPU node straight to the loader's output and put ModelSamplingSD3 "
                         "and other model nodes after it (LoRA is not supported on several GPUs)")


class HyVideoFP8MultiGPU:
    """ComfyUI node: the loader's model on several GPUs."""

    DESCRIPTION = ("Runs a HunyuanVideo FP8 model on several GPUs for one video: each GPU holds a copy of the "
                   "weights and a share of the video's tokens, and the GPUs swap tokens for attention heads around "
                   "attention (sequence parallelism). The GPUs are Ray workers, on this machine or on a Ray cluster. "
                   "Needs Ray (pip install 'ray>=2.9').")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The same model, its transformer run by the GPU workers: works with KSampler, "
                       "SamplerCustomAdvanced and the HunyuanVideo FP8 Sampler like the loader's MODEL.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL from the HunyuanVideo FP8 Loader."}),
                "gpus": ("INT", {"default": 2, "min": 2, "max": 64, "tooltip": (
                    "GPUs to run the model on, one worker each. At most the model's attention heads (24 for "
                    "HunyuanVideo 1.0, 16 for 1.5); counts that divide them share attention evenly (2, 3, 4, 6 or 8 "
                    "GPUs for 1.0; 2, 4 or 8 for 1.5).")}),
            },
            "optional": {
                "ray_address": ("STRING", {"default": "", "tooltip": (
                    "Empty: start Ray on this machine (or use the Ray this ComfyUI already runs). 'auto': join the "
                    "Ray cluster this machine belongs to (ray start on each machine; the pack at the same path on "
                    "each). Or a cluster address such as ray://head:10001.")}),
            },
        }

    def build(self, model, gpus: int, ray_address: str = "") -> tuple:
        import comfy.model_management as mm

        from ..hunyuan.parallel import ParallelTransformer, require_ray
        from .comfy_model import PACK_KEY, our_transformer, wrap_transformer

        source = our_transformer(model)
        check_unpatched(model)
        require_ray()
        previous = getattr(self, "_workers", None)  # this node's last model: its GPUs are needed now
        if previous is not None:
            previous.shutdown()  # a later run of that MODEL starts them again
        device = "cuda" if mm.get_torch_device().type == "cuda" else "cpu"
        transformer = ParallelTransformer(source, gpus, device=device, address=ray_address.strip() or None,
                                          interrupt_check=mm.throw_exception_if_processing_interrupted)
        self._workers = transformer
        transformer.start()
        pack = dict(model.model_options.get(PACK_KEY, {}))
        info = {k: v for k, v in pack.items() if k not in ("hybrid", "config", "block_swap")}
        parallel = wrap_transformer(transformer, source.config, _dtype_name(source.dtype), pack.get("hybrid", (0, 0)),
                                    info={**info, "gpus": gpus})
        logger.info("[hyvideo_fp8] model on %d %s workers", gpus, "GPU" if device == "cuda" else "CPU")
        return (parallel,)
