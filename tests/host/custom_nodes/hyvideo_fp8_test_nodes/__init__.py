"""Test-only ComfyUI nodes for the host tests (never shipped): HunyuanVideo-shaped CONDITIONING without the 8B text
encoder, and HunyuanVideo 1.5's SigLIP vision states without the vision encoder, whose weights are not available to the
tests."""

import torch


class HyVideoFP8TestConditioning:
    """Random text conditioning shaped like DualCLIPLoader(hunyuan_video) + CLIPTextEncode output, or (pooled_dim 0,
    byT5 tokens) like DualCLIPLoader(hunyuan_video_15) + CLIPTextEncode: no pooled vector, byT5 glyph-text states."""

    CATEGORY = "HunyuanVideo FP8/testing"
    FUNCTION = "make"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random states."}),
            "tokens": ("INT", {"default": 7, "min": 1, "max": 512, "tooltip": "Number of text tokens."}),
            "context_dim": ("INT", {"default": 4096, "min": 1, "max": 8192, "tooltip": "Width of the token states."}),
            "pooled_dim": ("INT", {"default": 768, "min": 0, "max": 8192,
                                   "tooltip": "Width of the pooled vector (0: none, as HunyuanVideo 1.5's encoder)."}),
            "padding": ("INT", {"default": 0, "min": 0, "max": 511, "tooltip": "Trailing tokens masked as padding."}),
        }, "optional": {
            "byt5_tokens": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "byT5 glyph-text tokens, 0: none."}),
            "byt5_dim": ("INT", {"default": 1472, "min": 1, "max": 8192, "tooltip": "Width of the byT5 states."}),
        }}

    def make(self, seed, tokens, context_dim, pooled_dim, padding, byt5_tokens=0, byt5_dim=1472):
        g = torch.Generator().manual_seed(seed)
        extras = {"pooled_output": torch.randn(1, pooled_dim, generator=g) if pooled_dim else None}
        if byt5_tokens:
            extras["conditioning_byt5small"] = torch.randn(1, byt5_tokens, byt5_dim, generator=g)
        if padding:
            mask = torch.ones(1, tokens, dtype=torch.long)
            mask[:, tokens - padding:] = 0
            extras["attention_mask"] = mask
        return ([[torch.randn(1, tokens, context_dim, generator=g), extras]],)


class HyVideoFP8TestVisionOutput:
    """Random SigLIP-shaped states, as CLIPVisionLoader + CLIPVisionEncode give HunyuanVideo15ImageToVideo."""

    CATEGORY = "HunyuanVideo FP8/testing"
    FUNCTION = "make"
    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random states."}),
            "tokens": ("INT", {"default": 729, "min": 1, "max": 4096, "tooltip": "Number of vision tokens."}),
            "dim": ("INT", {"default": 1152, "min": 1, "max": 8192, "tooltip": "Width of the vision states."}),
        }}

    def make(self, seed, tokens, dim):
        import comfy.clip_vision

        out = comfy.clip_vision.Output()
        out["last_hidden_state"] = torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed))
        return (out,)


NODE_CLASS_MAPPINGS = {"HyVideoFP8TestConditioning": HyVideoFP8TestConditioning,
                       "HyVideoFP8TestVisionOutput": HyVideoFP8TestVisionOutput}
NODE_DISPLAY_NAME_MAPPINGS = {"HyVideoFP8TestConditioning": "HunyuanVideo FP8 test conditioning",
                              "HyVideoFP8TestVisionOutput": "HunyuanVideo FP8 test vision states"}
