"""ComfyUI node classes of the pack (V1 API). Importing this needs no ComfyUI; the nodes import it when they run."""

from .attention_patch import HyVideoFP8AttentionPatch
from .converter import HyVideoFP8Converter
from .loader import HyVideoFP8Loader
from .parallel import HyVideoFP8MultiGPU
from .policy import HyVideoFP8Policy
from .quality import HyVideoFP8QualityReport
from .sampler import HyVideoFP8Sampler

NODE_CLASS_MAPPINGS = {
    "HyVideoFP8Loader": HyVideoFP8Loader,
    "HyVideoFP8Policy": HyVideoFP8Policy,
    "HyVideoFP8Sampler": HyVideoFP8Sampler,
    "HyVideoFP8Converter": HyVideoFP8Converter,
    "HyVideoFP8QualityReport": HyVideoFP8QualityReport,
    "HyVideoFP8AttentionPatch": HyVideoFP8AttentionPatch,
    "HyVideoFP8MultiGPU": HyVideoFP8MultiGPU,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "HyVideoFP8Loader": "HunyuanVideo FP8 Loader",
    "HyVideoFP8Policy": "HunyuanVideo FP8 Precision Policy",
    "HyVideoFP8Sampler": "HunyuanVideo FP8 Sampler",
    "HyVideoFP8Converter": "HunyuanVideo FP8 Checkpoint Converter",
    "HyVideoFP8QualityReport": "HunyuanVideo FP8 Quality Report",
    "HyVideoFP8AttentionPatch": "HunyuanVideo FP8 Attention (native model)",
    "HyVideoFP8MultiGPU": "HunyuanVideo FP8 Multi-GPU",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
