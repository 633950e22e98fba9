"""Widget declarations the sampler and the quality report share, written once."""

from __future__ import annotations

from ..hunyuan.sampler import DEFAULT_GUIDANCE, DEFAULT_SHIFT

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed(tooltip: str, **extra) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": SEED_MAX, **extra, "tooltip": tooltip})


def shift(tooltip: str) -> tuple:
    return ("FLOAT", {"default": DEFAULT_SHIFT, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip": tooltip})


def guidance(tooltip: str) -> tuple:
    return ("FLOAT", {"default": DEFAULT_GUIDANCE, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": tooltip})


def positive(tooltip: str = "The prompt, encoded by CLIPTextEncode with a DualCLIPLoader of type hunyuan_video.") \
        -> tuple:
    return ("CONDITIONING", {"tooltip": tooltip})


__all__ = ["seed", "shift", "guidance", "positive", "SEED_MAX"]
