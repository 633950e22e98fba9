"""Any HunyuanVideo checkpoint -> a lazy view in canonical (ComfyUI internal) names.

Pipeline: read the file (:mod:`.readers`) -> strip the key prefix -> normalise FP8 scales (:mod:`.fp8_formats`) ->
plan the renames (:mod:`.layouts`) -> validate names and shapes against :func:`detect_config`. Tensors are only
read when :meth:`CanonicalCheckpoint.get` asks for them, so the converter streams one tensor at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...fp8.formats import FP8_DTYPES
from ..config import HunyuanConfig, NotHunyuanVideoError, canonical_shapes, detect_config
from .errors import CheckpointError
from .fp8_formats import ScaledSource, normalize_fp8
from .layouts import Rule, detect_layout, find_prefix, not_hunyuan_error, other_model_error, plan_canonical
from .readers import TensorSource, TensorSpec, open_checkpoint
from .values import check_values

SCALE_SUFFIX = ".weight_scale"


@dataclass
class CheckpointInfo:
    """What was found in a checkpoint file (for reports, ``inspect`` and the converter's metadata)."""

    path: str
    file_format: str
    layout: str
    fp8_flavour: str | None
    config: HunyuanConfig
    wrapper: tuple[str, ...] = ()
    prefix: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    input_scales: dict[str, float] = field(default_factory=dict)
    ignored_keys: tuple[str, ...] = ()
    fp8_map: str | None = None
    notes: list[str] = field(default_factory=list)


def _bytes_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0 on raw bytes (cat has no FP8 kernel on every build)."""
    dtype = parts[0].dtype
    if dtype in FP8_DTYPES:
        return torch.cat([p.contiguous().view(torch.uint8) for p in parts]).view(dtype)
    return torch.cat(parts)


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[0] // 2
    return _bytes_cat([t[half:], t[:half]])


def _concat_scales(scales: list[torch.Tensor], rows: tuple[int, ...]) -> torch.Tensor:
    """Scales of re-fused pieces: one shared scalar stays per-tensor; otherwise each piece's scale is expanded over
    its rows, giving an exact per-output-channel scale (the FP8 bytes are unchanged)."""
    if all(s.dim() == 0 for s in scales) and all(torch.equal(s, scales[0]) for s in scales):
        return scales[0].clone()
    return torch.cat([s.expand(r) if s.dim() == 0 else s for s, r in zip(scales, rows)]).contiguous()


class CanonicalCheckpoint:
    """A checkpoint file seen through canonical names; ``get`` builds one canonical tensor on demand."""

    def __init__(self, source: TensorSource, scaled: ScaledSource, plan: dict[str, Rule], info: CheckpointInfo):
        self._source = source
        self._scaled = scaled
        self._plan = plan
        self.info = info
        self._scale_cache = {n: self._build(n) for n, r in plan.items() if r.op in ("concat_scale", "swap_scale")}
        self.specs: dict[str, TensorSpec] = {n: self._spec(n) for n in plan}

    def _spec(self, name: str) -> TensorSpec:
        if name in self._scale_cache:
            t = self._scale_cache[name]
            return TensorSpec(tuple(t.shape), t.dtype)
        rule = self._plan[name]
        parts = [self._scaled.specs[s] for s in rule.sources]
        if rule.op == "concat":
            if len({(p.dtype, p.shape[1:]) for p in parts}) != 1:
                raise CheckpointError(f"cannot rebuild {name!r}: its pieces {rule.sources} differ in dtype or width "
                                      f"({[(p.dtype, p.shape) for p in parts]})")
            return TensorSpec((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), parts[0].dtype)
        return parts[0]

    def _build(self, name: str) -> torch.Tensor:
        rule = self._plan[name]
        if rule.op == "copy":
            return self._scaled.get(rule.sources[0])
        if rule.op == "concat":
            return _bytes_cat([self._scaled.get(s) for s in rule.sources])
        if rule.op == "swap":
            return _swap_halves(self._scaled.get(rule.sources[0]))
        if rule.op == "swap_scale":
            s = self._scaled.get(rule.sources[0])
            return s if s.dim() == 0 else _swap_halves(s)
        if rule.op == "concat_scale":
            return _concat_scales([self._scaled.get(s) for s in rule.sources], rule.rows)
        raise AssertionError(f"unknown rule {rule.op}")

    def keys(self) -> list[str]:
        return list(self._plan)

    def get(self, name: str) -> torch.Tensor:
        if name in self._scale_cache:
            return self._scale_cache[name].clone()
        return self._build(name)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._plan:
            yield name, self.get(name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All canonical tensors materialised (``.pt`` sources stay memory-mapped where no rename copies them)."""
        return dict(self.items())

    def lazy_state_dict(self) -> LazyStateDict:
        """The canonical tensors as a mapping that reads each one when it is taken (valid while the file is open):
        a loader that consumes it layer by layer never holds the whole checkpoint in memory."""
        return LazyStateDict(self)

    def quantized_layers(self) -> list[str]:
        """Layer names (without ``.weight``) stored as FP8 + scale."""
        return [n[: -len(SCALE_SUFFIX)] for n in self._plan if n.endswith(SCALE_SUFFIX)]

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> "CanonicalCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LazyStateDict(Mapping):
    """Canonical name -> tensor, read from the file on access; ``shapes`` answers without reading any data."""

    def __init__(self, ckpt: CanonicalCheckpoint) -> None:
        self._ckpt = ckpt
        self.shapes: dict[str, tuple[int, ...]] = {k: tuple(s.shape) for k, s in ckpt.specs.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        return self._ckpt.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.shapes))

    def __len__(self) -> int:
        return len(self.shapes)

    def pop(self, name: str) -> torch.Tensor:
        """Read ``name`` and forget it (a consuming loader takes each tensor once)."""
        tensor = self[name]
        del self.shapes[name]
        return tensor


def _validate(specs: dict[str, TensorSpec], config: HunyuanConfig) -> None:
    expected = canonical_shapes(config)
    extra = [k for k in specs if k not in expected and not k.endswith(SCALE_SUFFIX)]
    if extra:
        raise CheckpointError(f"unexpected key(s) for HunyuanVideo {extra[:5]}: a different model or a merged file. "
                              "Load the transformer weights alone")
    for name, spec in specs.items():
        if name.endswith(SCALE_SUFFIX):
            wname = name[: -len(SCALE_SUFFIX)] + ".weight"
            rows = specs[wname].shape[0] if wname in specs else None
            if spec.shape not in ((), (rows,)):
                raise CheckpointError(f"{name!r} has shape {spec.shape}; an FP8 weight scale is [] or [{rows}]")
        elif spec.dtype in FP8_DTYPES and name[: -len(".weight")] + SCALE_SUFFIX not in specs:
            raise CheckpointError(f"{name!r} is FP8 without a scale")
        elif not spec.dtype.is_floating_point:
            raise CheckpointError(f"{name!r} is {spec.dtype}; HunyuanVideo weights are floating point")


def _canonical_layers(values: dict[str, float], plan: dict[str, Rule]) -> dict[str, float]:
    """Re-key per-layer values from source-layout layer names to canonical ones (fused pieces share one layer; the
    largest value wins, which is the safe choice for an activation scale)."""
    owner = {s: n for n, r in plan.items() for s in r.sources}
    out: dict[str, float] = {}
    for layer, v in values.items():
        target = owner.get(f"{layer}.weight", f"{layer}.weight")[: -len(".weight")]
        out[target] = max(v, out.get(target, v))
    return out


def open_canonical(path: str | os.PathLike, *, prefer: str = "module",
                   fp8_map: str | os.PathLike | None = None) -> CanonicalCheckpoint:
    """Open a checkpoint lazily in canonical names, with its detected config; raise a clear error if it is not a
    readable HunyuanVideo (v1 or 1.5) transformer."""
    path = Path(path)
    source = open_checkpoint(path, prefer)
    try:
        prefix = find_prefix(source.keys())
        if not prefix and not any(k in source.specs for k in ("img_in.proj.weight", "x_embedder.proj.weight")):
            raise not_hunyuan_error(source.keys(), "no 'img_in.proj.weight' (or diffusers 'x_embedder.proj.weight')")
        kept = {k[len(prefix):]: s for k, s in source.specs.items() if k.startswith(prefix)}
        ignored = tuple(k for k in source.specs if not k.startswith(prefix)) + source.dropped
        scaled = normalize_fp8(kept, lambda n: source.get(prefix + n), source.metadata, path, fp8_map, prefix)
        layout = detect_layout(scaled.specs)
        plan = plan_canonical(scaled.specs, layout)
        info = CheckpointInfo(str(path), source.file_format, layout, scaled.flavour, HunyuanConfig(), source.wrapper,
                              prefix, dict(source.metadata), _canonical_layers(scaled.input_scales, plan), ignored,
                              str(scaled.fp8_map_path) if scaled.fp8_map_path else None, list(scaled.notes))
        ckpt = CanonicalCheckpoint(source, scaled, plan, info)
        shapes = {k: s.shape for k, s in ckpt.specs.items() if not k.endswith(SCALE_SUFFIX)}
        try:
            info.config = detect_config(shapes)
        except NotHunyuanVideoError as e:
            raise other_model_error(shapes) or e from None
        _validate(ckpt.specs, info.config)
        return ckpt
    except BaseException:
        source.close()
        raise


def load_canonical_state_dict(path: str | os.PathLike, *, prefer: str = "module",
                              fp8_map: str | os.PathLike | None = None
                              ) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read any supported HunyuanVideo checkpoint into canonical tensors plus a :class:`CheckpointInfo`.

    ``prefer`` picks DeepSpeed ``module`` (default) or ``ema`` weights when a file has both; ``fp8_map`` points at
    Tencent's scale map when it is not next to the weights as ``<name>_map.pt``. A tensor holding NaN/Inf, or an FP8
    scale that is not a positive finite number, raises :class:`.errors.InvalidValuesError`.
    """
    with open_canonical(path, prefer=prefer, fp8_map=fp8_map) as ckpt:
        state_dict = ckpt.state_dict()
        for name, tensor in state_dict.items():
            check_values(name, tensor, Path(path).name)
        return state_dict, ckpt.info


__all__ = ["CheckpointInfo", "CanonicalCheckpoint", "LazyStateDict", "open_canonical", "load_canonical_state_dict"]
