"""Our loader's MODEL for each family member against the MODEL ComfyUI's own loader builds from the same weights: the
same ``model_base`` class, latent format and model sampling, and the same samples from ComfyUI's sampler with the
conditioning its image-to-video nodes set (concatenated image latent and mask, guiding frame, reference latent, byT5
and SigLIP vision states, meanflow through the sampler's sigmas). In-process, fp32, on the CPU.

Runs only when ``COMFYUI_PATH`` points at a ComfyUI source tree that imports; the 1.5 cases need ComfyUI 0.29+.
"""

from __future__ import annotations

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_variant_config
from hyvideo_fp8.hunyuan.loader import load_transformer
from tests.host.native import comfy_on_cpu
from tests.host.test_host_family_parity import COMFY_BYT5, _fields, _rel, _weights

# What ComfyUI's detection can express: head dim 128, RoPE axes (16, 56, 56), a 768-d pooled vector for v1.
V1 = dict(hidden_size=128, num_heads=1, axes_dim=(16, 56, 56), depth=1, vec_in_dim=768)
V15 = dict(hidden_size=128, num_heads=1, axes_dim=(16, 56, 56), depth=2, byt5_dims=COMFY_BYT5, vision_in_dim=1152)


def _both(cfg, seed: int = 0):
    """(ours, ComfyUI's own) MODEL of the same random weights, fp32."""
    comfy_on_cpu()
    import comfy.sd

    from hyvideo_fp8.nodes.comfy_model import wrap_transformer

    sd = _weights(cfg, seed)
    ours = wrap_transformer(load_transformer(dict(sd), None, dtype=torch.float32), cfg, "fp32")
    stock = comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options={"dtype": torch.float32})
    return ours, stock


def _positive(cfg, extra: dict, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    # 1.5's text encoder has no pooled vector: ComfyUI's conditioning carries None there
    opts = {"pooled_output": torch.randn(1, cfg.vec_in_dim, generator=g) if cfg.vec_in_dim else None}
    if cfg.guidance_embed:
        opts["guidance"] = 6.0
    return [[torch.randn(1, 9, cfg.context_in_dim, generator=g), {**opts, **extra}]]


def _sample(model, positive: list, latent: torch.Tensor, cfg: float = 2.0, steps: int = 3) -> torch.Tensor:
    """ComfyUI's sampler; CFG above 1 runs the conditional and unconditional passes as one batch of 2."""
    import comfy.sample

    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, positive, latent)


def _same_model(ours, stock) -> None:
    assert type(ours.model) is type(stock.model)
    assert type(ours.model.latent_format) is type(stock.model.latent_format)
    assert type(ours.model.model_config) is type(stock.model.model_config)
    assert ours.model.model_sampling.shift == stock.model.model_sampling.shift


def _vision(tokens: int, dim: int):
    import comfy.clip_vision

    out = comfy.clip_vision.Output()
    out["last_hidden_state"] = torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(3))
    return out


V1_CASES = {
    # HunyuanImageToVideo's "v1 (concat)": the image latent and its mask concatenated (33 input channels)
    "i2v-concat": ("v1-i2v", {}, lambda lat: {"concat_latent_image": lat[:, :, :1].clone(),
                                              "concat_mask": torch.ones(1, 1, lat.shape[2], *lat.shape[-2:])}),
    # its "v2 (replace)": the guiding frame's tokens (double-stream blocks only, see test_host_family_parity; at CFG 1:
    # ComfyUI 0.3.64's own model takes one only at batch 1)
    "i2v-replace": ("v1-i2v", {"depth_single_blocks": 0}, lambda lat: {"guiding_frame_index": 0}),
    "skyreels": ("v1-skyreels-i2v", {}, lambda lat: {"concat_latent_image": lat[:, :, :1].clone()}),
    # its "custom": a reference latent (at CFG 1: ComfyUI's own model takes one only at batch 1)
    "reference": ("v1", {}, lambda lat: {"ref_latent": lat[:, :, :1].clone()}),
}


@pytest.mark.parametrize("case", sorted(V1_CASES))
def test_v1_image_to_video_models(case):
    variant, over, conditioning = V1_CASES[case]
    cfg = tiny_variant_config(variant, **{**V1, **over})
    ours, stock = _both(cfg)
    _same_model(ours, stock)
    start = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    positive = _positive(cfg, conditioning(start))
    latent = torch.zeros(1, 16, 3, 4, 4)
    cfg_scale = 1.0 if case in ("reference", "i2v-replace") else 2.0
    got, want = _sample(ours, positive, latent, cfg_scale), _sample(stock, positive, latent, cfg_scale)
    assert _rel(got, want) < 1e-4  # measured 2.5e-07 to 2.9e-07 (0.29.0 and 0.3.64)


@pytest.mark.parametrize("variant,meanflow", [("1.5", False), ("1.5", True), ("1.5-sr", False)],
                         ids=["1.5", "1.5-step-distilled", "1.5-sr"])
def test_v15_models(variant, meanflow):
    """HunyuanVideo15ImageToVideo's conditioning (image latent, mask, SigLIP states) plus byT5 glyph text; the
    step-distilled model takes its meanflow target from the sigmas ComfyUI's sampler passes."""
    if "vision_in_dim" not in _fields():
        pytest.skip("this ComfyUI has no HunyuanVideo 1.5 (0.29+ has)")
    cfg = tiny_variant_config(variant, meanflow=meanflow, **V15)
    ours, stock = _both(cfg, seed=5)
    _same_model(ours, stock)
    start = torch.randn(1, 32, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    extra = {"concat_latent_image": torch.cat([start, torch.zeros(1, 32, 2, 4, 4)], dim=2),
             "concat_mask": torch.ones(1, 1, 3, 4, 4), "clip_vision_output": _vision(5, 1152),
             "conditioning_byt5small": torch.randn(1, 6, 1472, generator=torch.Generator().manual_seed(4))}
    if variant == "1.5-sr":  # HunyuanVideo15SuperResolution's layout: [image | mask | low-res latent | ones]
        low_res = torch.randn(1, 32, 3, 4, 4, generator=torch.Generator().manual_seed(2))
        cond = torch.zeros(1, 66, 3, 4, 4)
        cond[:, 33:65], cond[:, 65] = low_res, 1
        extra = {"concat_latent_image": cond, "noise_augmentation": 0.0, "clip_vision_output": _vision(5, 1152)}
    positive = _positive(cfg, extra)
    latent = torch.zeros(1, 32, 3, 4, 4)
    assert _rel(_sample(ours, positive, latent), _sample(stock, positive, latent)) < 1e-4  # measured 2.3e-07 to 4.0e-07


def test_v15_on_a_comfyui_without_it_names_the_version_needed():
    comfy_on_cpu()
    import comfy.supported_models

    if hasattr(comfy.supported_models, "HunyuanVideo15"):
        pytest.skip("this ComfyUI runs HunyuanVideo 1.5")
    from hyvideo_fp8.nodes.comfy_model import wrap_transformer

    cfg = tiny_variant_config("1.5")
    transformer = load_transformer(_weights(cfg, 0), None, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"update ComfyUI to 0\.3\.71 or newer"):
        wrap_transformer(transformer, cfg, "fp32")


@pytest.mark.parametrize("fp8", ["scaled_fp8", "comfy_quant"])
def test_v15_fp8_scaled_file_reads_as_comfyui_reads_it(tmp_path, fp8):
    """A 1.5 file in ComfyUI's FP8 formats (what Comfy-Org's ``*_fp8_scaled`` files use): ComfyUI's own loader and
    ours read the same weights (ours dequantized here, fp32), so the samples agree."""
    if "vision_in_dim" not in _fields():
        pytest.skip("this ComfyUI has no HunyuanVideo 1.5 (0.29+ has)")
    comfy_on_cpu()
    import comfy.sd

    from hyvideo_fp8.hunyuan.checkpoint import load_canonical_state_dict
    from hyvideo_fp8.nodes.comfy_model import wrap_transformer
    from tests.checkpoint_factory import write_checkpoint

    cfg = tiny_variant_config("1.5", **V15)
    path = tmp_path / "hv15_fp8_scaled.safetensors"
    write_checkpoint(path, fp8=fp8, config=cfg, dtype=torch.float32)
    sd, info = load_canonical_state_dict(path)
    assert info.config == cfg and info.fp8_flavour == fp8
    ours = wrap_transformer(load_transformer(sd, None, dtype=torch.float32), cfg, "fp32")
    stock = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})
    _same_model(ours, stock)
    extra = {"clip_vision_output": _vision(5, 1152),
             "conditioning_byt5small": torch.randn(1, 6, 1472, generator=torch.Generator().manual_seed(4))}
    positive = _positive(cfg, extra)
    latent = torch.zeros(1, 32, 3, 4, 4)
    assert _rel(_sample(ours, positive, latent), _sample(stock, positive, latent)) < 1e-4  # measured 2.0e-07 (both)


@pytest.mark.parametrize("output_format", ["scaled_fp8", "comfy_quant"])
def test_converted_v15_file_runs_in_comfyuis_own_loader(tmp_path, output_format):
    """Our converter's ComfyUI-readable layouts on a 1.5 file: ComfyUI's own loader builds its 1.5 model from the
    converted file and samples what ours samples from it (ours dequantized here, fp32)."""
    if "vision_in_dim" not in _fields():
        pytest.skip("this ComfyUI has no HunyuanVideo 1.5 (0.29+ has)")
    comfy_on_cpu()
    import comfy.sd

    from hyvideo_fp8.hunyuan.checkpoint import load_canonical_state_dict
    from hyvideo_fp8.hunyuan.checkpoint.convert import convert_checkpoint
    from hyvideo_fp8.nodes.comfy_model import wrap_transformer
    from tests.checkpoint_factory import write_checkpoint

    cfg = tiny_variant_config("1.5", meanflow=True, **V15)
    src, dst = tmp_path / "hv15.safetensors", tmp_path / f"hv15_{output_format}.safetensors"
    write_checkpoint(src, layout="tencent", config=cfg, dtype=torch.float32)
    convert_checkpoint(src, dst, "fp8-max", output_format=output_format)
    sd, info = load_canonical_state_dict(dst)
    assert info.config == cfg
    ours = wrap_transformer(load_transformer(sd, None, dtype=torch.float32), cfg, "fp32")
    stock = comfy.sd.load_diffusion_model(str(dst), model_options={"dtype": torch.float32})
    _same_model(ours, stock)
    positive = _positive(cfg, {"clip_vision_output": _vision(5, 1152)})
    latent = torch.zeros(1, 32, 3, 4, 4)
    assert _rel(_sample(ours, positive, latent), _sample(stock, positive, latent)) < 1e-4  # measured 2.3e-07 (both)


@pytest.mark.parametrize("family", ["v1", "1.5"])
def test_comfyui_plans_with_our_activation_estimate(family):
    """ComfyUI sizes partial loads from ``BaseModel.memory_required``: ours answers with the transformer's own
    estimate (batch and token chunk included), which at a full-size video is below ComfyUI's generic one."""
    from hyvideo_fp8.hunyuan.config import RELEASED, RELEASED_15
    from hyvideo_fp8.hunyuan.offload import estimate_activation_bytes

    if family == "1.5" and "vision_in_dim" not in _fields():
        pytest.skip("this ComfyUI has no HunyuanVideo 1.5 (0.29+ has)")
    cfg = tiny_variant_config(family, **(V1 if family == "v1" else V15))
    ours, stock = _both(cfg)
    full = RELEASED if family == "v1" else RELEASED_15
    shape = [2, *cfg.latent_shape(1, 1280, 720, 129)[1:]]
    inner = ours.model.diffusion_model
    for chunk in (inner.token_chunk, 4096):
        inner.token_chunk = chunk
        assert ours.model.memory_required(shape, cond_shapes={}) == \
            estimate_activation_bytes(cfg.hidden_size, cfg.patch_size, shape, chunk)
    scale = full.hidden_size / cfg.hidden_size  # the tiny model's estimate at the full model's width
    assert ours.model.memory_required(shape) * scale < stock.model.memory_required(shape)
