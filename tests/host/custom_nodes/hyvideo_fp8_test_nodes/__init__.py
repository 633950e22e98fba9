"""Test-only ComfyUI nodes for the host tests (never shipped): HunyuanVideo-shaped CONDITIONING without the 8B text
encoder, whose weights are not available to the tests."""

import torch


class HyVideoFP8TestConditioning:
    """Random text conditioning shaped like DualCLIPLoader(hunyuan_video) + CLIPTextEncode output."""

    CATEGORY = "HunyuanVideo FP8/testing"
    FUNCTION = "make"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random states."}),
            "tokens": ("INT", {"default": 7, "min": 1, "max": 512, "tooltip": "Number of text tokens."}),
            "context_dim": ("INT", {"default": 4096, "min": 1, "max": 8192, "tooltip": "Width of the token states."}),
            "pooled_dim": ("INT", {"default": 768, "min": 1, "max": 8192, "tooltip": "Width of the pooled vector."}),
            "padding": ("INT", {"default": 0, "min": 0, "max": 511, "tooltip": "Trailing tokens masked as padding."}),
        }}

    def make(self, seed, tokens, context_dim, pooled_dim, padding):
        g = torch.Generator().manual_seed(seed)
        extras = {"pooled_output": torch.randn(1, pooled_dim, generator=g)}
        if padding:
            mask = torch.ones(1, tokens, dtype=torch.long)
            mask[:, tokens - padding:] = 0
            extras["attention_mask"] = mask
        return ([[torch.randn(1, tokens, context_dim, generator=g), extras]],)


NODE_CLASS_MAPPINGS = {"HyVideoFP8TestConditioning": HyVideoFP8TestConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"HyVideoFP8TestConditioning": "HunyuanVideo FP8 test conditioning"}
