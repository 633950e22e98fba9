"""Our transformer against ComfyUI's native ``comfy.ldm.hunyuan_video.model.HunyuanVideo``, same weights, fp32.

Runs only when ``COMFYUI_PATH`` points at a ComfyUI source tree that imports (e.g.
``COMFYUI_PATH=/work/ComfyUI /work/comfy-venv/bin/python -m pytest -q tests/host/test_host_model_parity.py``).
"""

from __future__ import annotations

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import load_transformer, random_state_dict
from hyvideo_fp8.hunyuan.policies import get_preset
from tests.host.native import comfy_on_cpu

CFG = tiny_config()


def _weights(seed: int) -> dict[str, torch.Tensor]:
    """Random weights strong enough that attention, RoPE and the norms matter (std 0.1, norm scales 1 +- 0.2)."""
    sd = random_state_dict(CFG, seed)
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith(".scale") or k.endswith(".norm1.weight") or k.endswith(".norm2.weight"):
            sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = v * 5
    return sd


def _native_params() -> dict:
    """The v1 model's constructor fields at the tiny size. Fields a newer ComfyUI added for other family members
    (HunyuanVideo 1.5's cond-type embedding, vision input, meanflow sum) get the values its detection gives v1."""
    import dataclasses

    from comfy.ldm.hunyuan_video.model import HunyuanVideoParams

    v1 = dict(in_channels=CFG.in_channels, out_channels=CFG.out_channels, vec_in_dim=CFG.vec_in_dim,
              context_in_dim=CFG.context_in_dim, hidden_size=CFG.hidden_size, mlp_ratio=CFG.mlp_ratio,
              num_heads=CFG.num_heads, depth=CFG.depth, depth_single_blocks=CFG.depth_single_blocks,
              axes_dim=list(CFG.axes_dim), theta=int(CFG.theta), patch_size=list(CFG.patch_size),
              qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
              use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False)
    return {f.name: v1[f.name] for f in dataclasses.fields(HunyuanVideoParams)}


def _models(seed: int):
    """ComfyUI's own model (its state dict spelling applied by its own ``process_unet_state_dict``) and ours, from
    the same weights."""
    native, ops = comfy_on_cpu()
    HunyuanVideo = native.HunyuanVideo
    import comfy.supported_models

    sd = _weights(seed)
    ref = HunyuanVideo(image_model=None, final_layer=True, dtype=torch.float32, device="cpu", operations=ops,
                       **_native_params())
    native_sd = comfy.supported_models.HunyuanVideo({"image_model": "hunyuan_video"}).process_unet_state_dict(
        dict(sd))
    ref.load_state_dict(native_sd, strict=True)
    ours = load_transformer(dict(sd), None, dtype=torch.float32)
    return ref.eval(), ours


def _inputs(b: int, t: int, h: int, w: int, n_txt: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, CFG.in_channels, t, h, w, generator=g)
    ctx = torch.randn(b, n_txt, CFG.context_in_dim, generator=g)
    y = torch.randn(b, CFG.vec_in_dim, generator=g)
    ts = torch.rand(b, generator=g) * 1000
    guidance = torch.full((b,), 6.0)
    return x, ts, ctx, y, guidance


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("b,t,h,w,n_txt", [(1, 3, 4, 6, 9), (2, 2, 6, 8, 5)])
def test_matches_comfyui_unmasked(b, t, h, w, n_txt):
    ref, ours = _models(seed=11)
    x, ts, ctx, y, g = _inputs(b, t, h, w, n_txt, seed=3)
    with torch.no_grad():
        want = ref(x, ts, ctx, y, guidance=g)
        got = ours(x, ts, ctx, y, guidance=g)
    assert got.shape == want.shape == x.shape
    assert torch.isfinite(got).all()
    assert _rel(got, want) < 1e-4  # measured 2.6e-07 and 2.7e-07


def test_matches_comfyui_with_text_mask():
    """ComfyUI takes a [1, L] 0/1 mask at batch 1. It pools the text with an unmasked mean (we use Tencent's
    masked mean), so the padding tokens here equal the valid tokens' mean: both pooled vectors then agree and
    the comparison isolates the attention masking."""
    ref, ours = _models(seed=12)
    x, ts, ctx, y, g = _inputs(1, 2, 4, 6, 7, seed=4)
    n_pad = 4
    pad = ctx.mean(dim=1, keepdim=True).expand(1, n_pad, -1)
    ctx_padded = torch.cat([ctx, pad], dim=1)
    mask = torch.cat([torch.ones(1, 7, dtype=torch.long), torch.zeros(1, n_pad, dtype=torch.long)], dim=1)
    with torch.no_grad():
        want = ref(x, ts, ctx_padded, y, guidance=g, attention_mask=mask)
        got = ours(x, ts, ctx_padded, y, guidance=g, attention_mask=mask)
        unpadded = ours(x, ts, ctx, y, guidance=g)
        unmasked_ref = ref(x, ts, ctx_padded, y, guidance=g)
    assert _rel(got, want) < 1e-4  # measured 2.8e-07
    assert _rel(unpadded, want) < 1e-4  # measured 2.8e-07: masking == dropping the padding
    assert _rel(unmasked_ref, want) > 1e-3  # the mask really matters in this setup (measured 0.079)


def test_bf16_preset_as_accurate_as_comfyui_bf16():
    """Both in bf16 against ComfyUI in fp32: our bf16 preset (fp32 norms, RoPE and softmax) must not be less
    accurate than ComfyUI's own bf16 model on the same weights."""
    ref, _ = _models(seed=11)
    ref16 = _models(seed=11)[0].to(torch.bfloat16)
    ours16 = load_transformer(_weights(11), get_preset("bf16"))
    x, ts, ctx, y, g = _inputs(2, 2, 6, 8, 5, seed=3)
    with torch.no_grad():
        want = ref(x, ts, ctx, y, guidance=g)
        comfy_err = _rel(ref16(x.bfloat16(), ts, ctx.bfloat16(), y.bfloat16(), guidance=g), want)
        ours_err = _rel(ours16(x.bfloat16(), ts, ctx.bfloat16(), y.bfloat16(), guidance=g), want)
    assert ours_err < 1.25 * comfy_err  # measured 1.00e-02 vs ComfyUI's 1.03e-02
