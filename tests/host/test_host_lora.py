"""ComfyUI's own LoRA loader on our FP8 MODEL: the patch merges into the real (dequantized) weights.

The LoRA run is compared with a file that has the same update merged before quantization: both go through FP8
(the LoRA run under the base file's per-channel scales, as ComfyUI does for its scaled-FP8 files, so an update that
pushes a channel past its range saturates there), so they agree to FP8 rounding, while the LoRA itself moves the
result by far more. tests/test_fp8_linear.py checks the FP8 merge arithmetic itself.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import random_state_dict
from tests.host.conftest import find, save_latent_instead_of_video
from tests.host.test_host_workflows import OURS, latent_of

CFG = tiny_config()
# double_blocks.1 and single_blocks.0 run W8A8 under fp8-balanced (block 0 and the last block are bf16 there)
# (layer, size of the update relative to the layer's weight): small updates on W8A8 layers, as real LoRAs make,
# and a large one on the bf16 final layer so that the tiny random model's latent visibly moves.
TARGETS = (("double_blocks.1.img_mlp.0", 0.2), ("double_blocks.1.img_mlp.2", 0.2), ("single_blocks.0.linear1", 0.2),
           ("single_blocks.0.linear2", 0.2), ("final_layer.linear", 0.2))
BOOST = 8.0  # the target layers' base weights are scaled up so that they, not the noise, dominate the tiny latent
RANK = 4


def write_files(root) -> tuple[str, str, str]:
    base = random_state_dict(CFG, seed=21, dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    lora, merged = {}, {}
    for name, size in TARGETS:
        base[f"{name}.weight"] = w = base[f"{name}.weight"] * BOOST
        up = torch.randn(w.shape[0], RANK, generator=g)
        down = torch.randn(RANK, w.shape[1], generator=g)
        delta = up @ down
        up *= size * w.norm() / delta.norm()
        lora[f"diffusion_model.{name}.lora_up.weight"] = up.to(torch.bfloat16)
        lora[f"diffusion_model.{name}.lora_down.weight"] = down.to(torch.bfloat16)
        lora[f"diffusion_model.{name}.alpha"] = torch.tensor(float(RANK))
        merged[f"{name}.weight"] = w + up.to(torch.bfloat16).float() @ down.to(torch.bfloat16).float()
    return base, {**base, **merged}, lora


def test_comfy_lora_loader_patches_our_fp8_model(host):
    base, merged, lora = write_files(host.root)
    models = host.root / "models"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in base.items()},
              str(models / "diffusion_models" / "lora_base.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in merged.items()},
              str(models / "diffusion_models" / "lora_merged.safetensors"))
    save_file(lora, str(models / "loras" / "tiny_lora.safetensors"))

    def prompt(model_file: str, with_lora: bool, prefix: str) -> dict:
        p = save_latent_instead_of_video(host.tiny_prompt(OURS, steps=3), prefix)
        loader = find(p, "HyVideoFP8Loader")
        p[loader]["inputs"].update(model_name=model_file, preset="fp8-balanced")
        p[loader]["inputs"].pop("policy", None)
        del p[find(p, "HyVideoFP8Policy")]
        if with_lora:
            p["80"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": [loader, 0], "lora_name": "tiny_lora.safetensors", "strength_model": 1.0}}
            p[find(p, "HyVideoFP8Sampler")]["inputs"]["model"] = ["80", 0]
        return p

    plain = latent_of(host, host.run(prompt("lora_base.safetensors", False, "latents/lora_plain")))
    patched = latent_of(host, host.run(prompt("lora_base.safetensors", True, "latents/lora_patched")))
    merged_run = latent_of(host, host.run(prompt("lora_merged.safetensors", False, "latents/lora_merged")))
    assert torch.isfinite(patched).all()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    moved, agree = rel(plain, merged_run), rel(patched, merged_run)
    print(f"LoRA moves the latent by {moved:.3e}; LoRA-patched vs pre-merged file: {agree:.3e}")
    # measured: the LoRA moves the latent by 0.168; patched vs pre-merged 0.023 (two FP8 roundings of the merged
    # weights, three steps); merging into the FP8 codes instead of the real weights gives 0.077
    assert moved > 5 * agree, (moved, agree)
    assert agree < 0.04, agree
