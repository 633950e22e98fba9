"""Writing checkpoints: a streaming, atomic safetensors writer and our two output layouts.

The safetensors format is 8 bytes of header length, a JSON header (name -> dtype, shape, byte offsets; plus
``__metadata__`` strings) and the raw little-endian tensor bytes. Because the converter knows every output shape and
dtype before it quantizes anything, the header is written first and tensors are appended one at a time: peak memory
is one tensor, whatever the model size.

Atomicity: data goes to a hidden temp file in the destination folder, is fsynced, then renamed over the
destination; on any error (an exception, Ctrl-C, a full disk) the temp file is removed, so a failed write leaves
nothing behind. A run killed outright (SIGKILL, power loss) cannot clean up: its temp file has a fixed name,
``.<destination name>.partial``, and is held under an exclusive lock while written, so the next run for the same
destination recognises a stale one (unlocked) and reuses it, and refuses to touch a live one (another conversion).

Layouts:
- ``ours``: ``<layer>.weight`` FP8, ``<layer>.weight_scale`` fp32 ``[N]`` (per output channel), other tensors in high
  precision, ``hyvideo_fp8.*`` metadata (format version, policy, recipe, config, source sha256).
- ``comfy_quant``: what native new ComfyUI reads (``comfyui-host.md`` §5.2): per-tensor ``<layer>.weight_scale``
  ``[]``, a ``<layer>.comfy_quant`` uint8 tensor holding ``{"format": "float8_e4m3fn"}`` and the same layer list in
  the ``_quantization_metadata`` header.
- ``scaled_fp8``: ComfyUI's legacy scaled FP8, read by old and new ComfyUI alike: per-tensor ``<layer>.scale_weight``
  ``[]`` and a two-element ``scaled_fp8`` marker in the FP8 dtype (two elements: ComfyUI dequantizes and multiplies
  in high precision rather than running FP8 matmuls with a unit input scale). ComfyUI builds every linear of such a
  file in FP8, so the converter stores every linear in FP8 in this layout, whatever the policy keeps in bf16.
Our layout's tensor names carry the prefix ``hyvideo_fp8.``: ComfyUI's stock loaders do not strip it, so they refuse
such a file ("could not detect model type") rather than run its FP8 weights without their per-channel scales. Which
ComfyUI runs which layout is in :mod:`.comfy_compat`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ...fp8.formats import FP8_DTYPES, fp8_format_name
from ...fp8.quantize import dequantize, quantize_tensorwise
from .errors import OutputBusyError, OutputExistsError
from .fp8_formats import COMFY_FP8_FORMATS, OURS_VERSION, OURS_VERSION_KEY, QUANT_METADATA_KEY
from .readers import SAFETENSORS_NAMES, TensorSpec

OUTPUT_FORMATS = ("ours", "comfy_quant", "scaled_fp8")
OURS_KEY_PREFIX = "hyvideo_fp8."
SCALED_FP8_MARKER = "scaled_fp8"
COMFY_QUANT_VERSION = "1.0"
TEMP_SUFFIX = ".partial"
_ALIGN = 8


def safetensors_header(entries: Sequence[tuple[str, TensorSpec]], metadata: Mapping[str, str] | None) -> bytes:
    """The length-prefixed JSON header for tensors laid out back to back in ``entries`` order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, spec in entries:
        if spec.dtype not in SAFETENSORS_NAMES:
            raise ValueError(f"{name}: dtype {spec.dtype} cannot be stored in safetensors")
        header[name] = {"dtype": SAFETENSORS_NAMES[spec.dtype], "shape": list(spec.shape),
                        "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % _ALIGN)  # tensor data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def temp_path(path: str | os.PathLike) -> Path:
    """Where the writer builds ``path``: one fixed hidden name per destination, so a stale one can be recognised."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def _lock(fd: int, path: Path) -> None:
    """Take an exclusive lock on the open temp file of ``path``, or raise if a live conversion holds it (the OS
    releases it when the holder exits, however it exits). Without ``fcntl`` (Windows) there is no lock to take."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputBusyError(errno.EBUSY, f"another conversion is writing {path} right now (it holds "
                              f"{temp_path(path).name}): wait for it or choose another output name") from None


def check_destination(path: Path, overwrite: bool, sources: Sequence[Path] = ()) -> None:
    """Refuse to write over a source file, or over an existing file unless ``overwrite``."""
    for src in sources:
        same = os.path.realpath(path) == os.path.realpath(src)  # realpath: a symlink loop is not an exception
        if same or (path.exists() and src.exists() and os.path.samefile(path, src)):
            raise OutputExistsError(f"refusing to write {path.name} over its own source {src}: choose another "
                                    "output name")
    if path.is_dir():
        raise OutputExistsError(f"output {path} is a folder: give the file name to write")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")


class StreamingSafetensorsWriter:
    """Write tensors one by one into a safetensors file whose header is fixed up front; atomic on exit.

    Use as a context manager; call :meth:`write` for every entry in order. An exception inside the ``with`` block (or
    a missing tensor) deletes the temp file and leaves any existing destination untouched.
    """

    def __init__(self, path: str | os.PathLike, entries: Sequence[tuple[str, TensorSpec]],
                 metadata: Mapping[str, str] | None = None, *, overwrite: bool = False,
                 sources: Sequence[str | os.PathLike] = ()):
        self.path = Path(path)
        self.entries = list(entries)
        if len({n for n, _ in self.entries}) != len(self.entries):
            raise ValueError("duplicate tensor names in the output")
        self.metadata = dict(metadata or {})
        self._sources = [Path(s) for s in sources]
        self._overwrite = overwrite
        self._next = 0
        self._file = None
        self._tmp: Path | None = None
        self.bytes_written = 0

    def __enter__(self) -> "StreamingSafetensorsWriter":
        check_destination(self.path, self._overwrite, self._sources)
        header = safetensors_header(self.entries, self.metadata)
        tmp = temp_path(self.path)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)  # the umask applies
        try:
            _lock(fd, self.path)
            os.ftruncate(fd, 0)  # a stale temp file of a killed earlier run is reused from its start
        except BaseException:
            os.close(fd)
            raise
        self._tmp = tmp
        self._file = os.fdopen(fd, "wb")
        try:
            self._check_space(len(header) + sum(spec.nbytes for _, spec in self.entries))
            self._write_bytes(header)
            self.bytes_written = len(header)
        except BaseException:
            self._abort()
            raise
        return self

    def _check_space(self, size: int) -> None:
        free = shutil.disk_usage(self.path.parent).free
        if free < size:
            raise OSError(errno.ENOSPC, f"{self.path.name} needs {size / 2**30:.2f} GiB but its folder "
                          f"{self.path.parent} has {free / 2**30:.2f} GiB free: free space or write elsewhere")

    def _write_bytes(self, data) -> None:
        try:
            self._file.write(data)  # type: ignore[union-attr]
        except OSError as e:
            raise self._write_error(e) from None

    def _flush(self) -> None:
        try:
            self._file.flush()  # type: ignore[union-attr]
            os.fsync(self._file.fileno())  # type: ignore[union-attr]
        except OSError as e:
            raise self._write_error(e) from None

    def _write_error(self, e: OSError) -> OSError:
        return OSError(e.errno, f"writing {self.path.name} failed: {e.strerror} (folder {self.path.parent}); "
                       "the partial file was removed")

    @property
    def next_name(self) -> str | None:
        """The entry :meth:`write` expects next (``None`` when all are written)."""
        return self.entries[self._next][0] if self._next < len(self.entries) else None

    @property
    def written(self) -> int:
        return self._next

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.entries):
            raise ValueError(f"unexpected tensor {name!r}: all {len(self.entries)} entries are written")
        want, spec = self.entries[self._next]
        if name != want:
            raise ValueError(f"tensors must be written in header order: expected {want!r}, got {name!r}")
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, header says {spec.shape} {spec.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._write_bytes(memoryview(data))
        self.bytes_written += data.nbytes
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._next != len(self.entries):
            self._abort()
            raise ValueError(f"only {self._next} of {len(self.entries)} tensors were written; "
                             f"first missing: {self.entries[self._next][0]!r}")
        if exc_type is not None:
            self._abort()
            return
        try:
            self._flush()
            if os.name == "nt":  # an open file cannot be renamed there (and nothing is locked)
                self._file.close()  # type: ignore[union-attr]
            os.replace(self._tmp, self.path)  # type: ignore[arg-type]  # renamed while still locked
            self._tmp = None
            self._file.close()  # type: ignore[union-attr]
        except BaseException:
            self._abort()
            raise
        _fsync_dir(self.path.parent)

    def _abort(self) -> None:
        """Remove the temp file, then close it (in that order: the lock keeps another run off it until it is gone).
        Closing may fail again on a full disk (the buffered tail cannot be flushed); the file is removed anyway."""
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            self._tmp = None
        if self._file is not None and not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); folders cannot be opened on Windows, where this is a no-op."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None, *, overwrite: bool = False) -> int:
    """Atomically write an in-memory dict (small files, tests); returns the file size."""
    entries = order_entries([(n, TensorSpec(tuple(t.shape), t.dtype)) for n, t in tensors.items()])
    with StreamingSafetensorsWriter(path, entries, metadata, overwrite=overwrite) as w:
        for name, _ in entries:
            w.write(name, tensors[name])
    return w.bytes_written


def order_entries(entries: Sequence[tuple[str, TensorSpec]]) -> list[tuple[str, TensorSpec]]:
    """Keep the given order but move byte-sized odd-length tensors (``comfy_quant`` JSON) to the end, so every other
    tensor starts at an offset aligned to its element size (memory-mapping readers like that)."""
    odd = [e for e in entries if e[1].nbytes % 4]
    return [e for e in entries if e[1].nbytes % 4 == 0] + odd


def comfy_quant_tensor(dtype: torch.dtype) -> torch.Tensor:
    """``<layer>.comfy_quant``: the layer's format as UTF-8 JSON bytes in a uint8 tensor."""
    return torch.tensor(list(json.dumps(comfy_quant_conf(dtype)).encode("utf-8")), dtype=torch.uint8)


def comfy_quant_conf(dtype: torch.dtype) -> dict[str, str]:
    name = next((k for k, v in COMFY_FP8_FORMATS.items() if v == dtype), None)
    if name is None:
        raise ValueError(f"{dtype} has no comfy_quant format name; allowed: {list(COMFY_FP8_FORMATS)}")
    return {"format": name}


def comfy_quant_metadata(layers: Mapping[str, torch.dtype]) -> str:
    """The ``_quantization_metadata`` header value listing every quantized layer."""
    return json.dumps({"format_version": COMFY_QUANT_VERSION,
                       "layers": {layer: comfy_quant_conf(dt) for layer, dt in layers.items()}})


def ours_metadata(*, policy_json: str, recipe: Mapping[str, object], config: Mapping[str, object],
                  source_sha256: str | None = None, source_name: str | None = None) -> dict[str, str]:
    meta = {OURS_VERSION_KEY: OURS_VERSION, "hyvideo_fp8.policy": policy_json,
            "hyvideo_fp8.recipe": json.dumps(dict(recipe)), "hyvideo_fp8.config": json.dumps(dict(config))}
    if source_sha256:
        meta["hyvideo_fp8.source_sha256"] = source_sha256
    if source_name:
        meta["hyvideo_fp8.source_name"] = source_name
    return meta


def stored_name(name: str, output_format: str) -> str:
    """A canonical tensor name as the output layout stores it."""
    return OURS_KEY_PREFIX + name if output_format == "ours" else name


def format_tensors(output_format: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file-level tensors a layout adds besides the model's (the ``scaled_fp8`` marker)."""
    if output_format == "scaled_fp8":
        return {SCALED_FP8_MARKER: torch.zeros(2, dtype=dtype)}
    return {}


def layer_entries(layer: str, shape: tuple[int, ...], dtype: torch.dtype, output_format: str
                  ) -> list[tuple[str, TensorSpec]]:
    """Output names/specs of one FP8 linear's weight and scale (plus ``comfy_quant`` in that layout)."""
    if output_format == "ours":
        return [(f"{layer}.weight", TensorSpec(shape, dtype)),
                (f"{layer}.weight_scale", TensorSpec((shape[0],), torch.float32))]
    if output_format == "comfy_quant":
        conf = comfy_quant_tensor(dtype)
        return [(f"{layer}.weight", TensorSpec(shape, dtype)), (f"{layer}.weight_scale", TensorSpec((), torch.float32)),
                (f"{layer}.comfy_quant", TensorSpec(tuple(conf.shape), torch.uint8))]
    if output_format == "scaled_fp8":
        return [(f"{layer}.weight", TensorSpec(shape, dtype)), (f"{layer}.scale_weight", TensorSpec((), torch.float32))]
    raise ValueError(f"unknown output format {output_format!r}; allowed: {OUTPUT_FORMATS}")


def layer_tensors(layer: str, weight: torch.Tensor, scale: torch.Tensor, output_format: str
                  ) -> dict[str, torch.Tensor]:
    """One FP8 linear in the output layout.

    ``ours`` expands a per-tensor scale over the rows (exact). ``comfy_quant`` and ``scaled_fp8`` need one scale per
    tensor: a per-channel scale is requantized with the tensor's abs-max (lossy only when the channel scales differ).
    """
    if weight.dtype not in FP8_DTYPES:
        raise ValueError(f"{layer}.weight must be FP8, got {weight.dtype}")
    scale = scale.float()
    if output_format == "ours":
        return {f"{layer}.weight": weight,
                f"{layer}.weight_scale": scale.reshape(-1).expand(weight.shape[0]).contiguous()}
    if output_format in ("comfy_quant", "scaled_fp8"):
        flat = scale.reshape(-1)
        if bool((flat == flat[0]).all()):
            q, s = weight, flat[0].clone()
        else:
            q, s = quantize_tensorwise(dequantize(weight, scale, torch.float32), weight.dtype)
        if output_format == "scaled_fp8":
            return {f"{layer}.weight": q, f"{layer}.scale_weight": s.reshape(())}
        return {f"{layer}.weight": q, f"{layer}.weight_scale": s.reshape(()),
                f"{layer}.comfy_quant": comfy_quant_tensor(weight.dtype)}
    raise ValueError(f"unknown output format {output_format!r}; allowed: {OUTPUT_FORMATS}")


def save_canonical(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], *, output_format: str = "ours",
                   metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> int:
    """Write a canonical state dict (FP8 ``weight`` + ``weight_scale`` pairs, rest high precision) atomically in
    any output layout. Returns the file size."""
    out: dict[str, torch.Tensor] = {}
    fp8_layers: dict[str, torch.dtype] = {}
    for name, t in state_dict.items():
        if name.endswith(".weight_scale"):
            continue
        layer = name[: -len(".weight")]
        if t.dtype in FP8_DTYPES:
            scale = state_dict.get(f"{layer}.weight_scale")
            if scale is None:
                raise ValueError(f"{name} is FP8 but {layer}.weight_scale is missing")
            out.update(layer_tensors(layer, t, scale, output_format))
            fp8_layers[layer] = t.dtype
        else:
            out[name] = t
    if fp8_layers:
        out.update(format_tensors(output_format, next(iter(fp8_layers.values()))))
    meta = dict(metadata or {})
    if output_format == "comfy_quant":
        meta[QUANT_METADATA_KEY] = comfy_quant_metadata(fp8_layers)
    out = {stored_name(name, output_format): t for name, t in out.items()}
    return save_safetensors(path, out, meta, overwrite=overwrite)


def fp8_recipe(dtype: torch.dtype, output_format: str) -> dict[str, str]:
    """How the weights were quantized (stored in the metadata so a file documents itself)."""
    granularity = "per output channel" if output_format == "ours" else "per tensor"
    return {"fp8_format": fp8_format_name(dtype), "scale": f"abs-max / fp8_max, {granularity}, fp32",
            "rounding": "round to nearest, saturating cast", "dequantize": "weight.float() * weight_scale"}


__all__ = ["OUTPUT_FORMATS", "StreamingSafetensorsWriter", "safetensors_header", "check_destination", "temp_path",
           "save_safetensors", "save_canonical", "order_entries", "comfy_quant_tensor", "comfy_quant_conf",
           "comfy_quant_metadata", "ours_metadata", "layer_entries", "layer_tensors", "fp8_recipe", "stored_name",
           "format_tensors", "OURS_KEY_PREFIX", "SCALED_FP8_MARKER"]
