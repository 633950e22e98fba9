"""HunyuanVideoTransformer on CPU with tiny configs: names, float64 agreement, FP8 policies, shapes, text masks.

The float64 comparisons here run the pack's own code in another precision: they catch precision bugs, not formula
bugs. The formulas are checked against equations written independently of this code in
``tests/test_block_equations.py`` (CPU) and against ComfyUI's own model in ``tests/host`` (with a ComfyUI checkout).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyvideo_fp8.fp8.linear import FP8Linear
from hyvideo_fp8.hunyuan.attention import attention
from hyvideo_fp8.hunyuan.config import RELEASED, canonical_shapes, tiny_config
from hyvideo_fp8.hunyuan.loader import load_transformer
from hyvideo_fp8.hunyuan.model import HunyuanVideoTransformer
from hyvideo_fp8.hunyuan.policies import get_preset
from tests.tiny_model import CFG, rel


def make_inputs(b=1, t=2, h=4, w=6, n_txt=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, CFG.in_channels, t, h, w, generator=g, dtype=torch.float64)
    ctx = torch.randn(b, n_txt, CFG.context_in_dim, generator=g, dtype=torch.float64)
    y = torch.randn(b, CFG.vec_in_dim, generator=g, dtype=torch.float64)
    ts = torch.rand(b, generator=g, dtype=torch.float64) * 1000
    return dict(x=x.to(dtype), timestep=ts.float(), context=ctx.to(dtype), y=y.to(dtype),
                guidance=torch.full((b,), 6.0))


@pytest.fixture(scope="module")
def model32(sd):
    return load_transformer(dict(sd), None, dtype=torch.float32)


@pytest.fixture(scope="module")
def ref64(sd):
    """Output of the float64 model on the standard inputs (the reference for precision tests)."""
    m = load_transformer(dict(sd), None, dtype=torch.float64)
    with torch.no_grad():
        return m(**make_inputs(dtype=torch.float64))


# --- structure ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [CFG, tiny_config(depth=1, depth_single_blocks=3, guidance_embed=False, vec_in_dim=0),
                                 RELEASED], ids=["tiny", "tiny-no-guidance-no-vec", "released-13B"])
def test_parameter_names_and_shapes_are_canonical(cfg):
    model = HunyuanVideoTransformer(cfg, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(shapes) == set(canonical_shapes(cfg))
    assert shapes == canonical_shapes(cfg)
    assert all(type(m) is not torch.nn.Linear or m.weight.is_meta for m in model.modules())


# --- numerics -----------------------------------------------------------------------------------------------------

def test_fp32_forward_matches_float64(model32, ref64):
    with torch.no_grad():
        out = model32(**make_inputs(dtype=torch.float32))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel(out, ref64) < 1e-5  # measured 3.2e-07


# Relative L2 error of each preset against the float64 reference, and (bound) against the bf16 preset's output.
# Measured on this tiny model (vs float64 / vs bf16): bf16 8.2e-03; fp8-weight-only 3.2e-02 / 3.1e-02;
# fp8-balanced 2.5e-02 / 2.5e-02 (boundary blocks in bf16); fp8-max 6.5e-02 / 6.6e-02.
@pytest.mark.parametrize("preset,bound", [("fp8-weight-only", 0.06), ("fp8-balanced", 0.05), ("fp8-max", 0.1)])
def test_fp8_presets_close_to_bf16(sd, preset, bound):
    inputs = make_inputs(dtype=torch.bfloat16)
    with torch.no_grad():
        bf16_out = load_transformer(dict(sd), get_preset("bf16"))(**inputs)
        model = load_transformer(dict(sd), get_preset(preset))
        out = model(**inputs)
    expected_mode = "fp8-weight-only" if preset == "fp8-weight-only" else "fp8"
    assert any(isinstance(m, FP8Linear) and m.effective_mode.value == expected_mode for m in model.modules())
    assert ("fp8" in model.attention_modes()[1]) == (preset != "fp8-weight-only")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel(out, bf16_out) < bound


def test_bf16_preset_close_to_float64(sd, ref64):
    with torch.no_grad():
        out = load_transformer(dict(sd), get_preset("bf16"))(**make_inputs(dtype=torch.bfloat16))
    assert rel(out, ref64) < 2e-2  # measured 8.2e-03


def test_set_policy_switches_without_reloading(sd):
    """fp8-balanced -> fp8-weight-only at run time equals loading fp8-weight-only directly."""
    inputs = make_inputs(dtype=torch.bfloat16)
    model = load_transformer(dict(sd), get_preset("fp8-balanced"))
    fp8_weight = model.double_blocks[1].img_attn.qkv.weight
    model.set_policy(get_preset("fp8-weight-only"))
    assert model.double_blocks[1].img_attn.qkv.weight is fp8_weight  # same FP8 tensor, only the mode changed
    assert isinstance(model.double_blocks[0].img_mod.lin, FP8Linear)  # was bf16 (boundary block), now FP8 storage
    with torch.no_grad():
        switched = model(**inputs)
        direct = load_transformer(dict(sd), get_preset("fp8-weight-only"))(**inputs)
    assert torch.equal(switched, direct)


# --- shapes -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b,t,h,w,n_txt", [(1, 1, 4, 6, 3), (1, 2, 6, 8, 5), (2, 3, 4, 6, 1), (1, 3, 2, 2, 11)])
def test_output_shapes(model32, b, t, h, w, n_txt):
    with torch.no_grad():
        out = model32(**make_inputs(b, t, h, w, n_txt))
    assert out.shape == (b, CFG.out_channels, t, h, w)
    assert torch.isfinite(out).all()


def test_odd_spatial_size_is_circularly_padded_and_cropped(model32):
    inputs = make_inputs(1, 2, 5, 7, 4, seed=1)
    padded = dict(inputs, x=F.pad(inputs["x"], (0, 1, 0, 1, 0, 0), mode="circular"))
    with torch.no_grad():
        out = model32(**inputs)
        full = model32(**padded)
    assert out.shape == (1, CFG.out_channels, 2, 5, 7)
    assert torch.equal(out, full[:, :, :, :5, :7])


def test_batch_items_are_independent(model32):
    a, b = make_inputs(1, 2, 4, 6, 5, seed=2), make_inputs(1, 2, 4, 6, 5, seed=3)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    with torch.no_grad():
        out = model32(**both)
        assert rel(out[1:], model32(**b)) < 1e-5  # measured 3.7e-07


# --- text mask ----------------------------------------------------------------------------------------------------

def test_padded_text_with_mask_equals_unpadded_text(model32):
    inputs = make_inputs(1, 2, 4, 6, 6, seed=4)
    garbage = 50 * torch.randn(1, 5, CFG.context_in_dim)
    padded = dict(inputs, context=torch.cat([inputs["context"], garbage], dim=1),
                  attention_mask=torch.tensor([[1] * 6 + [0] * 5]))
    with torch.no_grad():
        want = model32(**inputs)
        got = model32(**padded)
        unmasked = model32(**dict(padded, attention_mask=None))
    assert rel(got, want) < 1e-5  # measured 0 (padding dropped before the refiner)
    assert rel(unmasked, want) > 1e-2  # the garbage matters when unmasked


def test_batch_with_different_masks_uses_key_padding(model32):
    """Two samples padded differently cannot share one trimmed length: the key-padding path must match
    each sample run alone without padding, and the padded query rows must stay finite."""
    a, b = make_inputs(1, 2, 4, 6, 7, seed=5), make_inputs(1, 2, 4, 6, 4, seed=6)
    garbage = 50 * torch.randn(1, 3, CFG.context_in_dim)
    both = {k: torch.cat([a[k], b[k]]) for k in a if k != "context"}
    both["context"] = torch.cat([a["context"], torch.cat([b["context"], garbage], dim=1)])
    both["attention_mask"] = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    with torch.no_grad():
        out = model32(**both)
        want_a, want_b = model32(**a), model32(**b)
        additive = model32(**dict(both, attention_mask=(both["attention_mask"].float() - 1) * 3.4e38))
    assert torch.isfinite(out).all()
    assert rel(out[:1], want_a) < 1e-5  # measured 3.8e-07
    assert rel(out[1:], want_b) < 1e-5  # measured 4.3e-07
    assert torch.equal(additive, out)  # ComfyUI's additive float mask means the same


def test_all_ones_mask_is_no_mask(model32):
    inputs = make_inputs(seed=7)
    with torch.no_grad():
        assert torch.equal(model32(**inputs), model32(**inputs, attention_mask=torch.ones(1, 7, dtype=torch.long)))


@pytest.mark.parametrize("mask,match", [(torch.zeros(1, 7, dtype=torch.long), "every text token"),
                                        (torch.ones(1, 6, dtype=torch.long), "attention_mask must be")])
def test_bad_masks_raise(model32, mask, match):
    with pytest.raises(ValueError, match=match):
        model32(**make_inputs(), attention_mask=mask)


# --- attention entry point ----------------------------------------------------------------------------------------

def test_attention_key_padding_is_exact_and_nan_free():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 3, 10, 16, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, :] = False  # a sample with every key padded: must not produce NaN
    k[0, :, 6:] = 1e3  # huge padded keys would dominate if they leaked
    out = attention(q, k, v, key_padding_mask=mask)
    assert out.shape == (2, 10, 48)
    want = F.scaled_dot_product_attention(q[:1], k[:1, :, :6], v[:1, :, :6]).transpose(1, 2).reshape(1, 10, 48)
    assert rel(out[:1], want) < 1e-12  # measured 0
    assert torch.isfinite(out).all()


def test_attention_unknown_mode_raises():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="unknown attention mode 'flash'"):
        attention(q, q, q, mode="flash")


def test_attention_fp8_mode_dispatches():
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 2, 32, 32, generator=g) for _ in range(3))
    want = attention(q, k, v)
    out = attention(q, k, v, mode="fp8")
    assert out.shape == want.shape
    assert rel(out, want) < 0.06  # measured 3.2e-02


# --- bad inputs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,match", [
    (dict(x=torch.randn(1, 4, 2, 4, 6)), r"x must be a \[B, 16"),
    (dict(context=torch.randn(1, 7, 8)), "context must be"),
    (dict(context=torch.randn(1, 0, 32)), "no text tokens"),
    (dict(y=None), "y must be the pooled CLIP vector"),
    (dict(control={"input": [], "output": []}), "does not run ControlNet"),
    (dict(txt_byt5=torch.randn(1, 3, 1472)), "has no byt5_in"),
    (dict(clip_fea=torch.randn(1, 3, 1152)), "has no vision_in"),
    (dict(ref_latent=torch.randn(1, 4, 1, 4, 6)), r"ref_latent must be a \[B=1, 16"),
    (dict(guiding_frame_index=torch.zeros(3)), "guiding_frame_index must hold"),
])
def test_bad_inputs_raise(model32, change, match):
    with pytest.raises(ValueError, match=match):
        model32(**dict(make_inputs(), **change))


def test_comfyui_options_are_tolerated(model32):
    inputs = make_inputs(seed=10)
    with torch.no_grad():
        plain = model32(**inputs)
        opts = {"sigmas": torch.tensor([0.5]), "sample_sigmas": torch.tensor([1.0, 0.5, 0.0])}
        assert torch.equal(model32(**inputs, transformer_options=opts, control=None, txt_byt5=None), plain)
