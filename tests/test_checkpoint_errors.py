"""Malformed inputs: each gives a clear error, and the converter leaves no file (not even a temp file) behind."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
import torch
from checkpoint_factory import source_state_dict, write_checkpoint
from safetensors.torch import save_file

from hyvideo_fp8.hunyuan.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    OutputExistsError,
    UnsafePickleError,
    convert_checkpoint,
    load_canonical_state_dict,
)
from hyvideo_fp8.hunyuan.config import NotHunyuanVideoError


class _Evil:
    """Unpickling this runs a shell command (the payload creates a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Custom:
    pass


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _expect_clean_failure(tmp_path, src, exc, match):
    """Loading and converting both fail with the message; the converter writes nothing."""
    with pytest.raises(exc, match=match):
        load_canonical_state_dict(src)
    before = _files(tmp_path)
    with pytest.raises(exc, match=match):
        convert_checkpoint(src, tmp_path / "out.safetensors", "fp8-max")
    assert _files(tmp_path) == before  # no output, no .tmp


def _good_safetensors(tmp_path, **kw) -> tuple:
    path = tmp_path / "good.safetensors"
    write_checkpoint(path, **kw)
    return path, path.read_bytes()


def test_truncated_safetensors_data(tmp_path):
    path, raw = _good_safetensors(tmp_path)
    path.write_bytes(raw[: len(raw) - 1000])
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, r"is truncated: tensor .* Download the file again")


def test_truncated_inside_header_and_tiny_file(tmp_path):
    path, raw = _good_safetensors(tmp_path)
    path.write_bytes(raw[:100])
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "truncated inside its safetensors header")
    path.write_bytes(raw[:5])
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "truncated: a safetensors file starts with")


def test_bad_safetensors_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    body = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'  # missing closing brace
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 8)
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "bad safetensors header .*invalid JSON")
    body = b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}'
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 8)
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, r"declares shape \(3,\).*but 8 bytes")
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "implausible")


def test_truncated_and_garbage_pt(tmp_path):
    path = tmp_path / "t.pt"
    write_checkpoint(path, fmt="pt", wrapper="module")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "corrupt or truncated")
    path.write_bytes(b"this is not a model " * 10)
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "neither a safetensors nor a PyTorch checkpoint")


@pytest.mark.parametrize("payload", ["os_system", "custom_class"])
def test_pickle_with_code_is_refused(tmp_path, payload):
    marker = tmp_path / "PWNED"
    src, _, _ = source_state_dict("tencent")
    src["extra"] = _Evil(str(marker)) if payload == "os_system" else _Custom()
    path = tmp_path / "evil.pt"
    torch.save({"module": src}, path)
    _expect_clean_failure(tmp_path, path, UnsafePickleError,
                          r"evil\.pt contains Python code/objects; refusing to unpickle\. Convert it to safetensors")
    assert not marker.exists()


def test_wrong_shape(tmp_path):
    src, _, _ = source_state_dict("comfyui")
    src["double_blocks.1.img_mlp.2.weight"] = torch.randn(64, 100).to(torch.bfloat16)
    save_file(src, str(tmp_path / "s.safetensors"))
    _expect_clean_failure(tmp_path, tmp_path / "s.safetensors", NotHunyuanVideoError,
                          r"'double_blocks.1.img_mlp.2.weight' has shape \(64, 100\), expected \(64, 256\)")


def test_missing_key(tmp_path):
    src, _, _ = source_state_dict("tencent")
    del src["single_blocks.1.linear2.bias"]
    save_file(src, str(tmp_path / "m.safetensors"))
    _expect_clean_failure(tmp_path, tmp_path / "m.safetensors", NotHunyuanVideoError,
                          "missing 'single_blocks.1.linear2.bias'")


def test_missing_diffusers_piece(tmp_path):
    src, _, _ = source_state_dict("diffusers")
    del src["single_transformer_blocks.0.proj_mlp.weight"]
    save_file(src, str(tmp_path / "d.safetensors"))
    _expect_clean_failure(tmp_path, tmp_path / "d.safetensors", CheckpointError,
                          r"not its sibling piece\(s\) \['proj_mlp'\] needed to rebuild "
                          r"'single_blocks.0.linear1.weight'")


def test_unexpected_extra_key(tmp_path):
    src, _, _ = source_state_dict("comfyui")
    src["double_blocks.0.lora_A.weight"] = torch.randn(4, 64)
    save_file(src, str(tmp_path / "x.safetensors"))
    _expect_clean_failure(tmp_path, tmp_path / "x.safetensors", CheckpointError, "unexpected key.*lora_A")


def _flux() -> dict:
    return {"img_in.weight": torch.randn(8, 64), "double_blocks.0.img_attn.qkv.weight": torch.randn(24, 8),
            "double_blocks.0.img_attn.norm.key_norm.scale": torch.randn(4),
            "final_layer.linear.weight": torch.randn(4, 8)}


@pytest.mark.parametrize("model,keys,expected", [
    ("flux", _flux(), "look like Flux"),
    ("wan", {"patch_embedding.weight": torch.randn(8, 16, 1, 2, 2), "blocks.0.self_attn.q.weight": torch.randn(8, 8)},
     "look like Wan"),
    ("sdxl", {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3)}, "Stable Diffusion UNet"),
    ("vae", {"decoder.up.0.block.0.conv1.weight": torch.randn(4, 4, 3, 3)}, "a VAE"),
])
def test_another_models_checkpoint(tmp_path, model, keys, expected):
    save_file(keys, str(tmp_path / f"{model}.safetensors"))
    _expect_clean_failure(tmp_path, tmp_path / f"{model}.safetensors", NotHunyuanVideoError,
                          f"not a HunyuanVideo transformer: .*{expected}")


def test_hunyuanvideo_15_is_named(tmp_path):
    src, _, _ = source_state_dict("comfyui")
    src["byt5_in.fc1.weight"] = torch.randn(64, 32)
    src["cond_type_embedding.weight"] = torch.randn(3, 64)
    save_file(src, str(tmp_path / "hv15.safetensors"))
    _expect_clean_failure(tmp_path, tmp_path / "hv15.safetensors", NotHunyuanVideoError, "HunyuanVideo 1.5")


def test_gguf_is_pointed_elsewhere(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    _expect_clean_failure(tmp_path, tmp_path / "m.gguf", CheckpointError, "GGUF file: load it with city96")


def test_converter_refuses_to_overwrite(tmp_path):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(OutputExistsError, match="over its own source"):
        convert_checkpoint(src, src, "fp8-max", overwrite=True)
    dst = tmp_path / "dst.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists; pass overwrite=True"):
        convert_checkpoint(src, dst, "fp8-max")
    assert dst.read_bytes() == b"precious"
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the source is never touched
    assert _files(tmp_path) == {"src.safetensors", "dst.safetensors"}


def test_failure_mid_write_leaves_destination_untouched(tmp_path, monkeypatch):
    """An error after the temp file exists (here: the 5th quantized layer) removes it; an existing dst survives."""
    from hyvideo_fp8.hunyuan.checkpoint import convert as convert_mod
    src = tmp_path / "src.safetensors"
    write_checkpoint(src)
    dst = tmp_path / "dst.safetensors"
    dst.write_bytes(b"old version")
    calls = []
    real = convert_mod.quantize_rowwise

    def flaky(w, dtype):
        calls.append(1)
        if len(calls) == 5:
            raise MemoryError("simulated out of memory")
        return real(w, dtype)

    monkeypatch.setattr(convert_mod, "quantize_rowwise", flaky)
    with pytest.raises(MemoryError):
        convert_checkpoint(src, dst, "fp8-max", overwrite=True)
    assert len(calls) == 5
    assert dst.read_bytes() == b"old version"
    assert _files(tmp_path) == {"src.safetensors", "dst.safetensors"}
