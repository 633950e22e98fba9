"""File formats: safetensors and PyTorch ``.pt`` (``weights_only``), both lazy, tensor by tensor.

A reader turns a file into a :class:`TensorSource`: names, shapes and dtypes known up front, tensors fetched one at
a time, so a 25 GB checkpoint never has to sit in RAM. Wrappers (DeepSpeed ``module``/``ema``, ``state_dict``, any
single-key dict) are unwrapped here; key prefixes and layouts are :mod:`.layouts`' job.

Tensors are read with plain file reads of their byte ranges into fresh tensors, not through a memory map of the
whole file: a private map of a file larger than RAM is refused by the OS, and a file truncated while it is mapped
kills the process with SIGBUS, where a short read is an error we can explain. For safetensors the ranges come from
the header; for a zip ``.pt`` from ``torch.load`` under a ``FakeTensorMode`` (the weights-only unpickler; no tensor
data is read), which records each storage's offset in the file on torch 2.7+. Legacy (pre-zip) ``.pt`` files,
big-endian ones and older torch fall back to ``torch.load`` (memory-mapped where the format allows).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import stat
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping

import torch

from .errors import CheckpointError, CorruptCheckpointError, UnsafePickleError
from .limits import allocation_error, is_out_of_memory

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

MAX_HEADER_BYTES = 100_000_000  # a 13B model's header is ~100 kB; anything this large is not a real header
WRAPPER_KEYS = ("module", "ema")
_ZIP_MAGIC = b"PK\x03\x04"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a stored tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class TensorSource:
    """A checkpoint's tensors by name, fetched lazily.

    ``wrapper`` records the dict keys that were unwrapped (e.g. ``("module",)``), ``dropped`` the non-tensor entries
    that were skipped (DeepSpeed bookkeeping), ``metadata`` the safetensors ``__metadata__`` (empty for ``.pt``).
    A file-backed source reads each tensor from its absolute byte range in ``_ranges`` through ``_file``; a tensor
    stored as a strided view (``.pt``) has its strides in ``_strides`` and its range spans the elements it covers.
    """

    path: Path
    file_format: str
    specs: dict[str, TensorSpec]
    metadata: dict[str, str] = field(default_factory=dict)
    wrapper: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    _tensors: Mapping[str, torch.Tensor] | None = None
    _file: BinaryIO | None = None
    _ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    _strides: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (a fresh CPU tensor; a memory-mapped view for ``.pt`` files torch maps itself)."""
        if name not in self.specs:
            raise KeyError(f"{name!r} is not in {self.path.name}")
        if self._tensors is not None:
            return self._tensors[name]
        if self._file is None:
            raise ValueError(f"{self.path.name} is closed")
        return self._read(name)

    def _read(self, name: str) -> torch.Tensor:
        spec = self.specs[name]
        begin, end = self._ranges[name]
        stride = self._strides.get(name)
        shape = spec.shape if stride is None else ((end - begin) // spec.dtype.itemsize,)
        try:
            out = torch.empty(shape, dtype=spec.dtype)
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            raise allocation_error(f"reading {name!r} from {self.path.name}", end - begin) from None
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if end > begin else memoryview(b"")
        self._file.seek(begin)  # type: ignore[union-attr]
        pos = 0
        while pos < end - begin:
            n = self._file.readinto(view[pos:])  # type: ignore[union-attr]
            if not n:
                raise CorruptCheckpointError(
                    f"{self.path.name} ended at byte {begin + pos} while reading {name!r} (bytes {begin}-{end}): the "
                    "file was truncated or replaced while it was being read")
            pos += n
        return out if stride is None else out.as_strided(spec.shape, stride).clone()

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.specs:
            yield name, self.get(name)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tensors = None

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_NOT_REGULAR = ((stat.S_ISDIR, "a folder, not a file: pass the checkpoint file inside it"),
                (stat.S_ISFIFO, "a FIFO (named pipe), not a checkpoint file"),
                (stat.S_ISCHR, "a character device, not a checkpoint file"),
                (stat.S_ISBLK, "a block device, not a checkpoint file"),
                (stat.S_ISSOCK, "a socket, not a checkpoint file"))


def check_input_file(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``path`` as a Path if it is a readable regular file; otherwise a precise error (missing, a folder, a FIFO, a
    device, a symlink loop, unreadable). Checked with ``stat`` only: opening a FIFO would block."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(f"{what} {str(path)!r} is a symlink to {os.readlink(path)!r}, which does not "
                                    "exist") from None
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist") from None
    except OSError as e:
        if path.is_symlink():
            raise CheckpointError(f"{what} {str(path)!r} is a symlink that cannot be followed ({e.strerror}: a "
                                  "symlink loop?): point it at the real file") from None
        raise CheckpointError(f"{what} {str(path)!r} cannot be read: {e.strerror}") from None
    for test, kind in _NOT_REGULAR:
        if test(st.st_mode):
            raise CheckpointError(f"{what} {str(path)!r} is {kind}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {str(path)!r} cannot be read (permission denied)")
    return path


def sniff_format(path: str | os.PathLike) -> str:
    """``"safetensors"`` or ``"pt"`` from the file's first bytes (extensions lie: ``.bin``, ``.sft``, ``.ckpt``)."""
    path = check_input_file(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_GGUF_MAGIC):
        raise CheckpointError(f"{path.name} is a GGUF file: load it with city96's ComfyUI-GGUF (Unet Loader (GGUF)); "
                              "this pack reads safetensors and .pt checkpoints")
    if len(head) == 9 and head[8:9] == b"{":  # first: the 8-byte length may itself start with 0x80
        return "safetensors"
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        return "pt"
    if path.suffix.lower() in (".safetensors", ".sft"):
        return "safetensors"  # malformed: read_safetensors_header says how
    raise CorruptCheckpointError(f"{path.name} is neither a safetensors nor a PyTorch checkpoint (first bytes "
                                 f"{head[:8]!r}); the file may be truncated or not a model file")


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Parse and validate a safetensors header without touching tensor data.

    Checks what the safetensors library would only report cryptically: header length, JSON, known dtypes, and that
    every tensor's bytes lie inside the file (a truncated download fails here, naming the first missing tensor).
    """
    specs, metadata, _ = _parse_safetensors_header(check_input_file(path))
    return specs, metadata


def _parse_safetensors_header(path: Path
                              ) -> tuple[dict[str, TensorSpec], dict[str, str], dict[str, tuple[int, int]]]:
    """Specs, metadata and each tensor's absolute byte range, validated like the safetensors library does: tensors
    back to back from the end of the header to the end of the file, nothing overlapping, nothing left over."""
    size = path.stat().st_size
    where = f"{path.name} ({size} bytes)"
    if size < 8:
        raise CorruptCheckpointError(f"{where} is truncated: a safetensors file starts with an 8-byte header length. "
                                     "Download it again")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise CorruptCheckpointError(f"{where} has a bad safetensors header: declared length {header_len} bytes "
                                         "is implausible (not a safetensors file, or corrupt)")
        if 8 + header_len > size:
            raise CorruptCheckpointError(f"{where} is truncated inside its safetensors header ({header_len} bytes "
                                         "declared). Download it again")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{where} has a bad safetensors header (invalid JSON: {e})") from None
    except RecursionError:
        raise CorruptCheckpointError(f"{where} has a bad safetensors header (JSON nested too deeply: a real header "
                                     "is two levels deep)") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{where} has a bad safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptCheckpointError(f"{where} has a bad safetensors header: __metadata__ must map strings to "
                                     f"strings, got {str(metadata)[:100]}")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    specs: dict[str, TensorSpec] = {}
    ranges: dict[str, tuple[int, int]] = {}
    expected_begin = 0
    for name, entry in sorted(header.items(), key=_file_order):
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(_count(d) for d in entry["shape"])
            begin, end = _offsets(entry)
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpointError(f"{where} has a bad safetensors header entry {name!r}: "
                                         f"{str(entry)[:200]}") from None
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CorruptCheckpointError(f"{where}: tensor {name!r} declares shape {shape} {dtype} but "
                                         f"{end - begin} bytes; the header is corrupt")
        if end > data_size:
            raise CorruptCheckpointError(f"{where} is truncated: tensor {name!r} ends at byte {data_start + end}. "
                                         "Download the file again")
        if begin != expected_begin:
            raise CorruptCheckpointError(f"{where} has a bad safetensors header: tensor {name!r} starts at data byte "
                                         f"{begin}, expected {expected_begin} (tensors overlap or leave gaps)")
        expected_begin = end
        specs[name] = TensorSpec(shape, dtype)
        ranges[name] = (data_start + begin, data_start + end)
    if expected_begin != data_size:
        raise CorruptCheckpointError(f"{where} has {data_size - expected_begin} bytes after its last tensor: not a "
                                     "valid safetensors file (two files joined, or a corrupt download)")
    return specs, dict(metadata), ranges


def _count(d: object) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < 0:
        raise ValueError(d)
    return d


def _file_order(item: tuple[str, object]) -> tuple[int, int]:
    """(begin, end): an empty tensor sorts before the one that starts at the same byte."""
    try:
        return _offsets(item[1])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return -1, -1  # malformed entries sort first and fail validation with their name


def _offsets(entry: dict) -> tuple[int, int]:
    begin, end = entry["data_offsets"]
    return _count(begin), _count(end)


def open_safetensors(path: str | os.PathLike) -> TensorSource:
    path = check_input_file(path)
    specs, metadata, ranges = _parse_safetensors_header(path)
    return TensorSource(path, "safetensors", specs, metadata, _file=open(path, "rb", buffering=0), _ranges=ranges)


def load_torch_weights(path: str | os.PathLike, *, meta: bool = False) -> object:
    """``torch.load`` with ``weights_only=True`` (memory-mapped for zip files); never executes pickled code.

    ``meta=True`` loads fake tensors: shapes, dtypes, strides and, on torch 2.7+, each storage's byte offset in the
    file (``_checkpoint_offset``), without reading or mapping any tensor data.
    """
    path = check_input_file(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    try:
        if meta:
            from torch._subclasses.fake_tensor import FakeTensorMode

            with open(path, "rb") as f, FakeTensorMode():
                return torch.load(io.BufferedReader(f), weights_only=True)
        if path.name.endswith(".safetensors"):  # torch.load would hand a path with this name to safetensors
            with open(path, "rb") as f:
                return torch.load(io.BufferedReader(f), map_location="cpu", weights_only=True)
        # mmap only exists for the zip format; legacy (pre-1.6) pickles are read into RAM, still weights_only
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UnsafePickleError(
                f"{path.name} contains Python code/objects; refusing to unpickle. Convert it to safetensors with a "
                f"trusted tool (or re-save only its tensors), then load that file. Detail: {_first_line(e)}"
            ) from None
        raise CorruptCheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {_first_line(e)}") from None
    except Exception as e:  # torch reports a damaged zip or pickle with many exception types
        if is_out_of_memory(e):
            raise allocation_error(f"loading {path.name}", path.stat().st_size) from None
        raise CorruptCheckpointError(f"{path.name} is corrupt or truncated ({_first_line(e)}). "
                                     "Download it again") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def unwrap_state_dict(obj: object, prefer: str = "module", where: str = "checkpoint"
                      ) -> tuple[dict[str, torch.Tensor], tuple[str, ...], tuple[str, ...]]:
    """Find the tensor dict inside training wrappers.

    Handles DeepSpeed ``{"module": ..., "ema": ...}`` (``prefer`` picks one when both exist), ``{"state_dict": ...}``
    and any single-key dict, nested. Returns ``(tensors, wrapper_path, dropped_non_tensor_keys)``.
    """
    if prefer not in WRAPPER_KEYS:
        raise ValueError(f"prefer must be one of {WRAPPER_KEYS}, got {prefer!r}")
    path: list[str] = []
    for _ in range(8):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{where}: {'/'.join(path) or 'the top level'} holds a {type(obj).__name__}, "
                                  "not a dict of tensors")
        present = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if present:
            key = prefer if prefer in present else present[0]
            if prefer not in present and prefer != "module":
                raise CheckpointError(f"{where} has no {prefer!r} weights (it has {present}); load it with "
                                      f"prefer={present[0]!r}")
        elif isinstance(obj.get("state_dict"), Mapping):
            key = "state_dict"
        elif len(obj) == 1 and isinstance(next(iter(obj.values())), Mapping):
            key = next(iter(obj))
        else:
            break
        path.append(str(key))
        obj = obj[key]
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped = tuple(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not tensors:
        raise CheckpointError(f"{where} has no tensors under {'/'.join(path) or 'the top level'}; "
                              f"its keys are {sorted(map(str, obj))[:10]}")
    return tensors, tuple(path), dropped


def _little_endian_zip(path: Path) -> bool:
    """A zip ``.pt`` whose tensor bytes need no swapping here (its ``byteorder`` record, if any, is this machine's)."""
    try:
        with zipfile.ZipFile(path) as z:
            marks = [n for n in z.namelist() if n.endswith("/byteorder")]
            return all(z.read(n).decode(errors="replace") == sys.byteorder for n in marks) and sys.byteorder == "little"
    except (zipfile.BadZipFile, OSError, RuntimeError):
        return False  # torch.load reports what is wrong with it


def _file_ranges(tensors: Mapping[str, torch.Tensor], path: Path
                 ) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, ...]]] | None:
    """Each fake tensor's byte range in the file (and its strides when it is not one contiguous block), from its
    storage's ``_checkpoint_offset``; None when this torch does not record the offsets."""
    size = path.stat().st_size
    ranges: dict[str, tuple[int, int]] = {}
    strides: dict[str, tuple[int, ...]] = {}
    for name, t in tensors.items():
        offset = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        if not isinstance(offset, int):
            return None
        item = t.dtype.itemsize
        begin = offset + t.storage_offset() * item
        if t.is_contiguous():
            span = t.numel()
        else:
            span = 0 if t.numel() == 0 else 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
            strides[name] = tuple(t.stride())
        end = begin + span * item
        if end > size or offset + t.untyped_storage().nbytes() > size:
            raise CorruptCheckpointError(f"{path.name} is truncated: tensor {name!r} ends at byte {end} of {size}. "
                                         "Download the file again")
        ranges[name] = (begin, end)
    return ranges, strides


def open_torch(path: str | os.PathLike, prefer: str = "module") -> TensorSource:
    path = check_input_file(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    if is_zip and _little_endian_zip(path):
        tensors, wrapper, dropped = unwrap_state_dict(load_torch_weights(path, meta=True), prefer, path.name)
        found = _file_ranges(tensors, path)
        if found is not None:
            specs = {k: TensorSpec(tuple(t.shape), t.dtype) for k, t in tensors.items()}
            return TensorSource(path, "pt", specs, {}, wrapper, dropped, _file=open(path, "rb", buffering=0),
                                _ranges=found[0], _strides=found[1])
    tensors, wrapper, dropped = unwrap_state_dict(load_torch_weights(path), prefer, path.name)
    specs = {k: TensorSpec(tuple(t.shape), t.dtype) for k, t in tensors.items()}
    return TensorSource(path, "pt", specs, {}, wrapper, dropped, _tensors=tensors)


def open_checkpoint(path: str | os.PathLike, prefer: str = "module") -> TensorSource:
    """Open any supported file lazily (format sniffed from its bytes)."""
    if sniff_format(path) == "safetensors":
        return open_safetensors(path)
    return open_torch(path, prefer)


__all__ = ["TensorSpec", "TensorSource", "SAFETENSORS_DTYPES", "SAFETENSORS_NAMES", "check_input_file", "sniff_format",
           "read_safetensors_header", "open_safetensors", "open_torch", "open_checkpoint", "load_torch_weights",
           "unwrap_state_dict"]
