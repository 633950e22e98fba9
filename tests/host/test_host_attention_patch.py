"""Our FP8 attention offered to ComfyUI's natively loaded HunyuanVideo through ``optimized_attention_override``."""

from __future__ import annotations

import copy

import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from tests.checkpoint_factory import write_checkpoint
from tests.host.conftest import find, save_latent_instead_of_video
from tests.host.test_host_workflows import NATIVE, latent_of

# ComfyUI's detection fixes the head dim at 128 and the pooled vector at 768: the natively loaded tiny model has
# one head of 128 and a 768-d pooled input.
NATIVE_MODEL = "hyvideo_tiny_head128_bf16.safetensors"


def native_prompt(host, prefix: str) -> dict:
    """The shipped native workflow with ComfyUI's own UNETLoader in place of ours."""
    path = host.root / "models" / "diffusion_models" / NATIVE_MODEL
    if not path.exists():
        write_checkpoint(path, layout="comfyui", config=tiny_config(hidden_size=128, num_heads=1,
                                                                     axes_dim=(16, 56, 56), vec_in_dim=768), seed=13)
    prompt = save_latent_instead_of_video(host.tiny_prompt(NATIVE, steps=3), prefix)
    del prompt[find(prompt, "HyVideoFP8Policy")]
    prompt[find(prompt, "HyVideoFP8TestConditioning")]["inputs"]["pooled_dim"] = 768
    prompt[find(prompt, "HyVideoFP8Loader")] = {"class_type": "UNETLoader",
                                                "inputs": {"unet_name": NATIVE_MODEL, "weight_dtype": "default"}}
    return prompt


def test_attention_patch_runs_fp8_attention_on_a_native_model(host):
    plain = native_prompt(host, "latents/native_sdpa")
    patched = copy.deepcopy(plain)
    loader = find(patched, "UNETLoader")
    patched["95"] = {"class_type": "HyVideoFP8AttentionPatch", "inputs": {"model": [loader, 0], "min_tokens": 0}}
    patched[find(patched, "ModelSamplingSD3")]["inputs"]["model"] = ["95", 0]
    patched[find(patched, "SaveLatent")]["inputs"]["filename_prefix"] = "latents/native_fp8attn"
    a, b = latent_of(host, host.run(plain)), latent_of(host, host.run(patched))
    assert torch.isfinite(b).all() and not torch.equal(a, b)  # the override really ran
    err = ((b - a).norm() / a.norm()).item()
    assert err < 0.05, err  # FP8 attention vs SDPA on the tiny model over 3 steps: measured 1.6e-2
