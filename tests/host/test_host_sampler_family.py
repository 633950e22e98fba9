"""The HunyuanVideo FP8 Sampler node on every family member against ComfyUI's own sampler (``comfy.sample.sample``,
what KSampler runs: euler, simple schedule) on the same MODEL, seed and shift, with the conditioning ComfyUI's own
nodes make: 1.5 text-to-video (byT5 glyph text, a negative prompt of another length and without byT5), 1.5
image-to-video and the step-distilled 1.5 image-to-video through ``HunyuanVideo15ImageToVideo`` (a tiny 1.5 VAE of
ComfyUI's own class encodes the start image), 1.5 super-resolution through ``HunyuanVideo15SuperResolution``, v1
image-to-video (``HunyuanImageToVideo``'s concat, replace (a noise mask keeping the start frame) and reference
latent), SkyReels. fp32 in-process on the CPU; what
the node cannot apply is refused by name.

Runs only when ``COMFYUI_PATH`` points at a ComfyUI source tree that imports; the 1.5 cases need ComfyUI 0.29+.
"""

from __future__ import annotations

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_variant_config
from tests.host.test_host_family_models import V1, V15, _both, _positive, _vision
from tests.host.test_host_family_parity import _fields, _rel

BOUND = 1e-4  # fp32, the family parity bound; the node and ComfyUI's sampler run the same transformer
STEPS = 4  # divides 1000: ComfyUI's "simple" schedule then picks exactly our sigmas
SEED = 7


def _needs_15() -> None:
    if "vision_in_dim" not in _fields():
        pytest.skip("this ComfyUI has no HunyuanVideo 1.5 (0.29+ has)")


def _node(model, positive, latent: torch.Tensor, cfg: float, negative=None, noise_mask=None, **kw) -> torch.Tensor:
    from hyvideo_fp8.nodes.sampler import HyVideoFP8Sampler

    args = dict(seed=SEED, steps=STEPS, shift=model.model.model_sampling.shift, guidance=6.0, cfg=cfg,
                hybrid_first_steps=0, hybrid_last_steps=0, negative=negative)
    entry = {"samples": latent} if noise_mask is None else {"samples": latent, "noise_mask": noise_mask}
    return HyVideoFP8Sampler().run(model, positive, entry, **{**args, **kw})[0]["samples"]


def _comfy(model, positive, latent: torch.Tensor, cfg: float, negative=None, noise_mask=None) -> torch.Tensor:
    """ComfyUI's KSampler path: its noise for the seed, euler, simple."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, SEED)
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", positive,
                               positive if negative is None else negative, latent, noise_mask=noise_mask, seed=SEED)


def _negative(cfg, seed: int = 9) -> list:
    """Another prompt, 5 tokens where the positive has 9 (the node pads it with a mask), without byT5."""
    g = torch.Generator().manual_seed(seed)
    pooled = torch.randn(1, cfg.vec_in_dim, generator=g) if cfg.vec_in_dim else None
    return [[torch.randn(1, 5, cfg.context_in_dim, generator=g), {"pooled_output": pooled}]]


def _byt5(tokens: int = 6) -> torch.Tensor:
    return torch.randn(1, tokens, 1472, generator=torch.Generator().manual_seed(4))


def _image_to_video_15(positive: list, negative: list, frames: int = 9):
    """ComfyUI's own HunyuanVideo15ImageToVideo (64x64, ``frames`` frames) with a start image and SigLIP states,
    its VAE a random tiny 1.5 autoencoder of ComfyUI's own class (lighttae, 32 channels, 16x)."""
    import comfy.sd
    from comfy_extras.nodes_hunyuan import HunyuanVideo15ImageToVideo

    vae = comfy.sd.VAE(sd={"decoder.1.weight": torch.zeros(256, 32, 3, 3), "decoder.22.bias": torch.zeros(12)})
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=g) * (v[0].numel() ** -0.5 if v.ndim > 1 else 0.02)
               for k, v in vae.first_stage_model.state_dict().items()}
    vae.first_stage_model.load_state_dict(weights)
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(5))  # another aspect than the video's
    out = HunyuanVideo15ImageToVideo.execute(positive, negative, vae, width=64, height=64, length=frames,
                                             batch_size=1, start_image=image, clip_vision_output=_vision(5, 1152))
    return out.result


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_15_text_to_video(cfg_scale):
    """1.5 T2V: no pooled vector, no guidance embedding, 33 zero image-conditioning channels, byT5 in the positive
    only (so the two CFG halves run as two forwards, as ComfyUI runs conditionings it cannot batch)."""
    _needs_15()
    cfg = tiny_variant_config("1.5", **V15)
    ours, _ = _both(cfg, seed=5)
    positive = _positive(cfg, {"conditioning_byt5small": _byt5()})
    negative = _negative(cfg)
    latent = torch.zeros(1, 32, 3, 4, 4)  # EmptyHunyuanVideo15Latent's layout
    got = _node(ours, positive, latent, cfg_scale, negative)
    want = _comfy(ours, positive, latent, cfg_scale, negative)
    assert got.shape == latent.shape and torch.isfinite(got).all()
    assert _rel(got, want) < BOUND  # measured 2.9e-07 (cfg 1) and 1.1e-06 (cfg 3, two forwards) on 0.29.0


@pytest.mark.parametrize("meanflow", [False, True], ids=["1.5-i2v", "1.5-i2v-step-distilled"])
def test_15_image_to_video_through_comfyuis_node(meanflow):
    """HunyuanVideo15ImageToVideo's image latent, mask and vision states reach the model as ComfyUI gives them; the
    step-distilled model's meanflow target comes from the sigmas the sampler passes."""
    _needs_15()
    cfg = tiny_variant_config("1.5", meanflow=meanflow, **V15)
    ours, _ = _both(cfg, seed=6)
    positive, negative, latent = _image_to_video_15(_positive(cfg, {}), _negative(cfg))
    latent = latent["samples"]
    assert latent.shape == (1, 32, 3, 4, 4)
    cfg_scale = 1.0 if meanflow else 3.0  # the step-distilled workflow samples at CFG 1
    got = _node(ours, positive, latent, cfg_scale, negative)
    want = _comfy(ours, positive, latent, cfg_scale, negative)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < BOUND  # measured 1.2e-06 (i2v, CFG 3) and 2.9e-07 (step-distilled) on 0.29.0
    text_only = _node(ours, _positive(cfg, {}), latent, cfg_scale, _negative(cfg))
    assert _rel(text_only, got) > 1e-2  # the start image changed the video: measured 0.12 and 0.075


def test_15_super_resolution_through_comfyuis_node():
    """HunyuanVideo15SuperResolution's low-resolution latent, mask and noise augmentation (drawn from the seed inside
    the model's own ``extra_conds``) reach the super-resolution model; its ``disable_time_r`` flag passes as given."""
    _needs_15()
    from comfy_extras.nodes_hunyuan import HunyuanVideo15SuperResolution

    cfg = tiny_variant_config("1.5-sr", **V15)
    ours, _ = _both(cfg, seed=7)
    low_res = {"samples": torch.randn(1, 32, 3, 4, 4, generator=torch.Generator().manual_seed(8))}
    positive, negative, latent = HunyuanVideo15SuperResolution.execute(
        _positive(cfg, {}), _negative(cfg), low_res, noise_augmentation=0.7, clip_vision_output=_vision(5, 1152)).result
    got = _node(ours, positive, latent["samples"], 2.0, negative)
    want = _comfy(ours, positive, latent["samples"], 2.0, negative)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < BOUND  # measured 6.6e-07 on 0.29.0


V1_CONDITIONING = {
    # HunyuanImageToVideo's "v1 (concat)": the image latent and its mask concatenated (33 input channels)
    "i2v-concat": ("v1-i2v", lambda lat: {"concat_latent_image": lat[:, :, :1].clone(),
                                          "concat_mask": torch.cat([torch.zeros(1, 1, 1, 4, 4),
                                                                    torch.ones(1, 1, 2, 4, 4)], dim=2)}),
    "skyreels": ("v1-skyreels-i2v", lambda lat: {"concat_latent_image": lat[:, :, :1].clone()}),
    # its "custom": a reference latent (CFG 1: ComfyUI's own model takes one only at batch 1)
    "reference": ("v1", lambda lat: {"ref_latent": lat[:, :, :1].clone()}),
}


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_v1_image_to_video_replace_mode(cfg_scale):
    """HunyuanImageToVideo's "v2 (replace)": the start frame's latent in the latent, a noise mask keeping it, and the
    guiding frame index (token replace) on the positive prompt only."""
    cfg = tiny_variant_config("v1-i2v", **V1)
    ours, _ = _both(cfg, seed=3)
    latent = torch.zeros(1, 16, 3, 4, 4)
    latent[:, :, :1] = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 1, 3, 4, 4)
    mask[:, :, :1] = 0.0
    positive = _positive(cfg, {"guiding_frame_index": 0})
    negative = None if cfg_scale == 1.0 else _negative(cfg)
    got = _node(ours, positive, latent, cfg_scale, negative, noise_mask=mask)
    want = _comfy(ours, positive, latent, cfg_scale, negative, noise_mask=mask)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < BOUND  # measured 0 (cfg 1) and 2.7e-07 (cfg 2.5, two forwards) on 0.29.0 and 0.3.64
    assert torch.allclose(got[:, :, :1], latent[:, :, :1], rtol=0, atol=1e-6)  # the start frame is kept


@pytest.mark.parametrize("case", sorted(V1_CONDITIONING))
def test_v1_image_to_video(case):
    variant, conditioning = V1_CONDITIONING[case]
    cfg = tiny_variant_config(variant, **V1)
    ours, _ = _both(cfg, seed=3)
    start = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    positive = _positive(cfg, conditioning(start))
    latent = torch.zeros(1, 16, 3, 4, 4)
    cfg_scale = 1.0 if case == "reference" else 2.5
    negative = None if cfg_scale == 1.0 else _negative(cfg)  # text only: its image channels are the empty latent's
    got = _node(ours, positive, latent, cfg_scale, negative)
    want = _comfy(ours, positive, latent, cfg_scale, negative)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < BOUND  # measured 2.5e-07 to 4.7e-07 (0.29.0 and 0.3.64 alike)


def test_what_the_node_cannot_apply_is_refused_by_name():
    cfg = tiny_variant_config("v1-i2v", **V1)
    ours, _ = _both(cfg, seed=3)
    latent = torch.zeros(1, 16, 3, 4, 4)
    area = _positive(cfg, {"area": (2, 2, 0, 0), "strength": 1.0})
    with pytest.raises(ValueError, match="positive conditioning carries 'area', 'strength'.*KSampler"):
        _node(ours, area, latent, 1.0)
    from hyvideo_fp8.nodes.sampler import HyVideoFP8Sampler

    with pytest.raises(ValueError, match="latent carries 'batch_index'.*KSampler"):  # LatentFromBatch's
        HyVideoFP8Sampler().run(ours, _positive(cfg, {}), {"samples": latent, "batch_index": [3]}, seed=0, steps=2,
                                shift=7.0, guidance=6.0, cfg=1.0, hybrid_first_steps=0, hybrid_last_steps=0)
    soft = ours.clone()
    soft.model_options["denoise_mask_function"] = lambda sigma, mask, extra_options: mask  # Differential Diffusion's
    with pytest.raises(ValueError, match="denoise_mask_function.*KSampler"):
        _node(soft, _positive(cfg, {}), latent, 1.0, noise_mask=torch.ones(1, 1, 3, 4, 4))
    with pytest.raises(ValueError, match="guidance 3.5 \\(FluxGuidance\\).*widget is 6.0"):
        _node(ours, _positive(cfg, {"guidance": 3.5}), latent, 1.0)
    with pytest.raises(ValueError, match="negative conditioning has 3584-wide token states.*takes 32"):
        _node(ours, _positive(cfg, {}), latent, 2.0, [[torch.randn(1, 4, 3584), {"pooled_output": None}]])


def test_15_model_refuses_a_v1_latent_and_v1_text():
    _needs_15()
    cfg = tiny_variant_config("1.5", **V15)
    ours, _ = _both(cfg, seed=5)
    with pytest.raises(ValueError, match="latent has 16 channels, the model takes 32.*EmptyHunyuanVideo15Latent"):
        _node(ours, _positive(cfg, {}), torch.zeros(1, 16, 3, 8, 8), 1.0)
    v1_text = [[torch.randn(1, 6, 4096), {"pooled_output": torch.randn(1, 768)}]]
    with pytest.raises(ValueError, match="4096-wide token states.*hunyuan_video_15"):
        _node(ours, v1_text, torch.zeros(1, 32, 3, 4, 4), 1.0)


def test_model_features_it_would_not_apply_are_refused_by_name():
    """EasyCache (wrappers), SkipLayerGuidanceDiT (a post-CFG function) and ModelSamplingSD3 with another shift than
    the sampler's, each from ComfyUI's own node, stop the sampler with their names before anything loads; the same
    shift as the widget is fine."""
    cfg = tiny_variant_config("v1-i2v", **V1)
    ours, _ = _both(cfg, seed=3)  # skips without a ComfyUI tree
    from comfy_extras.nodes_easycache import EasyCacheNode
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    latent, positive = torch.zeros(1, 16, 3, 4, 4), _positive(cfg, {})
    cached = EasyCacheNode.execute(ours, 0.2, 0.15, 0.95, False).result[0]
    with pytest.raises(ValueError, match="wrapper .*'easycache'.*KSampler or SamplerCustomAdvanced"):
        _node(cached, positive, latent, 1.0)
    slg = SkipLayerGuidanceDiT.execute(ours, 3.0, 0.0, 1.0, "1", "1").result[0]
    with pytest.raises(ValueError, match="sampler_post_cfg_function"):
        _node(slg, positive, latent, 1.0)
    shifted = ModelSamplingSD3().patch(ours, 3.0)[0]
    with pytest.raises(ValueError, match="model_sampling patch with shift 3 .*widget is 7"):
        _node(shifted, positive, latent, 1.0, shift=7.0)
    assert torch.isfinite(_node(shifted, positive, latent, 1.0, shift=3.0)).all()


def test_quality_report_node_on_a_15_model(tmp_path):
    """The Quality Report node takes a 1.5 model with ComfyUI-style 1.5 conditioning (byT5 glyph tokens, no pooled
    vector) and judges it by 1.5's error budgets."""
    _needs_15()
    import folder_paths

    from hyvideo_fp8.hunyuan.loader import load_transformer
    from hyvideo_fp8.hunyuan.policies import get_preset
    from hyvideo_fp8.nodes.comfy_model import wrap_transformer
    from hyvideo_fp8.nodes.quality import HyVideoFP8QualityReport
    from tests.host.test_host_family_models import _weights

    cfg = tiny_variant_config("1.5", **V15)
    model = wrap_transformer(load_transformer(_weights(cfg, 5), get_preset("bf16")), cfg, "bf16")
    positive = _positive(cfg, {"conditioning_byt5small": _byt5()})
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        out = HyVideoFP8QualityReport().report(model, positive, {"samples": torch.zeros(1, 32, 3, 4, 4)}, "fp8-max",
                                               steps=2, seed=3, shift=7.0, guidance=6.0, noise_floor=False)
    finally:
        folder_paths.set_output_directory(before)
    text = out["result"][0]
    assert f"budget {get_preset('fp8-max').budget_for('1.5'):g}" in text and "fp8-max: PASS" in text, text
    assert list(tmp_path.rglob("report.json"))
