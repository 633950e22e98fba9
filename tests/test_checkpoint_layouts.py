"""Every layout x file format x wrapper/prefix x FP8 flavour loads to the same canonical tensors."""

from __future__ import annotations

import pytest
import torch
from checkpoint_factory import assert_same_state_dict, random_canonical, source_state_dict, write_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file

from hyvideo_fp8.fp8.quantize import dequantize
from hyvideo_fp8.hunyuan.checkpoint import CheckpointError, load_canonical_state_dict
from hyvideo_fp8.hunyuan.checkpoint.layouts import detect_layout, find_prefix, tencent_to_canonical
from hyvideo_fp8.hunyuan.config import canonical_shapes, tiny_config

COMBOS = [(layout, fmt, fp8) for layout in ("tencent", "comfyui", "diffusers") for fmt in ("safetensors", "pt")
          for fp8 in (None, "official", "unscaled", "scaled_fp8", "comfy_quant", "ours")
          if not (fp8 == "official" and fmt != "pt") and not (fp8 == "ours" and fmt != "safetensors")]


def _ext(fmt: str) -> str:
    return "pt" if fmt == "pt" else "safetensors"


@pytest.mark.parametrize("layout,fmt,fp8", COMBOS)
def test_every_layout_format_and_flavour_loads_exactly(tmp_path, layout, fmt, fp8):
    prefix = "model.diffusion_model." if fmt == "safetensors" else ""
    path = tmp_path / f"ckpt.{_ext(fmt)}"
    ref = write_checkpoint(path, layout=layout, fmt=fmt, prefix=prefix, fp8=fp8, seed=hash((layout, fmt, fp8)) % 1000)
    sd, info = load_canonical_state_dict(path)
    assert_same_state_dict(sd, ref)  # exact: no FP8 flavour here needs requantization
    assert (info.layout, info.fp8_flavour, info.file_format, info.prefix) == (layout, fp8, fmt, prefix)
    assert info.config == tiny_config()
    if fp8 == "scaled_fp8":  # the factory writes one static input scale (0.5) on the refiner's qkv
        assert info.input_scales == {"txt_in.individual_token_refiner.blocks.0.self_attn.qkv": 0.5}


@pytest.mark.parametrize("fp8", [None, "unscaled", "scaled_fp8", "comfy_quant", "ours"])
def test_comfyui_029_rmsnorm_weight_spelling_loads_like_scale(tmp_path, fp8):
    """ComfyUI 0.29+ saves the q/k norms as ``query_norm.weight``; 0.3.64 and older as ``.scale``: same tensors."""
    old, new = tmp_path / "scale.safetensors", tmp_path / "weight.safetensors"
    ref = write_checkpoint(old, fp8=fp8, prefix="model.diffusion_model.", seed=21)
    write_checkpoint(new, fp8=fp8, prefix="model.diffusion_model.", seed=21, rmsnorm_weight=True)
    with safe_open(str(new), "pt") as f:
        assert "model.diffusion_model.double_blocks.0.img_attn.norm.query_norm.weight" in f.keys()
        assert "model.diffusion_model.single_blocks.0.norm.key_norm.weight" in f.keys()
    sd_old, info_old = load_canonical_state_dict(old)
    sd_new, info_new = load_canonical_state_dict(new)
    assert_same_state_dict(sd_new, ref)
    assert_same_state_dict(sd_new, sd_old)
    assert (info_new.layout, info_new.fp8_flavour) == (info_old.layout, info_old.fp8_flavour) == ("comfyui", fp8)


def test_both_rmsnorm_spellings_in_one_file_are_refused(tmp_path):
    src, _, _ = source_state_dict("comfyui")
    name = "double_blocks.0.img_attn.norm.query_norm"
    src[f"{name}.weight"] = src[f"{name}.scale"].clone()
    save_file(src, str(tmp_path / "both.safetensors"))
    with pytest.raises(CheckpointError, match="holds 'double_blocks.0.img_attn.norm.query_norm.scale' twice"):
        load_canonical_state_dict(tmp_path / "both.safetensors")


@pytest.mark.parametrize("wrapper", [None, "module", "state_dict"])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "model.model.", "net.", "diffusion_model.",
                                    "transformer."])
def test_wrappers_and_prefixes(tmp_path, wrapper, prefix):
    path = tmp_path / "w.pt"
    ref = write_checkpoint(path, layout="tencent", fmt="pt", wrapper=wrapper, prefix=prefix, seed=3)
    sd, info = load_canonical_state_dict(path)
    assert_same_state_dict(sd, ref)
    assert info.wrapper == ((wrapper,) if wrapper else ())
    assert info.prefix == prefix


def test_ema_wrapper_picks_module_by_default_and_ema_on_request(tmp_path):
    path = tmp_path / "ema.pt"
    ref = write_checkpoint(path, layout="tencent", fmt="pt", wrapper="ema", fp8="official", seed=5)
    ema, info = load_canonical_state_dict(path, prefer="ema")
    assert_same_state_dict(ema, ref)
    assert info.wrapper == ("ema",)
    module, info = load_canonical_state_dict(path)
    assert info.wrapper == ("module",)
    assert not torch.equal(module["img_in.proj.weight"], ema["img_in.proj.weight"])  # the decoy weights
    only_module = tmp_path / "module.pt"
    write_checkpoint(only_module, layout="tencent", fmt="pt", wrapper="module")
    with pytest.raises(CheckpointError, match="no 'ema' weights"):
        load_canonical_state_dict(only_module, prefer="ema")


def test_full_checkpoint_keeps_only_the_transformer(tmp_path):
    """A ComfyUI full checkpoint also holds a VAE and text encoders: they are ignored, not an error."""
    from safetensors.torch import save_file
    src, ref, _ = source_state_dict("comfyui", seed=11)
    full = {"model.diffusion_model." + k: v for k, v in src.items()}
    full["first_stage_model.decoder.conv_in.weight"] = torch.randn(4, 4)
    full["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = torch.randn(4)
    save_file(full, str(tmp_path / "full.safetensors"))
    sd, info = load_canonical_state_dict(tmp_path / "full.safetensors")
    assert_same_state_dict(sd, ref)
    assert len(info.ignored_keys) == 2


@pytest.mark.parametrize("fp8", ["official", "scaled_fp8", "comfy_quant"])
def test_diffusers_split_pieces_with_different_scales_refuse_per_channel(tmp_path, fp8):
    """q, k, v (and linear1's 4 pieces) quantized separately have 3-4 different per-tensor scales; re-fused they get
    an exact per-output-channel scale: the dequantized weight equals the pieces' dequantized weights stacked."""
    fmt = "pt"
    path = tmp_path / "d.pt"
    write_checkpoint(path, layout="diffusers", fmt=fmt, fp8=fp8, seed=7)
    src, _, fp8_map = source_state_dict("diffusers", fp8, seed=7)
    sd, _ = load_canonical_state_dict(path)
    h, m = 64, 256
    for fused, pieces in (
        ("double_blocks.1.txt_attn.qkv", [f"transformer_blocks.1.attn.add_{c}_proj" for c in "qkv"]),
        ("single_blocks.0.linear1", [f"single_transformer_blocks.0.attn.to_{c}" for c in "qkv"]
         + ["single_transformer_blocks.0.proj_mlp"]),
        ("txt_in.individual_token_refiner.blocks.1.self_attn.qkv",
         [f"context_embedder.token_refiner.refiner_blocks.1.attn.to_{c}" for c in "qkv"]),
    ):
        scale = sd[f"{fused}.weight_scale"]
        rows = 3 * h + (m if "linear1" in fused else 0)
        assert scale.shape == (rows,) and scale.dtype == torch.float32
        key = {"official": None, "scaled_fp8": "scale_weight", "comfy_quant": "weight_scale"}[fp8]
        piece_scales = [fp8_map[p] if key is None else src[f"{p}.{key}"] for p in pieces]
        assert len({float(s) for s in piece_scales}) == len(pieces)  # really different
        want = torch.cat([src[f"{p}.weight"].float() * s for p, s in zip(pieces, piece_scales)])
        got = dequantize(sd[f"{fused}.weight"], scale)
        assert torch.equal(got, want)


def test_diffusers_final_adaln_halves_are_swapped_back(tmp_path):
    src, ref, _ = source_state_dict("diffusers", seed=2)
    half = ref["final_layer.adaLN_modulation.1.weight"].shape[0] // 2
    assert torch.equal(src["norm_out.linear.weight"][:half], ref["final_layer.adaLN_modulation.1.weight"][half:])
    write_checkpoint(tmp_path / "d.safetensors", layout="diffusers", seed=2)
    sd, _ = load_canonical_state_dict(tmp_path / "d.safetensors")
    assert torch.equal(sd["final_layer.adaLN_modulation.1.weight"], random_canonical(seed=2)[
        "final_layer.adaLN_modulation.1.weight"])
    assert torch.equal(sd["final_layer.adaLN_modulation.1.bias"], ref["final_layer.adaLN_modulation.1.bias"])


# relative L2 error of the dequantized FP8 weights against the bf16 source (float64), worst of the factory's 29
# quantized linears (two 20x outlier rows each). Measured: per-tensor flavours 0.028, ours (per-row) 0.0295,
# unscaled 0.029 (e4m3 is a float format, so the relative error barely depends on the scale at these magnitudes).
FLAVOUR_ERROR = {"official": 0.035, "scaled_fp8": 0.035, "comfy_quant": 0.035, "ours": 0.035, "unscaled": 0.035}


@pytest.mark.parametrize("fp8", sorted(FLAVOUR_ERROR))
@pytest.mark.parametrize("layout", ["tencent", "diffusers"])
def test_dequantized_weights_match_source_within_flavour_error(tmp_path, fp8, layout):
    fmt = "safetensors" if fp8 == "ours" else "pt"
    path = tmp_path / f"q.{_ext(fmt)}"
    write_checkpoint(path, layout=layout, fmt=fmt, fp8=fp8, seed=13)
    hp = random_canonical(seed=13)
    sd, _ = load_canonical_state_dict(path)
    layers = [k[: -len(".weight_scale")] for k in sd if k.endswith(".weight_scale")]
    assert len(layers) == 29
    worst = 0.0
    for layer in layers:
        ref = hp[f"{layer}.weight"].double()
        got = dequantize(sd[f"{layer}.weight"], sd[f"{layer}.weight_scale"], torch.float64)
        assert torch.isfinite(got).all()
        worst = max(worst, float((got - ref).norm() / ref.norm()))
    assert 0 < worst < FLAVOUR_ERROR[fp8], worst


def test_layout_detection_and_prefix_finding():
    cfg = tiny_config()
    canon = list(canonical_shapes(cfg))
    tencent = list(source_state_dict("tencent")[0])
    diffusers = list(source_state_dict("diffusers")[0])
    layouts = (detect_layout(canon), detect_layout(tencent), detect_layout(diffusers))
    assert layouts == ("comfyui", "tencent", "diffusers")
    assert sorted(tencent_to_canonical(k) for k in tencent) == sorted(canon)
    assert all(tencent_to_canonical(k) == k for k in canon)  # idempotent on canonical names
    assert find_prefix(["a.b.img_in.proj.weight", "a.b.x"]) == "a.b."
    assert find_prefix(["transformer.x_embedder.proj.weight"]) == "transformer."
    assert find_prefix(["img_in.proj.weight"]) == ""
    assert find_prefix(["ximg_in.proj.weight"]) == ""  # only at a dot boundary
