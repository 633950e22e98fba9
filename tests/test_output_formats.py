"""Each converter output layout reads back through our loader as the source's weights (within FP8 rounding), is laid
out the way ComfyUI's stock loaders need it (``tests/host/test_host_converted_files.py`` runs them), and says
which loaders run it."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from hyvideo_fp8.fp8.formats import FP8_DTYPES
from hyvideo_fp8.fp8.quantize import dequantize
from hyvideo_fp8.hunyuan.checkpoint import convert_checkpoint, load_canonical_state_dict
from hyvideo_fp8.hunyuan.checkpoint.comfy_compat import STOCK_LOADER, loaders_note, stock_outcome
from hyvideo_fp8.hunyuan.checkpoint.writer import OUTPUT_FORMATS
from tests.checkpoint_factory import write_checkpoint

E4M3_REL_ERROR = 0.04  # per-tensor e4m3 on random normal weights: about 2.5 % relative L2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "src.safetensors"
    return path, write_checkpoint(path, layout="comfyui", seed=41, dtype=torch.float32)


def test_every_output_format_has_a_compatibility_row():
    assert set(STOCK_LOADER) == set(OUTPUT_FORMATS)
    assert stock_outcome("ours", "0.29.0") == "refuses"
    assert stock_outcome("scaled_fp8", "0.2.0") is None  # untested versions are not guessed
    with pytest.raises(ValueError, match="unknown output format"):
        stock_outcome("gguf", "0.29.0")
    assert "NOT with ComfyUI 0.3.64" in loaders_note("comfy_quant")
    assert "refuses" in loaders_note("ours") and "0.3.64, 0.29.0" in loaders_note("scaled_fp8")


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_output_reads_back_as_the_source(tmp_path, source, output_format):
    src, reference = source
    dst = tmp_path / f"{output_format}.safetensors"
    report = convert_checkpoint(src, dst, "fp8-balanced", output_format=output_format)
    assert loaders_note(output_format) in report.summary()
    sd, info = load_canonical_state_dict(dst)
    assert set(sd) - {k for k in sd if k.endswith(".weight_scale")} == set(reference)
    fp8 = [k for k, v in sd.items() if v.dtype in FP8_DTYPES]
    linears = [k for k, v in reference.items() if k.endswith(".weight") and v.dim() == 2]
    if output_format == "scaled_fp8":
        assert sorted(fp8) == sorted(linears)  # ComfyUI builds every linear of such a file in FP8
    else:
        assert 0 < len(fp8) < len(linears)  # fp8-balanced keeps embedders, refiner, final layer in high precision
    for name in fp8:
        w = dequantize(sd[name], sd[name[:-len("weight")] + "weight_scale"]).double()
        ref = reference[name].double()
        assert ((w - ref).norm() / ref.norm()).item() < E4M3_REL_ERROR, name
    for name in set(reference) - set(fp8):
        assert torch.allclose(sd[name].double(), reference[name].double(), rtol=1e-2, atol=1e-3), name


def test_stored_layouts(tmp_path, source):
    src, _ = source
    paths = {}
    for fmt in OUTPUT_FORMATS:
        paths[fmt] = tmp_path / f"{fmt}.safetensors"
        convert_checkpoint(src, paths[fmt], "fp8-max", output_format=fmt)
    with safe_open(str(paths["ours"]), "pt") as f:
        assert all(k.startswith("hyvideo_fp8.") for k in f.keys())  # stock detection cannot find the model
        assert f.get_tensor("hyvideo_fp8.double_blocks.0.img_mlp.0.weight_scale").dim() == 1  # per channel
    with safe_open(str(paths["scaled_fp8"]), "pt") as f:
        marker = f.get_tensor("scaled_fp8")
        assert marker.dtype == torch.float8_e4m3fn and marker.numel() == 2  # 2: high-precision matmuls
        assert f.get_tensor("double_blocks.0.img_mlp.0.scale_weight").dim() == 0
        assert not any(k.endswith(".weight_scale") for k in f.keys())
    with safe_open(str(paths["comfy_quant"]), "pt") as f:
        assert f.get_tensor("double_blocks.0.img_mlp.0.weight_scale").dim() == 0
        assert "double_blocks.0.img_mlp.0.comfy_quant" in f.keys()


def test_readme_table_is_the_compatibility_table():
    from pathlib import Path

    from hyvideo_fp8.hunyuan.checkpoint.comfy_compat import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "README's layout table differs from comfy_compat: paste markdown_table()"
