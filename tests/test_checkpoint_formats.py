"""FP8 flavours, our format and the comfy_quant layout: round trips, maps, on-disk details, inspect."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from checkpoint_factory import assert_same_state_dict, random_canonical, source_state_dict, write_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file

from hyvideo_fp8.fp8.quantize import dequantize, quantize_rowwise
from hyvideo_fp8.hunyuan.checkpoint import (
    MissingFP8MapError,
    UnsupportedQuantizationError,
    inspect_checkpoint,
    inspect_checkpoint_dict,
    load_canonical_state_dict,
    save_canonical,
)
from hyvideo_fp8.hunyuan.checkpoint.readers import read_safetensors_header, sniff_format
from hyvideo_fp8.hunyuan.checkpoint.writer import StreamingSafetensorsWriter, TensorSpec


@pytest.mark.parametrize("fp8", ["official", "ours", "scaled_fp8", "unscaled"])
def test_round_trip_through_our_format_is_exact(tmp_path, fp8):
    fmt = "safetensors" if fp8 == "ours" else "pt"
    src = tmp_path / f"src.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    write_checkpoint(src, layout="tencent", fmt=fmt, fp8=fp8, seed=21)
    sd, _ = load_canonical_state_dict(src)
    save_canonical(tmp_path / "ours.safetensors", sd, metadata={"hyvideo_fp8.format_version": "1"})
    back, info = load_canonical_state_dict(tmp_path / "ours.safetensors")
    assert info.fp8_flavour == "ours"
    for k, v in sd.items():
        if k.endswith(".weight_scale"):  # our layout stores every scale per output channel: [] -> [N], same values
            n = sd[k[: -len("_scale")]].shape[0]
            assert back[k].shape == (n,) and torch.equal(back[k], v.float().expand(n))
        else:
            assert back[k].dtype == v.dtype and torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)), k


def test_per_channel_round_trip_is_bit_exact(tmp_path):
    hp = random_canonical(seed=4)
    sd = {}
    for k, v in hp.items():
        if v.dim() == 2 and k.startswith("double_blocks."):
            q, s = quantize_rowwise(v.float())
            sd[k], sd[k[: -len(".weight")] + ".weight_scale"] = q, s.reshape(-1)
        else:
            sd[k] = v
    save_canonical(tmp_path / "o.safetensors", sd, metadata={"hyvideo_fp8.format_version": "1"})
    back, _ = load_canonical_state_dict(tmp_path / "o.safetensors")
    assert_same_state_dict(back, sd)


def test_comfy_quant_output_is_what_new_comfyui_reads(tmp_path):
    """Per-tensor scale [] fp32, <layer>.comfy_quant = uint8 JSON, the same layers in _quantization_metadata; reads back
    through our loader; per-channel scales are requantized to one per tensor with a small error."""
    write_checkpoint(tmp_path / "o.safetensors", layout="comfyui", fp8="ours", seed=8)
    sd, _ = load_canonical_state_dict(tmp_path / "o.safetensors")
    save_canonical(tmp_path / "cq.safetensors", sd, output_format="comfy_quant")
    specs, meta = read_safetensors_header(tmp_path / "cq.safetensors")
    layers = json.loads(meta["_quantization_metadata"])
    assert layers["format_version"] == "1.0"
    quantized = sorted(k[: -len(".weight_scale")] for k in sd if k.endswith(".weight_scale"))
    assert sorted(layers["layers"]) == quantized and len(quantized) == 29
    with safe_open(str(tmp_path / "cq.safetensors"), "pt") as f:
        for layer in quantized:
            conf = json.loads(f.get_tensor(f"{layer}.comfy_quant").numpy().tobytes())  # how ComfyUI decodes it
            assert conf == {"format": "float8_e4m3fn"} == layers["layers"][layer]
            assert f.get_tensor(f"{layer}.weight_scale").shape == ()
            assert f.get_tensor(f"{layer}.weight").dtype == torch.float8_e4m3fn
    back, info = load_canonical_state_dict(tmp_path / "cq.safetensors")
    assert info.fp8_flavour == "comfy_quant"
    worst = 0.0
    for layer in quantized:
        ref = dequantize(sd[f"{layer}.weight"], sd[f"{layer}.weight_scale"], torch.float64)
        got = dequantize(back[f"{layer}.weight"], back[f"{layer}.weight_scale"], torch.float64)
        worst = max(worst, float((got - ref).norm() / ref.norm()))
    assert 0 < worst < 0.04, worst  # requantization per tensor; measured 0.029


def test_comfy_quant_weights_stored_as_uint8_are_viewed_as_fp8(tmp_path):
    src, ref, _ = source_state_dict("comfyui", "comfy_quant", seed=9)
    src = {k: (v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v) for k, v in src.items()}
    save_file(src, str(tmp_path / "u8.safetensors"))  # no header metadata: the .comfy_quant tensors alone
    sd, info = load_canonical_state_dict(tmp_path / "u8.safetensors")
    assert info.fp8_flavour == "comfy_quant"
    assert_same_state_dict(sd, ref)


def test_comfy_quant_unsupported_format_is_refused(tmp_path):
    src, _, _ = source_state_dict("comfyui", "comfy_quant", seed=9)
    src["double_blocks.0.img_attn.qkv.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(src, str(tmp_path / "nv.safetensors"))
    with pytest.raises(UnsupportedQuantizationError, match="'nvfp4'.*FP8"):
        load_canonical_state_dict(tmp_path / "nv.safetensors")


def test_official_fp8_needs_its_map(tmp_path):
    path = tmp_path / "mp_rank_00_model_states_fp8.pt"
    ref = write_checkpoint(path, layout="tencent", fmt="pt", wrapper="module", fp8="official", seed=1)
    map_file = tmp_path / "mp_rank_00_model_states_fp8_map.pt"
    assert map_file.is_file()
    sd, info = load_canonical_state_dict(path)
    assert info.fp8_flavour == "official" and info.fp8_map == str(map_file)
    assert_same_state_dict(sd, ref)
    elsewhere = tmp_path / "maps" / "scales.pt"
    elsewhere.parent.mkdir()
    shutil.move(map_file, elsewhere)
    with pytest.raises(MissingFP8MapError, match=r"mp_rank_00_model_states_fp8_map\.pt.*next to it"):
        load_canonical_state_dict(path)
    sd, info = load_canonical_state_dict(path, fp8_map=elsewhere)
    assert_same_state_dict(sd, ref)
    partial = torch.load(elsewhere, weights_only=True)
    partial.pop("double_blocks.1.img_attn_qkv")
    torch.save(partial, elsewhere)
    with pytest.raises(MissingFP8MapError, match="no entry for 'double_blocks.1.img_attn_qkv'"):
        load_canonical_state_dict(path, fp8_map=elsewhere)


def test_kijai_style_map_in_safetensors(tmp_path):
    path = tmp_path / "hv_fp8.pt"
    ref = write_checkpoint(path, layout="tencent", fmt="pt", fp8="official", seed=6)
    m = torch.load(tmp_path / "hv_fp8_map.pt", weights_only=True)
    (tmp_path / "hv_fp8_map.pt").unlink()
    save_file({k: v.reshape(1) for k, v in m.items()}, str(tmp_path / "fp8_map.safetensors"))
    sd, _ = load_canonical_state_dict(path, fp8_map=tmp_path / "fp8_map.safetensors")
    assert_same_state_dict(sd, ref)


def test_streaming_writer_output_is_standard_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16),
               "c": torch.randn(4, 16).to(torch.float8_e5m2), "d": torch.tensor(2.5)}
    entries = [(k, TensorSpec(tuple(v.shape), v.dtype)) for k, v in tensors.items()]
    with StreamingSafetensorsWriter(tmp_path / "s.safetensors", entries, {"k": "v"}) as w:
        for k, v in tensors.items():
            w.write(k, v)
    raw = (tmp_path / "s.safetensors").read_bytes()
    assert (8 + struct.unpack("<Q", raw[:8])[0]) % 8 == 0  # data starts aligned
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        assert f.metadata() == {"k": "v"}
        for k, v in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got.float(), v.float()), k


def test_sniff_prefers_safetensors_when_header_length_starts_with_0x80(tmp_path):
    """A header length whose low byte is 0x80 looks like a pickle opcode; the '{' at byte 8 decides."""
    path = tmp_path / "x.bin"
    header = json.dumps({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (0x80 - len(header))
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    assert sniff_format(path) == "safetensors"


def test_inspect_reports_everything(tmp_path):
    path = tmp_path / "m_fp8.pt"
    write_checkpoint(path, layout="tencent", fmt="pt", wrapper="module", fp8="official", prefix="model.", seed=2)
    d = inspect_checkpoint_dict(path)
    assert (d["file_format"], d["wrapper"], d["prefix"], d["layout"], d["fp8_flavour"]) == (
        "pt", "module", "model.", "tencent", "official")
    assert d["config"]["hidden_size"] == 64 and d["config"]["depth"] == 2
    assert d["fp8_layers"] == 29 and d["scale_granularity"] == {"per-tensor": 29}
    assert 0 < d["scale_min"] <= d["scale_max"] < 1
    assert d["dtypes"]["float8_e4m3fn"]["tensors"] == 29
    text = inspect_checkpoint(path)
    for needle in ("official", "tencent", "wrapper module", "29 layers", "hidden 64"):
        assert needle in text


def test_pt_tensors_stored_as_strided_views_read_exactly(tmp_path):
    """A .pt may store tensors as views of a shared storage (slices, transposes); each is read from its own bytes."""
    from hyvideo_fp8.hunyuan.checkpoint.readers import open_checkpoint

    base = torch.randn(6, 8)
    tensors = {"whole": base, "rows": base[2:5], "cols": base[:, 3:7], "t": base.t(), "step": base[::2, ::3],
               "empty": base[:0], "other": torch.arange(10, dtype=torch.bfloat16)}
    torch.save({"state_dict": tensors}, tmp_path / "views.pt")
    with open_checkpoint(tmp_path / "views.pt") as source:
        assert source._tensors is None  # read from the file, not loaded by torch
        for name, want in tensors.items():
            got = source.get(name)
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name


def test_pt_without_storage_offsets_falls_back_to_torch_load(tmp_path, monkeypatch):
    """A torch that records no storage offsets (before 2.7) still reads .pt files, through torch.load."""
    from hyvideo_fp8.hunyuan.checkpoint import readers

    path = tmp_path / "t.pt"
    ref = write_checkpoint(path, layout="tencent", fmt="pt", wrapper="module", seed=12)
    lazy, _ = load_canonical_state_dict(path)
    monkeypatch.setattr(readers, "_file_ranges", lambda tensors, p: None)
    with readers.open_checkpoint(path) as source:
        assert source._tensors is not None
    loaded, _ = load_canonical_state_dict(path)
    assert_same_state_dict(loaded, ref)
    assert_same_state_dict(lazy, ref)
