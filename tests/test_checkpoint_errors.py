"""Malformed inputs: each gives a clear error, and the converter leaves no file (not even a temp file) behind."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_factory import source_state_dict, write_checkpoint
from safetensors.torch import save_file

from hyvideo_fp8.hunyuan.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    InvalidValuesError,
    OutputBusyError,
    OutputExistsError,
    UnsafePickleError,
    convert_checkpoint,
    inspect_checkpoint,
    load_canonical_state_dict,
)
from hyvideo_fp8.hunyuan.config import NotHunyuanVideoError

ROOT = Path(__file__).resolve().parent.parent


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


def test_partial_hunyuanvideo_15_is_named(tmp_path):
    src, _, _ = source_state_dict("comfyui")
    src["byt5_in.fc1.weight"] = torch.randn(64, 32)
    src["cond_type_embedding.weight"] = torch.randn(3, 64)
    save_file(src, str(tmp_path / "hv15.safetensors"))
    _expect_clean_failure(tmp_path, tmp_path / "hv15.safetensors", NotHunyuanVideoError,
                          "HunyuanVideo 1.5 checkpoint is missing 'byt5_in.fc2.weight'")


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


# --- headers the safetensors library would reject, or that crashed the parser -------------------------------------

def _raw_safetensors(path, header: bytes, data: bytes = b"\0" * 8) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def test_metadata_that_is_not_a_string_map(tmp_path):
    path = tmp_path / "m.safetensors"
    tensor = b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    for meta in (b"[1, 2]", b'"text"', b'{"k": 3}'):
        _raw_safetensors(path, b'{"__metadata__": ' + meta + b", " + tensor + b"}")
        _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "__metadata__ must map strings to strings")


def test_deeply_nested_header(tmp_path):
    path = tmp_path / "deep.safetensors"
    _raw_safetensors(path, b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "JSON nested too deeply")


def test_tensors_with_gaps_overlaps_or_trailing_bytes(tmp_path):
    path, raw = _good_safetensors(tmp_path)
    path.write_bytes(raw + b"\0" * 16)
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "16 bytes after its last tensor")
    path = tmp_path / "overlap.safetensors"
    _raw_safetensors(path, b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                           b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', b"\0" * 12)
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "starts at data byte 4, expected 8")
    _raw_safetensors(path, b'{"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}')
    _expect_clean_failure(tmp_path, path, CorruptCheckpointError, "bad safetensors header entry 'a'")


def test_empty_tensor_at_the_same_offset_as_the_next_one_is_valid(tmp_path):
    """Zero-byte tensors (scaled_fp8's marker) share their offset with the next tensor, whatever the header order."""
    from hyvideo_fp8.hunyuan.checkpoint.readers import open_checkpoint

    path = tmp_path / "e.safetensors"
    _raw_safetensors(path, b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                           b'"marker": {"dtype": "F8_E4M3", "shape": [0], "data_offsets": [0, 0]}}',
                     struct.pack("<2f", 1.5, -2.0))
    with open_checkpoint(path) as source:
        assert source.get("a").tolist() == [1.5, -2.0] and source.get("marker").shape == (0,)


@pytest.mark.parametrize("zipped", [False, True], ids=["legacy-pickle", "zip"])
def test_pytorch_file_named_safetensors_is_read_as_what_it_is(tmp_path, zipped):
    """Extensions lie: a torch.save file called .safetensors is read with the (weights-only) pickle reader."""
    src, ref, _ = source_state_dict("tencent")
    path = tmp_path / "really_a_pickle.safetensors"
    torch.save({"module": src}, path, _use_new_zipfile_serialization=zipped)
    sd, info = load_canonical_state_dict(path)
    assert info.file_format == "pt" and sorted(sd) == sorted(ref)
    evil = tmp_path / "evil.safetensors"
    torch.save({"x": _Evil(str(tmp_path / "PWNED"))}, evil, _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        load_canonical_state_dict(evil)
    assert not (tmp_path / "PWNED").exists()


# --- inputs that are not regular files ----------------------------------------------------------------------------

def _not_a_file(tmp_path, kind):
    if kind == "folder":
        (tmp_path / "folder.safetensors").mkdir()
        return tmp_path / "folder.safetensors", CheckpointError, "is a folder, not a file"
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.safetensors")
        return tmp_path / "pipe.safetensors", CheckpointError, r"is a FIFO \(named pipe\)"
    if kind == "device":
        return "/dev/zero", CheckpointError, "is a character device"
    if kind == "symlink-loop":
        os.symlink("loop.safetensors", tmp_path / "loop.safetensors")
        return tmp_path / "loop.safetensors", CheckpointError, "symlink that cannot be followed .*symlink loop"
    os.symlink("gone.safetensors", tmp_path / "dangling.safetensors")
    return tmp_path / "dangling.safetensors", FileNotFoundError, "symlink to 'gone.safetensors', which does not exist"


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "symlink-loop", "dangling-symlink"])
def test_input_that_is_not_a_regular_file(tmp_path, kind):
    path, exc, match = _not_a_file(tmp_path, kind)
    _expect_clean_failure(tmp_path, path, exc, match)
    with pytest.raises(exc, match=match):
        inspect_checkpoint(path)


# --- values: garbage that used to load and convert with exit code 0 -----------------------------------------------

def _write(tmp_path, src, name="v.safetensors", metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in src.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("case", ["nan", "inf", "all-nan", "fp16-inf", "fp32-nan"])
def test_nonfinite_weights_are_refused(tmp_path, case):
    dtype = {"fp16-inf": torch.float16, "fp32-nan": torch.float32}.get(case, torch.bfloat16)
    src, _, _ = source_state_dict("comfyui", dtype=dtype)
    name = "double_blocks.1.img_mlp.0.weight" if case != "all-nan" else "single_blocks.0.linear2.bias"
    t = src[name].clone()
    if case == "all-nan":
        t[:] = float("nan")
    else:
        t[3, 5] = float("inf") if "inf" in case else float("nan")
    src[name] = t
    path = _write(tmp_path, src)
    bad = t.numel() if case == "all-nan" else 1
    _expect_clean_failure(tmp_path, path, InvalidValuesError, rf"'{name}' holds {bad:,} NaN/Inf values")


def test_fp8_nan_byte_is_refused(tmp_path):
    src, _, _ = source_state_dict("comfyui", fp8="scaled_fp8")
    name = "double_blocks.0.txt_attn.proj.weight"
    bits = src[name].view(torch.uint8).clone()
    bits[1, 2] = 0xFF  # e4m3fn NaN (its only non-finite codes are S.1111.111)
    src[name] = bits.view(torch.float8_e4m3fn)
    path = _write(tmp_path, src)
    _expect_clean_failure(tmp_path, path, InvalidValuesError, f"'{name}' holds 1 NaN codes")


@pytest.mark.parametrize("value,match", [(0.0, "entry 0; .*zero makes the layer all zeros"),
                                         (-0.01, "entry -0.01; .*a negative one flips"),
                                         (float("nan"), "holds 1 NaN/Inf values"),
                                         (float("inf"), "holds 1 NaN/Inf values")])
def test_bad_fp8_scales_are_refused_by_load_convert_and_inspect(tmp_path, value, match):
    src, _, _ = source_state_dict("comfyui", fp8="scaled_fp8")
    src["double_blocks.1.img_mlp.2.scale_weight"] = torch.tensor(value)
    path = _write(tmp_path, src)
    _expect_clean_failure(tmp_path, path, InvalidValuesError, match)
    with pytest.raises(InvalidValuesError, match=match):
        inspect_checkpoint(path)


def test_streamed_loader_refuses_nan_as_it_reads(tmp_path):
    from hyvideo_fp8.hunyuan.checkpoint import open_canonical
    from hyvideo_fp8.hunyuan.loader import load_transformer
    from hyvideo_fp8.hunyuan.policies import get_preset

    src, _, _ = source_state_dict("comfyui")
    src["final_layer.linear.weight"] = src["final_layer.linear.weight"].clone()
    src["final_layer.linear.weight"][0, 0] = float("nan")
    path = _write(tmp_path, src)
    with open_canonical(path) as ckpt, pytest.raises(InvalidValuesError, match="'final_layer.linear.weight' holds 1"):
        load_transformer(ckpt.lazy_state_dict(), get_preset("fp8-balanced"), consume=True)


# --- the source changing under the converter; temp files --------------------------------------------------------

@pytest.mark.parametrize("name,kwargs", [("src.safetensors", {}),
                                         ("src.pt", dict(layout="tencent", fmt="pt", wrapper="module"))])
def test_source_truncated_while_converting_is_an_error_not_sigbus(tmp_path, name, kwargs):
    """Tensors are read with plain reads, so a source cut short mid-conversion fails with a message (a memory map
    would kill the process with SIGBUS), and the partial output is removed."""
    src = tmp_path / name
    write_checkpoint(src, **kwargs)
    size = src.stat().st_size

    def cut(done, total):
        if done == 3:
            os.truncate(src, size // 2)

    with pytest.raises(CorruptCheckpointError, match="truncated or replaced while it was being read"):
        convert_checkpoint(src, tmp_path / "out.safetensors", "fp8-max", progress=cut)
    assert _files(tmp_path) == {name}


def test_source_rewritten_while_converting_is_an_error(tmp_path):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src)

    def touch(done, total):
        if done == total:
            os.utime(src, ns=(0, 0))

    with pytest.raises(CorruptCheckpointError, match="changed while it was being converted"):
        convert_checkpoint(src, tmp_path / "out.safetensors", "fp8-max", progress=touch)
    assert _files(tmp_path) == {"src.safetensors"}


def test_interrupt_mid_write_removes_the_temp_file(tmp_path):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src)
    dst = tmp_path / "dst.safetensors"
    dst.write_bytes(b"old version")

    def stop(done, total):
        assert (tmp_path / ".dst.safetensors.partial").exists()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(src, dst, "fp8-max", overwrite=True, progress=stop)
    assert dst.read_bytes() == b"old version"
    assert _files(tmp_path) == {"src.safetensors", "dst.safetensors"}


def test_a_live_conversion_to_the_same_destination_is_not_disturbed(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    src = tmp_path / "src.safetensors"
    write_checkpoint(src)
    busy = tmp_path / ".out.safetensors.partial"
    with open(busy, "wb") as held:
        held.write(b"being written")
        held.flush()
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(OutputBusyError, match="another conversion is writing .*out.safetensors right now"):
            convert_checkpoint(src, tmp_path / "out.safetensors", "fp8-max")
        assert busy.read_bytes() == b"being written"
    assert _files(tmp_path) == {"src.safetensors", ".out.safetensors.partial"}


def test_output_mode_follows_the_umask(tmp_path):
    src = tmp_path / "src.safetensors"
    write_checkpoint(src)
    old = os.umask(0o027)
    try:
        convert_checkpoint(src, tmp_path / "out.safetensors", "fp8-max")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.safetensors").stat().st_mode) == 0o640


_DISK_FULL = """
import resource, signal, sys
sys.path.insert(0, {root!r})
from pack_path import load_pack
load_pack()
from hyvideo_fp8.hunyuan.checkpoint import convert_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as a full disk fails them
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    convert_checkpoint({src!r}, {dst!r}, "fp8-max")
except OSError as e:
    print("OSError:", e)
"""


def test_disk_full_mid_write_leaves_nothing(tmp_path):
    """The write fails part way (the file-size limit stands in for a full disk), and closing the temp file fails
    again on its unflushed tail: the temp file is removed all the same."""
    src = tmp_path / "src.safetensors"
    write_checkpoint(src)
    code = _DISK_FULL.format(root=str(ROOT), limit=200_000, src=str(src), dst=str(tmp_path / "out.safetensors"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OSError: [Errno 27] writing out.safetensors failed: File too large" in r.stdout
    assert "the partial file was removed" in r.stdout
    assert _files(tmp_path) == {"src.safetensors"}


def test_not_enough_free_space_is_found_before_writing(tmp_path, monkeypatch):
    from hyvideo_fp8.hunyuan.checkpoint import writer

    src = tmp_path / "src.safetensors"
    write_checkpoint(src)
    real = writer.shutil.disk_usage
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OSError, match=r"needs 0.00 GiB but its folder .* has 0.00 GiB free: free space"):
        convert_checkpoint(src, tmp_path / "out.safetensors", "fp8-max")
    assert _files(tmp_path) == {"src.safetensors"}


def test_extreme_finite_weights_give_a_finite_reported_error(tmp_path):
    """Huge (1e30) and all-zero weights are legal values: they convert, and the report's worst error is finite and
    equals a float64 recomputation from the written file."""
    from hyvideo_fp8.fp8.quantize import dequantize

    src, _, _ = source_state_dict("comfyui", dtype=torch.float32)
    src["double_blocks.0.img_mlp.0.weight"] = src["double_blocks.0.img_mlp.0.weight"] * 1e30
    src["single_blocks.1.linear2.weight"] = torch.zeros_like(src["single_blocks.1.linear2.weight"])
    path = _write(tmp_path, src)
    report = convert_checkpoint(path, tmp_path / "out.safetensors", "fp8-max")
    sd, _ = load_canonical_state_dict(tmp_path / "out.safetensors")
    worst = report.worst_layer
    ref = src[f"{worst}.weight"].double()
    got = dequantize(sd[f"{worst}.weight"], sd[f"{worst}.weight_scale"], torch.float64)
    assert 0 < report.max_rel_error < 0.035  # per-row e4m3
    assert abs(report.max_rel_error - float((got - ref).norm() / ref.norm())) < 1e-9
    huge = "double_blocks.0.img_mlp.0"
    assert torch.isfinite(dequantize(sd[f"{huge}.weight"], sd[f"{huge}.weight_scale"], torch.float64)).all()
    zero = "single_blocks.1.linear2"
    assert not dequantize(sd[f"{zero}.weight"], sd[f"{zero}.weight_scale"], torch.float64).any()


_KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pack_path import load_pack
load_pack()
from hyvideo_fp8.hunyuan.checkpoint import convert_checkpoint
from hyvideo_fp8.hunyuan.checkpoint.writer import StreamingSafetensorsWriter
real = StreamingSafetensorsWriter.write

def write(self, name, tensor):
    real(self, name, tensor)
    if self.written == 5:
        self._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: what a power cut or the OOM killer does

StreamingSafetensorsWriter.write = write
convert_checkpoint({src!r}, {dst!r}, "fp8-max")
"""


def test_run_killed_outright_leaves_one_temp_file_that_the_next_run_reuses(tmp_path):
    src, dst = tmp_path / "src.safetensors", tmp_path / "out.safetensors"
    write_checkpoint(src)
    code = _KILLED.format(root=str(ROOT), src=str(src), dst=str(dst))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert _files(tmp_path) == {"src.safetensors", ".out.safetensors.partial"}  # the one thing SIGKILL leaves
    assert (tmp_path / ".out.safetensors.partial").stat().st_size > 0
    convert_checkpoint(src, dst, "fp8-max")  # the dead run's lock died with it: its temp file is reused
    assert _files(tmp_path) == {"src.safetensors", "out.safetensors"}
    assert len(load_canonical_state_dict(dst)[0]) > 0
