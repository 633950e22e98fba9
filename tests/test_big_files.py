"""Checkpoints larger than the memory a process may use: inspect, convert and load still work (safetensors and zip
.pt), because tensors are read by plain reads of their byte ranges (a memory map of the whole file needs address space
for all of it).

The file is sparse (a huge tensor of zeros outside the transformer costs no disk), and the address space is capped
just above what the process already uses, below the file size, for the duration of the test.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import struct

import pytest
import torch
from checkpoint_factory import source_state_dict
from safetensors.torch import save

from hyvideo_fp8.hunyuan.checkpoint import convert_checkpoint, inspect_checkpoint, open_canonical
from hyvideo_fp8.hunyuan.checkpoint.readers import open_checkpoint
from hyvideo_fp8.hunyuan.loader import load_transformer
from hyvideo_fp8.hunyuan.policies import get_preset

resource = pytest.importorskip("resource")

HEADROOM = 160 << 20  # address space the test may add to what the process has mapped already
BIG = 256 << 20  # the other model's tensor: the file is larger than the headroom


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


@contextlib.contextmanager
def _address_space_cap(extra: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _sparse_checkpoint(path) -> None:
    """A full-checkpoint-style file: the tiny transformer under model.diffusion_model., then BIG bytes of another
    model's tensor that exist only as a hole in the file."""
    src, _, _ = source_state_dict("comfyui", seed=5)
    raw = save({f"model.diffusion_model.{k}": v.contiguous() for k, v in src.items()})
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    header["first_stage_model.decoder.huge"] = {"dtype": "U8", "shape": [BIG], "data_offsets": [len(data),
                                                                                                len(data) + BIG]}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)
        f.truncate(8 + len(head) + len(data) + BIG)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_AS"), reason="no address-space limit on this OS")
def test_inspect_convert_and_load_a_file_larger_than_the_address_space_left(tmp_path):
    path = tmp_path / "full_checkpoint.safetensors"
    _sparse_checkpoint(path)
    assert path.stat().st_size > HEADROOM
    with _address_space_cap(HEADROOM):
        with open(path, "rb") as f, pytest.raises(OSError):  # what a private map of the whole file meets
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        assert "ignored:   1 keys outside the transformer" in inspect_checkpoint(path)
        report = convert_checkpoint(path, tmp_path / "fp8.safetensors", "fp8-max")
        with open_canonical(path) as ckpt:
            model = load_transformer(ckpt.lazy_state_dict(), get_preset("fp8-balanced"), consume=True)
    assert report.fp8_layers == 49 and model.img_in.proj.weight.shape == (64, 16, 1, 2, 2)


def test_a_tensor_too_big_for_the_machine_names_the_machines_limit(tmp_path):
    path = tmp_path / "full_checkpoint.safetensors"
    _sparse_checkpoint(path)
    with open_checkpoint(path) as source, _address_space_cap(BIG // 2):
        with pytest.raises(MemoryError, match=r"reading 'first_stage_model.decoder.huge' from full_checkpoint"
                                              r".safetensors needs 0.2 GiB of memory, which this machine refused "
                                              r"\(.*address space limited to .*\)\. The file is fine"):
            source.get("first_stage_model.decoder.huge")
    with open_checkpoint(path) as source:  # without the cap the same read works: the file was never the problem
        assert torch.equal(source.get("first_stage_model.decoder.huge")[-8:], torch.zeros(8, dtype=torch.uint8))


def test_a_pt_file_larger_than_the_address_space_left(tmp_path):
    """Zip .pt files are read the same way (storage offsets from a meta-device load, then plain reads)."""
    src, _, _ = source_state_dict("tencent", seed=6)
    path = tmp_path / "big.pt"
    torch.save({"module": src, "huge": torch.zeros(BIG, dtype=torch.uint8)}, path)
    with _address_space_cap(HEADROOM):
        assert "layout:    tencent" in inspect_checkpoint(path)
        report = convert_checkpoint(path, tmp_path / "fp8.safetensors", "fp8-max")
        with open_canonical(path) as ckpt:
            load_transformer(ckpt.lazy_state_dict(), get_preset("fp8-balanced"), consume=True)
    assert report.fp8_layers == 49


def test_a_legacy_pt_file_too_big_to_load_names_the_machines_limit(tmp_path):
    """Pre-zip .pt files can only be loaded whole: when that is refused the error blames the machine, not the file."""
    src, _, _ = source_state_dict("tencent", seed=7)
    path = tmp_path / "legacy.pt"
    torch.save({"module": src, "huge": torch.zeros(BIG, dtype=torch.uint8)}, path, _use_new_zipfile_serialization=False)
    with _address_space_cap(HEADROOM), pytest.raises(MemoryError, match=r"loading legacy.pt needs 0\.\d GiB of "
                                                                        r"memory, which this machine refused"):
        inspect_checkpoint(path)
