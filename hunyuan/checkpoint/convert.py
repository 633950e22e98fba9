"""Streaming converter: any HunyuanVideo checkpoint -> our FP8 safetensors (or ComfyUI's ``comfy_quant`` layout).

Memory: the source is read lazily (each tensor by plain reads of its byte range, see :mod:`.readers`), every output
shape is known before the first byte is written, and each tensor is checked for NaN/Inf, quantized and appended as
soon as it is read. Peak anonymous memory is what one layer's quantization needs, whatever the file size, so a file
larger than RAM converts.

Per layer the policy decides: ``fp8`` / ``fp8-weight-only`` -> FP8 weight + fp32 scale (per output channel in our
layout, per tensor in ``comfy_quant``); ``bf16`` / ``fp32`` -> the weight in its source precision (FP8 sources are
dequantized to bf16). Everything that is not a 2-D linear weight is copied unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from ...fp8.formats import FP8_DTYPES, ComputeMode, fp8_dtype
from ...fp8.policy import PrecisionPolicy
from ...fp8.quantize import dequantize, quantize_rowwise, quantize_tensorwise
from ..config import HunyuanConfig, is_linear_weight
from ..policies import load_policy
from .canonical import SCALE_SUFFIX, CanonicalCheckpoint, open_canonical
from .comfy_compat import loaders_note
from .errors import CorruptCheckpointError
from .fp8_formats import QUANT_METADATA_KEY
from .readers import TensorSpec, check_input_file
from .values import check_values
from .writer import (
    OUTPUT_FORMATS,
    StreamingSafetensorsWriter,
    check_destination,
    comfy_quant_metadata,
    format_tensors,
    fp8_recipe,
    layer_entries,
    layer_tensors,
    order_entries,
    ours_metadata,
    stored_name,
)

FP8_STORAGE_MODES = (ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY)
_HASH_CHUNK = 16 << 20
_ERROR_ROWS = 1024  # rows per chunk of the float64 weight-error sum


@dataclass
class ConversionReport:
    """What the converter did, with the worst per-layer weight error (relative L2 vs the source weight)."""

    source: str
    destination: str
    output_format: str
    policy: str
    layout: str
    source_fp8_flavour: str | None
    config: HunyuanConfig
    fp8_layers: int
    high_precision_layers: int
    tensors_written: int
    bytes_written: int
    source_sha256: str
    seconds: float
    max_rel_error: float
    worst_layer: str | None
    dropped_input_scales: int = 0

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        worst = f", worst weight error {self.max_rel_error:.2e} ({self.worst_layer})" if self.worst_layer else ""
        return (f"{Path(self.source).name} ({self.config.variant}, {self.layout}, "
                f"{self.source_fp8_flavour or 'high precision'}) -> "
                f"{Path(self.destination).name} [{self.output_format}, policy {self.policy}]: {self.fp8_layers} FP8 "
                f"linears, {self.high_precision_layers} high-precision linears, {self.tensors_written} tensors, "
                f"{_size(self.bytes_written)} in {self.seconds:.1f} s{worst}. The file "
                f"{loaders_note(self.output_format)}.")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def sha256_file(path: str | os.PathLike) -> str:
    """Streamed SHA-256 of a file (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class _Job:
    name: str  # canonical tensor name (a layer name for "fp8" jobs)
    kind: str  # "fp8" | "hp" | "copy"


def _plan(ckpt: CanonicalCheckpoint, policy: PrecisionPolicy, output_format: str, dtype: torch.dtype
          ) -> tuple[list[_Job], list[tuple[str, TensorSpec]], dict[str, torch.dtype]]:
    block_order = ckpt.info.config.block_order()
    jobs: list[_Job] = []
    entries: list[tuple[str, TensorSpec]] = []
    fp8_layers: dict[str, torch.dtype] = {}
    for name, spec in ckpt.specs.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if is_linear_weight(name, spec.shape):
            layer = name[: -len(".weight")]
            # ComfyUI's legacy scaled_fp8 builds every linear in FP8: a high-precision linear would be cast unscaled
            if output_format == "scaled_fp8" or policy.mode_for(layer, block_order) in FP8_STORAGE_MODES:
                jobs.append(_Job(layer, "fp8"))
                entries += layer_entries(layer, spec.shape, dtype, output_format)
                fp8_layers[layer] = dtype
                continue
            out_dtype = torch.bfloat16 if spec.dtype in FP8_DTYPES else spec.dtype
            jobs.append(_Job(name, "hp"))
            entries.append((name, TensorSpec(spec.shape, out_dtype)))
            continue
        jobs.append(_Job(name, "copy"))
        entries.append((name, spec))
    if fp8_layers:
        entries += [(n, TensorSpec(tuple(t.shape), t.dtype)) for n, t in format_tensors(output_format, dtype).items()]
    entries = [(stored_name(n, output_format), spec) for n, spec in entries]
    return jobs, order_entries(entries), fp8_layers


def _rel_error(q: torch.Tensor, scale: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error of ``dequantize(q, scale)`` against ``ref``, summed in float64 a few rows at a time (no
    full-size float64 copies)."""
    scale = scale.reshape(-1, 1) if scale.numel() > 1 else scale
    err = norm = 0.0
    for i in range(0, ref.shape[0], _ERROR_ROWS):
        r = ref[i:i + _ERROR_ROWS].double()
        s = scale[i:i + _ERROR_ROWS] if scale.dim() else scale
        err += float((dequantize(q[i:i + _ERROR_ROWS], s, torch.float64) - r).square().sum())
        norm += float(r.square().sum())
    return math.sqrt(err / max(norm, 1e-60))


def _quantize_layer(get: Callable[[str], torch.Tensor], layer: str, output_format: str, dtype: torch.dtype
                    ) -> tuple[dict[str, torch.Tensor], float]:
    """One linear in the output layout, and its weight error against the source weight."""
    w = get(f"{layer}.weight")
    if w.dtype in FP8_DTYPES:
        scale = get(layer + SCALE_SUFFIX)
        flat = scale.reshape(-1)
        if w.dtype == dtype and (output_format == "ours" or bool((flat == flat[0]).all())):
            return layer_tensors(layer, w, scale, output_format), 0.0  # the source's FP8 bytes, unchanged
        ref = dequantize(w, scale, torch.float32)
    else:
        ref = w.float()
    if output_format == "ours":
        q, s = quantize_rowwise(ref, dtype)
    else:
        q, s = quantize_tensorwise(ref, dtype)
    out = layer_tensors(layer, q, s.reshape(-1), output_format)
    return out, _rel_error(q, s, ref)


def _produce(get: Callable[[str], torch.Tensor], jobs: list[_Job], output_format: str, dtype: torch.dtype,
             errors: dict[str, float]) -> Iterator[tuple[str, torch.Tensor]]:
    for job in jobs:
        if job.kind == "fp8":
            out, err = _quantize_layer(get, job.name, output_format, dtype)
            errors[job.name] = err
            yield from out.items()
        elif job.kind == "hp":
            w = get(job.name)
            if w.dtype in FP8_DTYPES:
                w = dequantize(w, get(job.name[: -len(".weight")] + SCALE_SUFFIX), torch.bfloat16)
            yield job.name, w
        else:
            yield job.name, get(job.name)


def _checked_getter(ckpt: CanonicalCheckpoint, where: str) -> Callable[[str], torch.Tensor]:
    def get(name: str) -> torch.Tensor:
        tensor = ckpt.get(name)
        check_values(name, tensor, where)
        return tensor
    return get


def _file_state(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                       policy: PrecisionPolicy | Mapping | str = "fp8-weight-only", *, output_format: str = "ours",
                       overwrite: bool = False, prefer: str = "module", fp8_map: str | os.PathLike | None = None,
                       progress: Callable[[int, int], None] | None = None) -> ConversionReport:
    """Convert ``src`` (any layout, format and FP8 flavour) into an FP8 safetensors file at ``dst``.

    ``policy`` is a ``PrecisionPolicy``, a preset name, a JSON string/file or a dict. ``output_format`` is ``"ours"``
    (per-channel scales, our metadata) or ``"comfy_quant"`` (per-tensor scales, readable by native new ComfyUI).
    The source is never modified; ``dst`` is written atomically and only if every check passed. ``progress(done,
    total)`` is called after each tensor.
    """
    t0 = time.perf_counter()
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}; allowed: {OUTPUT_FORMATS}")
    policy = load_policy(policy)
    dtype = fp8_dtype(policy.fp8_format)
    src, dst = check_input_file(src), Path(dst)
    sources = [src] + ([check_input_file(fp8_map, "FP8 scale map")] if fp8_map is not None else [])
    check_destination(dst, overwrite, sources)
    with open_canonical(src, prefer=prefer, fp8_map=fp8_map) as ckpt:
        state = _file_state(src)
        info = ckpt.info
        if info.fp8_map:
            sources.append(Path(info.fp8_map))
            check_destination(dst, overwrite, sources)
        jobs, entries, fp8_layers = _plan(ckpt, policy, output_format, dtype)
        if not fp8_layers:
            raise ValueError(f"policy {policy.name!r} stores no linear in FP8, so the output would be a high-precision "
                             "copy labelled FP8. Load the source as it is, or pick a policy with FP8 layers: "
                             "fp8-weight-only, fp8-balanced, fp8-max")
        digest = sha256_file(src)
        meta = ours_metadata(policy_json=json.dumps(policy.to_dict()), recipe=fp8_recipe(dtype, output_format),
                             config=info.config.to_dict(), source_sha256=digest, source_name=src.name)
        if output_format == "comfy_quant":
            meta[QUANT_METADATA_KEY] = comfy_quant_metadata(fp8_layers)
        errors: dict[str, float] = {}
        # written where the header puts them
        pending = {stored_name(n, output_format): t for n, t in format_tensors(output_format, dtype).items()}
        with StreamingSafetensorsWriter(dst, entries, meta, overwrite=overwrite, sources=sources) as writer:
            get = _checked_getter(ckpt, src.name)
            for name, tensor in _produce(get, jobs, output_format, dtype, errors):
                # only tensors moved to the file's tail wait here (tiny comfy_quant JSON, the scaled_fp8 marker)
                pending[stored_name(name, output_format)] = tensor
                while writer.next_name in pending:
                    nxt = writer.next_name
                    writer.write(nxt, pending.pop(nxt))
                    if progress is not None:
                        progress(writer.written, len(entries))
            if _file_state(src) != state:
                raise CorruptCheckpointError(f"{src.name} changed while it was being converted (size or time "
                                             "stamp differ): nothing was written. Convert it again once it is complete")
    worst = max(errors, key=errors.get) if errors else None
    n_linear = sum(1 for n, s in ckpt.specs.items() if is_linear_weight(n, s.shape))
    return ConversionReport(
        str(src), str(dst), output_format, policy.name, info.layout, info.fp8_flavour, info.config,
        len(fp8_layers), n_linear - len(fp8_layers), len(entries), writer.bytes_written, digest,
        time.perf_counter() - t0, errors[worst] if worst else 0.0, worst, len(info.input_scales),
    )


__all__ = ["ConversionReport", "convert_checkpoint", "sha256_file"]
