"""ComfyUI node: our FP8 attention for a natively loaded HunyuanVideo (UNETLoader, GGUF...), via the
``optimized_attention_override`` hook of ComfyUI >= 0.3.59."""

from __future__ import annotations

from .attention_override import DEFAULT_MIN_TOKENS
from .loader import CATEGORY


class HyVideoFP8AttentionPatch:
    """ComfyUI node: route a MODEL's long attentions to FP8 attention (INT8 Q.K, FP8 P.V, fp32 softmax)."""

    DESCRIPTION = ("Runs the model's attention through the pack's FP8 attention (smoothed INT8 Q.K with fine-grained "
                   "scales, FP8 P.V, fp32 softmax) for ComfyUI's own HunyuanVideo loaded with 'Load Diffusion Model' "
                   "or another loader. Attention is most of a step's time at 544p and above. Models from the "
                   "HunyuanVideo FP8 Loader choose their attention in the precision policy instead.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The same model with FP8 attention on its long attention calls.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "A HunyuanVideo MODEL loaded by ComfyUI's own loader."}),
            "min_tokens": ("INT", {"default": DEFAULT_MIN_TOKENS, "min": 0, "max": 1 << 20, "tooltip": (
                "Attention calls over fewer keys than this keep ComfyUI's kernel (the 256-token text refiner "
                "gains nothing from FP8).")}),
        }}

    def patch(self, model, min_tokens: int):
        import comfy.model_management as mm

        from ..fp8.kernel_plan import FAST, device_plan
        from .attention_override import make_override

        device = mm.get_torch_device()
        plan = device_plan(device)
        if device.type == "cuda" and plan.attention not in FAST:
            raise ValueError("FP8 attention is not available here: " + "; ".join(plan.notes))
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        options["optimized_attention_override"] = make_override(min_tokens)
        return (patched,)
