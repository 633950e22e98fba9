"""The streaming converter: numerics per policy, metadata, FP8 sources, laziness."""

from __future__ import annotations

import hashlib
import json
import weakref

import pytest
import torch
from checkpoint_factory import random_canonical, write_checkpoint
from safetensors import safe_open

from hyvideo_fp8.fp8.formats import ComputeMode
from hyvideo_fp8.fp8.policy import PrecisionPolicy
from hyvideo_fp8.fp8.quantize import dequantize
from hyvideo_fp8.hunyuan.checkpoint import convert_checkpoint, load_canonical_state_dict
from hyvideo_fp8.hunyuan.checkpoint.readers import TensorSource
from hyvideo_fp8.hunyuan.checkpoint.writer import StreamingSafetensorsWriter
from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.policies import get_preset

FP8_STORE = (ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("layout", ["tencent", "comfyui", "diffusers"])
@pytest.mark.parametrize("preset", ["fp8-max", "fp8-balanced", "fp8-weight-only"])
def test_converted_weights_follow_the_policy(tmp_path, layout, preset):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src, layout=layout, seed=31)
    hp = random_canonical(seed=31)
    report = convert_checkpoint(src, tmp_path / "out.safetensors", preset)
    sd, info = load_canonical_state_dict(tmp_path / "out.safetensors")
    assert info.fp8_flavour == "ours" and info.layout == "comfyui"
    policy, order = get_preset(preset), tiny_config().block_order()
    n_fp8 = 0
    for name, ref in hp.items():
        layer = name[: -len(".weight")]
        if name.endswith(".weight") and ref.dim() == 2 and policy.mode_for(layer, order) in FP8_STORE:
            n_fp8 += 1
            scale = sd[f"{layer}.weight_scale"]
            assert sd[name].dtype == torch.float8_e4m3fn and scale.shape == (ref.shape[0],)
            assert _rel(dequantize(sd[name], scale, torch.float64), ref) < 0.035  # per-row e4m3, measured <= 0.030
        else:
            assert sd[name].dtype == ref.dtype and torch.equal(sd[name], ref), name  # copied bit for bit
    assert report.fp8_layers == n_fp8 and report.high_precision_layers == 49 - n_fp8
    assert n_fp8 == {"fp8-max": 49, "fp8-balanced": 10, "fp8-weight-only": 26}[preset]
    assert report.max_rel_error < 0.035


def test_comfy_quant_output_format(tmp_path):
    src = tmp_path / "src.pt"
    write_checkpoint(src, layout="tencent", fmt="pt", wrapper="module", seed=32)
    hp = random_canonical(seed=32)
    report = convert_checkpoint(src, tmp_path / "cq.safetensors", "fp8-weight-only", output_format="comfy_quant")
    sd, info = load_canonical_state_dict(tmp_path / "cq.safetensors")
    assert info.fp8_flavour == "comfy_quant"
    layers = json.loads(info.metadata["_quantization_metadata"])["layers"]
    assert len(layers) == report.fp8_layers == 26
    for layer in layers:
        assert sd[f"{layer}.weight_scale"].shape == ()
        # per-tensor e4m3 with two 20x outlier rows per weight: measured worst 0.029
        assert _rel(dequantize(sd[f"{layer}.weight"], sd[f"{layer}.weight_scale"], torch.float64),
                    hp[f"{layer}.weight"]) < 0.035


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_high_precision_layers_keep_the_source_dtype(tmp_path, dtype):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src, dtype=dtype, seed=33)
    convert_checkpoint(src, tmp_path / "o.safetensors", "fp8-balanced")
    sd, _ = load_canonical_state_dict(tmp_path / "o.safetensors")
    assert sd["final_layer.linear.weight"].dtype == dtype and sd["img_in.proj.weight"].dtype == dtype
    assert sd["double_blocks.0.img_attn.qkv.weight"].dtype == dtype  # first block is a boundary block in balanced
    assert sd["double_blocks.1.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn


def test_official_fp8_source_keeps_its_bytes(tmp_path):
    """Re-packing the official FP8 file into our layout is lossless: same FP8 bytes, per-tensor scale expanded."""
    src = tmp_path / "mp_rank_00_model_states_fp8.pt"
    ref = write_checkpoint(src, layout="tencent", fmt="pt", wrapper="module", fp8="official", seed=34)
    report = convert_checkpoint(src, tmp_path / "o.safetensors", "fp8-max")
    assert report.source_fp8_flavour == "official"
    sd, _ = load_canonical_state_dict(tmp_path / "o.safetensors")
    for k in ref:
        if k.endswith(".weight_scale"):
            w = k[: -len("_scale")]
            assert torch.equal(sd[w].view(torch.uint8), ref[w].view(torch.uint8))
            assert torch.equal(sd[k], ref[k].expand(ref[w].shape[0]))
    # a policy that keeps an FP8-stored layer in high precision (fp8-balanced: the first block) dequantizes it to bf16
    convert_checkpoint(src, tmp_path / "bf.safetensors", "fp8-balanced")
    bf, _ = load_canonical_state_dict(tmp_path / "bf.safetensors")
    w = "double_blocks.0.img_attn.qkv.weight"
    assert bf[w].dtype == torch.bfloat16
    assert torch.equal(bf[w], dequantize(ref[w], ref["double_blocks.0.img_attn.qkv.weight_scale"], torch.bfloat16))


def test_metadata_documents_the_file(tmp_path):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src, layout="diffusers", seed=35)
    policy = get_preset("fp8-balanced").with_overrides(name="mine", fp8_format="e5m2")
    report = convert_checkpoint(src, tmp_path / "o.safetensors", policy)
    with safe_open(str(tmp_path / "o.safetensors"), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("hyvideo_fp8.double_blocks.1.img_mlp.0.weight").dtype == torch.float8_e5m2
        assert all(k.startswith("hyvideo_fp8.") for k in f.keys())  # stock ComfyUI refuses it, never misreads it
    assert meta["hyvideo_fp8.format_version"] == "1"
    assert PrecisionPolicy.from_json(meta["hyvideo_fp8.policy"]) == policy
    assert meta["hyvideo_fp8.source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() == report.source_sha256
    assert meta["hyvideo_fp8.source_name"] == "src.safetensors"
    assert json.loads(meta["hyvideo_fp8.config"]) == json.loads(json.dumps(tiny_config().to_dict()))
    assert json.loads(meta["hyvideo_fp8.recipe"])["fp8_format"] == "e5m2"


def test_conversion_streams_tensor_by_tensor(tmp_path, monkeypatch):
    """Spy on the reader and the writer: each source tensor is read just before its output is written, and at any
    read at most one earlier source tensor is still alive (no whole-model buffering)."""
    src = tmp_path / "src.safetensors"
    write_checkpoint(src, layout="tencent", seed=36)
    events: list[str] = []
    alive: list[weakref.ref] = []
    max_alive = 0
    real_get, real_write = TensorSource.get, StreamingSafetensorsWriter.write

    def spy_get(self, name):
        nonlocal max_alive
        max_alive = max(max_alive, sum(r() is not None for r in alive))
        t = real_get(self, name)
        alive.append(weakref.ref(t))
        events.append("read")
        return t

    def spy_write(self, name, tensor):
        events.append("write")
        real_write(self, name, tensor)

    monkeypatch.setattr(TensorSource, "get", spy_get)
    monkeypatch.setattr(StreamingSafetensorsWriter, "write", spy_write)
    report = convert_checkpoint(src, tmp_path / "o.safetensors", "fp8-max")
    reads = events.count("read")
    assert reads == len(random_canonical()) and events.count("write") == report.tensors_written
    assert max_alive <= 1, max_alive
    # interleaved: never more than one read ahead of the writes
    ahead = 0
    for e in events:
        ahead += 1 if e == "read" else 0
        ahead = max(0, ahead - (e == "write"))
        assert ahead <= 1


def test_progress_is_reported(tmp_path):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src, seed=37)
    seen = []
    report = convert_checkpoint(src, tmp_path / "o.safetensors", "fp8-max", output_format="comfy_quant",
                                progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (report.tensors_written, report.tensors_written)
    assert [d for d, _ in seen] == list(range(1, report.tensors_written + 1))


@pytest.mark.parametrize("policy", ["{}", "bf16"])
def test_policy_without_fp8_layers_is_refused(tmp_path, policy):
    """An empty policy (or bf16) would write a high-precision copy labelled FP8: refused before anything is written."""
    src = tmp_path / "src.safetensors"
    write_checkpoint(src, seed=38)
    with pytest.raises(ValueError, match="stores no linear in FP8, so the output would be a high-precision copy"):
        convert_checkpoint(src, tmp_path / "o.safetensors", policy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


def test_report_prints_its_summary(tmp_path):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src, seed=39)
    report = convert_checkpoint(src, tmp_path / "o.safetensors", "fp8-max")
    assert str(report) == report.summary() and "ConversionReport(" not in str(report)
    assert "49 FP8 linears" in str(report) and "worst weight error" in str(report)
