"""The HunyuanVideo family on the CPU: detection of every variant, its checkpoint layouts (Tencent's split 1.5 q/k/v,
ComfyUI's fused names, scaled-FP8 and comfy_quant files), the converter and ``inspect``, and the model's new inputs
(token replace, reference latent, byT5, vision, meanflow) in float64, chunked and under the FP8 presets.

Parity with ComfyUI's own model is in ``tests/host/test_host_family_parity.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from hyvideo_fp8.fp8.linear import FP8Linear
from hyvideo_fp8.hunyuan.checkpoint import inspect_checkpoint, load_canonical_state_dict
from hyvideo_fp8.hunyuan.checkpoint.convert import convert_checkpoint
from hyvideo_fp8.hunyuan.config import (
    RELEASED_15,
    VARIANTS,
    NotHunyuanVideoError,
    canonical_shapes,
    detect_config,
    tiny_variant_config,
)
from hyvideo_fp8.hunyuan.loader import load_transformer, random_state_dict
from hyvideo_fp8.hunyuan.policies import get_preset
from tests.checkpoint_factory import assert_same_state_dict, source_state_dict, write_checkpoint
from tests.tiny_model import FAMILY_NORMS, family_inputs, rel, strong_state_dict

# --- detection ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("meanflow", [False, True])
def test_every_variant_is_detected(variant, meanflow):
    cfg = tiny_variant_config(variant, meanflow=meanflow)
    found = detect_config(canonical_shapes(cfg))
    assert found == cfg and found.variant == variant
    assert ("step-distilled" in found.describe()) == meanflow


def test_released_15_shapes():
    """HunyuanVideo 1.5 at full size: 8.3 B parameters, 54 double blocks, hidden 2048 (16 heads of 128)."""
    cfg = detect_config(canonical_shapes(RELEASED_15))
    assert cfg == RELEASED_15 and cfg.variant == "1.5" and cfg.head_dim == 128
    assert round(sum(math.prod(s) for s in canonical_shapes(cfg).values()) / 1e9, 1) == 8.3


def test_2d_patch_embedding_is_named_hunyuanimage():
    shapes = dict(canonical_shapes(tiny_variant_config("1.5")))
    shapes["img_in.proj.weight"] = (64, 65, 1, 1)
    with pytest.raises(NotHunyuanVideoError, match="HunyuanImage"):
        detect_config(shapes)


# --- checkpoint layouts --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["v1-i2v", "v1-skyreels-i2v", "1.5", "1.5-sr"])
@pytest.mark.parametrize("layout", ["comfyui", "tencent", "diffusers"])
@pytest.mark.parametrize("fp8", [None, "scaled_fp8", "comfy_quant"])
def test_variant_files_read_back(tmp_path, variant, layout, fp8):
    cfg = tiny_variant_config(variant, meanflow=variant == "1.5")
    path = tmp_path / "m.safetensors"
    ref = write_checkpoint(path, layout=layout, fp8=fp8, config=cfg)
    sd, info = load_canonical_state_dict(path)
    assert info.config == cfg and info.layout == layout
    assert_same_state_dict(sd, ref)


def test_tencent_15_split_qkv_is_fused_in_order():
    """Tencent's 1.5 files hold ``img_attn_q/k/v`` (and ``txt_``): the reader fuses them q, k, v along the rows."""
    cfg = tiny_variant_config("1.5")
    src, ref, _ = source_state_dict("tencent", None, cfg)
    assert "double_blocks.0.img_attn_q.weight" in src and "double_blocks.0.img_attn_qkv.weight" not in src
    from hyvideo_fp8.hunyuan.checkpoint.layouts import plan_canonical

    specs = {k: v for k, v in src.items()}
    plan = plan_canonical({k: _Spec(v.shape) for k, v in specs.items()}, "tencent")
    rule = plan["double_blocks.1.txt_attn.qkv.bias"]
    assert rule.op == "concat" and rule.sources == tuple(f"double_blocks.1.txt_attn_{p}.bias" for p in "qkv")


class _Spec:
    def __init__(self, shape):
        self.shape = tuple(shape)


def test_tencent_15_missing_piece_is_named(tmp_path):
    from safetensors.torch import save_file

    from hyvideo_fp8.hunyuan.checkpoint.errors import CheckpointError

    src, _, _ = source_state_dict("tencent", None, tiny_variant_config("1.5"))
    del src["double_blocks.1.img_attn_v.weight"]
    save_file(src, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"img_attn_v'\] needed to rebuild|\['v'\] needed to rebuild"):
        load_canonical_state_dict(tmp_path / "m.safetensors")


def test_inspect_and_converter_name_the_variant(tmp_path):
    cfg = tiny_variant_config("1.5", meanflow=True, depth=4)  # fp8-balanced keeps a boundary block at each end
    src = tmp_path / "hv15.safetensors"
    write_checkpoint(src, layout="tencent", config=cfg)
    text = inspect_checkpoint(src)
    assert "model:     1.5: HunyuanVideo 1.5" in text and "step-distilled" in text
    report = convert_checkpoint(src, tmp_path / "out.safetensors", "fp8-balanced")
    assert "(1.5, tencent, high precision)" in report.summary()
    sd, info = load_canonical_state_dict(tmp_path / "out.safetensors")
    assert info.config == cfg
    model = load_transformer(sd, get_preset("fp8-balanced"))
    assert model.config.variant == "1.5" and model.time_r_in is not None


@pytest.mark.parametrize("output_format", ["ours", "comfy_quant", "scaled_fp8"])
def test_converter_keeps_the_type_embedding_high_precision(tmp_path, output_format):
    """fp8-max stores every linear in FP8; the condition-type embedding is a table, not a linear, and stays as it is."""
    cfg = tiny_variant_config("1.5", meanflow=True)
    src, dst = tmp_path / "hv15.safetensors", tmp_path / "out.safetensors"
    ref = write_checkpoint(src, layout="diffusers", config=cfg)
    convert_checkpoint(src, dst, "fp8-max", output_format=output_format)
    sd, info = load_canonical_state_dict(dst)
    assert info.config == cfg and "cond_type_embedding.weight_scale" not in sd
    assert torch.equal(sd["cond_type_embedding.weight"], ref["cond_type_embedding.weight"])
    assert sd["byt5_in.fc1.weight"].dtype == torch.float8_e4m3fn
    model = load_transformer(sd, get_preset("fp8-max"))
    assert torch.isfinite(model(**family_inputs(cfg, dtype=torch.bfloat16))).all()


# --- the model's inputs ----------------------------------------------------------------------------------------------

FAMILY = [("v1-i2v", {}), ("v1-skyreels-i2v", {}), ("1.5", {"meanflow": True}), ("1.5-sr", {})]


@pytest.mark.parametrize("variant,over", FAMILY, ids=[v for v, _ in FAMILY])
def test_fp32_matches_float64(variant, over):
    cfg = tiny_variant_config(variant, **over)
    sd = strong_state_dict(3, cfg, FAMILY_NORMS)
    with torch.no_grad():
        ref = load_transformer(dict(sd), None, dtype=torch.float64)(**family_inputs(cfg, batch=2, dtype=torch.float64))
        out = load_transformer(dict(sd), None, dtype=torch.float32)(**family_inputs(cfg, batch=2, dtype=torch.float32))
    assert torch.isfinite(out).all() and out.shape[1] == cfg.out_channels
    assert rel(out, ref) < 1e-5  # measured 2e-07 to 3e-07


def _whole_and_chunked(cfg, seed: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 outputs of one model without and with token chunks of 10."""
    model = load_transformer(strong_state_dict(seed, cfg, FAMILY_NORMS), None, dtype=torch.float64)
    inputs = family_inputs(cfg, frames=frames, dtype=torch.float64)
    with torch.no_grad():
        model.token_chunk = 0
        whole = model(**inputs)
        model.token_chunk = 10
        return whole, model(**inputs)


@pytest.mark.parametrize("variant,over", FAMILY, ids=[v for v, _ in FAMILY])
def test_token_chunks_are_exact(variant, over):
    """Chunked token-wise steps give the same result; with token replace the chunks are cut at the guiding
    frame's last token (24 tokens a frame here, chunks of 10)."""
    cfg = tiny_variant_config(variant, **over)
    whole, chunked = _whole_and_chunked(cfg, seed=4, frames=3)
    assert rel(chunked, whole) < 1e-13


def test_token_replace_on_a_one_frame_latent():
    """Every image token is the guiding frame's: each block modulates them all with row 0, the text with row 1."""
    whole, chunked = _whole_and_chunked(tiny_variant_config("v1-i2v"), seed=7, frames=1)
    assert torch.isfinite(whole).all() and rel(chunked, whole) < 1e-13


@pytest.mark.parametrize("variant", ["1.5", "v1-i2v"])
@pytest.mark.parametrize("preset,bound", [("fp8-balanced", 0.05), ("fp8-max", 0.1)])
def test_fp8_presets_close_to_bf16(variant, preset, bound):
    """The block linears compute in FP8, within the v1 presets' bounds (token replace included); fp8-balanced keeps
    the 1.5 conditioning modules in high precision (fp8-max puts every linear in FP8)."""
    cfg = tiny_variant_config(variant, meanflow=variant == "1.5", depth=4)
    sd = strong_state_dict(5, cfg, FAMILY_NORMS)
    inputs = family_inputs(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        want = load_transformer(dict(sd), get_preset("bf16"))(**inputs)
        model = load_transformer(dict(sd), get_preset(preset))
        out = model(**inputs)
    assert any(isinstance(m, FP8Linear) for m in model.double_blocks.modules())
    if variant == "1.5":
        conditioning_fp8 = any(isinstance(m, FP8Linear) for name in ("byt5_in", "vision_in", "time_r_in")
                               for m in getattr(model, name).modules())
        assert conditioning_fp8 == (preset == "fp8-max")
    assert torch.isfinite(out).all() and rel(out, want) < bound


def test_v15_text_mask_equals_dropping_the_padding_at_batch_2():
    cfg = tiny_variant_config("1.5")
    model = load_transformer(strong_state_dict(6, cfg, FAMILY_NORMS), None, dtype=torch.float64)
    inputs = family_inputs(cfg, batch=2, dtype=torch.float64)
    ctx = inputs["context"]
    padded = torch.cat([ctx, torch.randn(2, 3, cfg.context_in_dim, dtype=torch.float64)], dim=1)
    mask = torch.cat([torch.ones(2, 7, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)
    mask[1, 5:7] = 0  # the second sample pads two more tokens: a [B, L] key mask, not a dropped slice
    with torch.no_grad():
        got = model(**dict(inputs, context=padded, attention_mask=mask))
        first = model(**dict({k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}))
        second = model(**dict({k: v[1:] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()},
                              context=ctx[1:, :5]))
    assert rel(got[:1], first) < 1e-12 and rel(got[1:], second) < 1e-12


@pytest.mark.parametrize("change,match", [
    (dict(txt_byt5=torch.randn(1, 5, 7)), r"txt_byt5 must be \[B=1, tokens, 24\]"),
    (dict(clip_fea=torch.randn(2, 3, 20)), r"clip_fea must be \[B=1, tokens, 20\]"),
    (dict(x=torch.randn(1, 32, 2, 4, 6)), "image-conditioning channels"),
    (dict(transformer_options={}), "needs the sampler's sigmas"),
])
def test_v15_bad_inputs_raise(change, match):
    cfg = tiny_variant_config("1.5", meanflow=True)
    model = load_transformer(random_state_dict(cfg, 1), None)
    with pytest.raises(ValueError, match=match):
        model(**dict(family_inputs(cfg, dtype=torch.float32), **change))


def test_loader_node_checks_the_variant_before_reading_weights(tmp_path, monkeypatch):
    """The loader node asks the host whether it runs the file's variant before any weight is read."""
    from hyvideo_fp8.hunyuan.checkpoint import canonical
    from hyvideo_fp8.nodes.loader import load_model_file
    from hyvideo_fp8.nodes.policy import NodePolicy

    path = tmp_path / "hv15.safetensors"
    write_checkpoint(path, config=tiny_variant_config("1.5"))
    read = []
    real_get = canonical.CanonicalCheckpoint.get
    monkeypatch.setattr(canonical.CanonicalCheckpoint, "get",
                        lambda self, name: read.append(name) or real_get(self, name))

    def refuse(cfg):
        raise RuntimeError(f"no {cfg.variant} here")

    with pytest.raises(RuntimeError, match="no 1.5 here"):
        load_model_file(str(path), NodePolicy(get_preset("bf16")), torch.device("cpu"), torch.device("cpu"),
                        check_config=refuse)
    assert read == []
    transformer, cfg, _ = load_model_file(str(path), NodePolicy(get_preset("bf16")), torch.device("cpu"),
                                          torch.device("cpu"), check_config=lambda c: None)
    assert cfg.variant == "1.5" and read
