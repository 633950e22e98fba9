"""On a CUDA GPU: ComfyUI's memory management with our MODEL next to a text encoder and a VAE, with ComfyUI's
defaults (0.29: the dynamic-VRAM model patcher for the text encoder and the VAE, as ``main.py`` enables it on NVIDIA;
our MODEL keeps ComfyUI's standard patcher, since FP8Linear holds its weights whole). Three rounds of encode ->
sample -> decode -> unload all: our MODEL loads onto the GPU, samples the same latent each round, is unloaded to the
offload device, and the GPU memory returns to where it started (no leak).

A second test gives the model less GPU memory than it needs (ComfyUI's reserved-VRAM setting): the loader's
``block_swap="auto"`` streams the blocks that do not fit, ComfyUI is told the smaller resident size, and the latent
equals the fully loaded one.

Skipped without CUDA (CI); on a GPU: ``COMFYUI_PATH=<tree> python -m pytest -s tests/host/test_host_gpu_memory.py``.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import build_random
from hyvideo_fp8.hunyuan.policies import get_preset

ROUNDS = 3
# big enough that ComfyUI's accounting matters (about 0.5 GB in FP8), head dim 128 as the FP8 kernels need
CONFIG = tiny_config(hidden_size=1536, num_heads=12, depth=4, depth_single_blocks=8, axes_dim=(16, 56, 56),
                     context_in_dim=4096, vec_in_dim=768)
LEAK_TOLERANCE = 64 * 2**20  # allocator rounding and cuBLAS workspaces


def comfy_on_gpu():
    """ComfyUI set up as ``main.py`` sets it up on an NVIDIA GPU (dynamic VRAM where the version has it)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("set COMFYUI_PATH to a ComfyUI source tree")
    return _setup_comfy(path)


@functools.cache
def _setup_comfy(path: str):
    sys.path.insert(0, path)
    sys.dont_write_bytecode = True
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    try:
        import comfy_aimdo.control
    except ImportError:  # 0.3.64: no dynamic VRAM
        comfy_aimdo = None
    if comfy_aimdo is not None and comfy.cli_args.enables_dynamic_vram():
        # as main.py: the allocator library loads before ComfyUI's device set-up touches CUDA, and init_devices
        # does nothing without it
        comfy_aimdo.control.init()
    import comfy.model_management as mm
    import comfy.model_patcher

    dynamic = False
    if comfy_aimdo is None:
        return mm, dynamic
    import comfy.memory_management

    if comfy.cli_args.enables_dynamic_vram() and mm.is_nvidia():
        devices = [d.index for d in mm.get_all_torch_devices()]
        try:
            ok = comfy_aimdo.control.init_devices((d, int(comfy.cli_args.args.vram_headroom * 2**30)) for d in devices)
        except TypeError:
            ok = comfy_aimdo.control.init_devices(iter(devices))
        if ok:
            comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
            comfy.memory_management.aimdo_enabled = True
            dynamic = True
    return mm, dynamic


def random_fill(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.ones(v.shape) if k.endswith("norm.weight") or ".norm" in k and k.endswith(".weight")
                else torch.randn(v.shape, generator=g) * 0.02).to(torch.float16)
            for k, v in module.state_dict().items()}


def text_encoder():
    """A random CLIP-L text encoder through ComfyUI's own loader (a real CLIP patcher, dynamic in 0.29)."""
    import comfy.sd
    import comfy.sd1_clip

    keys = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16).transformer
    return comfy.sd.load_text_encoder_state_dicts([random_fill(keys, 1)],
                                                  clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)


def vae():
    """A random HunyuanVideo 3-D VAE decoder through ComfyUI's own VAE class."""
    import comfy.sd

    probe = comfy.sd.VAE(sd={"decoder.conv_in.conv.weight": torch.zeros(512, 16, 3, 3, 3),
                             "post_quant_conv.weight": torch.zeros(16, 16, 1, 1, 1)})
    sd = {k: v for k, v in random_fill(probe.first_stage_model, 2).items()
          if k.startswith("decoder.") or k.startswith("post_quant_conv.")}
    del probe
    return comfy.sd.VAE(sd=sd)


def conditioning(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 16, CONFIG.context_in_dim, generator=g)
    positive = [[context, {"pooled_output": torch.randn(1, CONFIG.vec_in_dim, generator=g), "guidance": 6.0}]]
    latent = torch.zeros(1, 16, 3, 32, 32)
    return positive, latent, torch.randn(latent.shape, generator=g)


def test_block_swap_when_comfyui_gives_less_than_the_model(caplog):
    mm, _ = comfy_on_gpu()
    import comfy.sample

    from hyvideo_fp8.nodes.comfy_model import wrap_transformer

    policy = get_preset("fp8-balanced")
    transformer = build_random(CONFIG, policy, seed=4, device=mm.unet_offload_device())
    model = wrap_transformer(transformer, CONFIG, policy.compute_dtype, block_swap="auto")
    positive, latent, noise = conditioning()
    full = comfy.sample.sample(model, noise, 3, 1.0, "euler", "simple", positive, positive, latent)
    mm.unload_all_models()
    reserved = mm.EXTRA_RESERVED_VRAM
    free = mm.get_free_memory(mm.get_torch_device())
    mm.EXTRA_RESERVED_VRAM = int(free - model.model_size() // 2)  # leaves about half the model's weights
    try:
        with caplog.at_level("INFO", logger="hyvideo_fp8"):
            streamed = comfy.sample.sample(model, noise, 3, 1.0, "euler", "simple", positive, positive, latent)
        loaded, size = model.loaded_size(), model.model_size()
        swap = transformer.block_swap
        uploads = swap.uploads if swap is not None else 0
    finally:
        mm.EXTRA_RESERVED_VRAM = reserved
        mm.unload_all_models()
    lines = [r.getMessage() for r in caplog.records if "block swap" in r.getMessage()]
    print(f"\nloaded {loaded / 2**20:.0f} of {size / 2**20:.0f} MiB; {uploads} block uploads; {lines}")
    assert swap is not None and uploads > 0 and loaded < size
    assert len(lines) == 1 and "stream from pinned host memory" in lines[0]  # one line says what and why
    assert transformer.block_swap is None and next(transformer.parameters()).device == mm.unet_offload_device()
    assert torch.equal(streamed, full)  # the same weights, streamed


def test_encode_sample_decode_unload_rounds():
    mm, dynamic = comfy_on_gpu()
    import comfy.sample

    from hyvideo_fp8.nodes.comfy_model import wrap_transformer

    device = mm.get_torch_device()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated(device)
    clip, decoder = text_encoder(), vae()
    policy = get_preset("fp8-balanced")
    transformer = build_random(CONFIG, policy, seed=3, device=mm.unet_offload_device())
    model = wrap_transformer(transformer, CONFIG, policy.compute_dtype)
    print(f"\nComfyUI dynamic VRAM: {dynamic}; patchers: text encoder {type(clip.patcher).__name__}, "
          f"VAE {type(decoder.patcher).__name__}, ours {type(model).__name__} ({model.model_size() / 2**20:.0f} MiB)")
    positive, latent, noise = conditioning()
    outputs = []
    for round_ in range(ROUNDS):
        tokens = clip.tokenize("a red fox in the snow")
        cond = clip.encode_from_tokens_scheduled(tokens)
        assert torch.isfinite(cond[0][0]).all()
        samples = comfy.sample.sample(model, noise, 4, 1.0, "euler", "simple", positive, positive, latent)
        assert torch.isfinite(samples).all()
        resident = next(transformer.parameters()).device
        loaded = [type(m.model.model).__name__ for m in mm.current_loaded_models]
        images = decoder.decode(samples)
        assert torch.isfinite(images).all() and images.shape[-1] == 3
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
        mm.unload_all_models()
        mm.soft_empty_cache(True)
        torch.cuda.synchronize()
        after = torch.cuda.memory_allocated(device)
        now = next(transformer.parameters()).device
        print(f"round {round_}: ours sampled on {resident}, loaded {loaded}, peak {peak / 2**20:.0f} MiB, "
              f"after unload {(after - baseline) / 2**20:+.1f} MiB, ours now on {now}")
        assert resident.type == "cuda"
        assert next(transformer.parameters()).device == mm.unet_offload_device()
        assert after - baseline < LEAK_TOLERANCE
        outputs.append(samples)
    for other in outputs[1:]:
        assert torch.equal(other, outputs[0])  # reloading changed nothing
