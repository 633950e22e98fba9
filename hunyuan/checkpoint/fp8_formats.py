"""FP8 flavours found in HunyuanVideo checkpoints, normalised to ``<layer>.weight`` (float8) + ``<layer>.weight_scale``.

- ``official``: Tencent ``*_fp8.pt`` + sibling ``*_fp8_map.pt`` {module name: per-tensor scale};
  dequantized weight = ``w.float() * map[name]``.
- ``unscaled``: plain float8 weights, no scales (e.g. Kijai's ``*_fp8_e4m3fn.safetensors``); scale 1.
- ``scaled_fp8``: ComfyUI legacy: ``scaled_fp8`` marker, ``<layer>.scale_weight`` (+ ``.scale_input``).
- ``comfy_quant``: new ComfyUI: ``<layer>.comfy_quant`` JSON + ``.weight_scale`` (+ ``.input_scale``), or the
  ``_quantization_metadata`` header.
- ``ours``: our converter: ``.weight_scale`` per output channel ``[N]``, ``hyvideo_fp8.*`` metadata.
- ``weight_scale``: ``.weight_scale`` keys without any format marker.

All of them dequantize as ``weight.float() * scale`` (a ``[N]`` scale broadcasts over rows).

Static activation scales (``scale_input`` / ``input_scale``) are calibrated for ComfyUI's per-tensor kernel; our
engine scales activations dynamically per token, so they are not part of the canonical state dict: they are
reported in ``input_scales`` (layer -> value) for whoever wants them.

An FP8 file without scales is only accepted as ``unscaled`` when its weights look unscaled: Tencent's official FP8
weights are pre-scaled to span the full FP8 range (abs-max = 448), and reading them without the map gives noise
(ComfyUI issue #6813), so that case is an error asking for the map file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from ...fp8.formats import FP8_DTYPES, fp8_max
from .errors import CheckpointError, MissingFP8MapError, UnsupportedQuantizationError
from .layouts import tencent_to_canonical
from .readers import TensorSpec, load_torch_weights, open_safetensors, sniff_format, unwrap_state_dict

FLAVOURS = ("official", "unscaled", "scaled_fp8", "comfy_quant", "ours", "weight_scale")
OURS_VERSION_KEY = "hyvideo_fp8.format_version"
OURS_VERSION = "1"
QUANT_METADATA_KEY = "_quantization_metadata"
COMFY_FP8_FORMATS: dict[str, torch.dtype] = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
# weights whose abs-max reaches this fraction of the FP8 range were stored pre-scaled: they need their scales
PRESCALED_FRACTION = 0.5

Getter = Callable[[str], torch.Tensor]


@dataclass
class ScaledSource:
    """Source-layout tensors with FP8 scales normalised; fetched lazily like :class:`.readers.TensorSource`."""

    specs: dict[str, TensorSpec]
    flavour: str | None
    fetchers: dict[str, Callable[[], torch.Tensor]]
    input_scales: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fp8_map_path: Path | None = None

    def get(self, name: str) -> torch.Tensor:
        return self.fetchers[name]()


def map_path_for(path: str | os.PathLike) -> Path:
    """Where Tencent's loader looks for the scale map: ``x_fp8.pt`` -> ``x_fp8_map.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_map{path.suffix}")


def load_fp8_map(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a per-layer scale map (Tencent ``_map.pt`` or Kijai's ``fp8_map.safetensors``): name -> scalar fp32."""
    path = Path(path)
    if sniff_format(path) == "safetensors":
        with open_safetensors(path) as src:
            raw = dict(src.items())
    else:
        raw, _, _ = unwrap_state_dict(load_torch_weights(path), where=path.name)
    out: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        if t.numel() != 1:
            raise CheckpointError(f"FP8 scale map {path.name}: entry {name!r} has shape {tuple(t.shape)}, expected one "
                                  "per-tensor scale")
        out[name.removesuffix(".weight")] = t.detach().float().reshape(())
    return out


def _scale_spec(spec: TensorSpec) -> TensorSpec:
    n = 1
    for d in spec.shape:
        n *= d
    return TensorSpec(() if n == 1 else (n,), torch.float32)


def _as_scale(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float()
    return t.reshape(()) if t.numel() == 1 else t.reshape(-1)


def detect_flavour(specs: Mapping[str, TensorSpec], metadata: Mapping[str, str]) -> str | None:
    """The flavour from names, dtypes and header metadata alone (``official`` vs ``unscaled`` needs the file)."""
    names = list(specs)
    if "scaled_fp8" in specs or any(k.endswith(".scale_weight") for k in names):
        return "scaled_fp8"
    if QUANT_METADATA_KEY in metadata or any(k.endswith(".comfy_quant") for k in names):
        return "comfy_quant"
    if OURS_VERSION_KEY in metadata:
        return "ours"
    if any(k.endswith(".weight_scale") for k in names):
        return "weight_scale"
    if any(s.dtype in FP8_DTYPES for s in specs.values()):
        return "unscaled"
    return None


def normalize_fp8(specs: Mapping[str, TensorSpec], get: Getter, metadata: Mapping[str, str], path: Path,
                  fp8_map: str | os.PathLike | None = None, prefix: str = "") -> ScaledSource:
    """Rewrite any flavour's scale keys to ``<layer>.weight_scale`` (fp32 ``[]`` or ``[N]``), lazily.

    ``specs`` has the key ``prefix`` already stripped; header metadata still names layers with it.
    """
    flavour = detect_flavour(specs, metadata)
    if flavour == "ours" and metadata.get(OURS_VERSION_KEY) != OURS_VERSION:
        raise CheckpointError(f"{path.name} was written by a newer hyvideo_fp8 (format version "
                              f"{metadata.get(OURS_VERSION_KEY)!r}, this pack reads {OURS_VERSION!r}): update the pack")
    src = ScaledSource({}, flavour, {})
    map_file = Path(fp8_map) if fp8_map is not None else None
    if flavour == "unscaled":
        sibling = map_path_for(path)
        if map_file is None and sibling.is_file() and sibling != path:
            map_file = sibling
        if map_file is not None:
            src.flavour = "official"
        else:
            _refuse_prescaled(specs, get, path)
    elif map_file is not None:
        raise CheckpointError(f"an FP8 scale map was given but {path.name} is a {flavour or 'high-precision'} "
                              "checkpoint that does not use one")

    for name, spec in specs.items():
        src.specs[name] = spec
        src.fetchers[name] = (lambda n=name: get(n))
    if src.flavour == "scaled_fp8":
        _from_scaled_fp8(src)
    elif src.flavour == "comfy_quant":
        _from_comfy_quant(src, metadata, path, prefix)
    elif src.flavour == "official":
        src.fp8_map_path = map_file
        _from_map(src, load_fp8_map(map_file), map_file)
    _normalise_scales(src)
    _finish_fp8(src)
    return src


def _refuse_prescaled(specs: Mapping[str, TensorSpec], get: Getter, path: Path) -> None:
    name = next((k for k, s in specs.items() if s.dtype in FP8_DTYPES and len(s.shape) == 2), None)
    if name is None:
        return
    w = get(name)
    amax = w.float().abs().amax().item()
    if amax >= PRESCALED_FRACTION * fp8_max(w.dtype):
        raise MissingFP8MapError(
            f"{path.name} stores FP8 weights pre-scaled to the full FP8 range ({name} abs-max {amax:g}) but has no "
            f"scales: it is a Tencent-style FP8 file that needs its scale map. Put {map_path_for(path).name} (from the "
            "same download, e.g. mp_rank_00_model_states_fp8_map.pt) next to it, or pass fp8_map=<path>; without the "
            "map the model would produce noise")


def _move(src: ScaledSource, old: str, new: str) -> None:
    src.specs[new] = src.specs.pop(old)
    src.fetchers[new] = src.fetchers.pop(old)


def _drop(src: ScaledSource, name: str) -> torch.Tensor:
    """Remove a bookkeeping key and return its (tiny) value."""
    src.specs.pop(name)
    return src.fetchers.pop(name)()


def _from_scaled_fp8(src: ScaledSource) -> None:
    if "scaled_fp8" in src.specs:
        marker = _drop(src, "scaled_fp8")
        if marker.numel() == 2:
            src.notes.append("scaled_fp8 marker asks for full-precision matmul (ignored: the policy decides compute)")
    for name in [k for k in src.specs if k.endswith(".scale_weight")]:
        _move(src, name, name[: -len(".scale_weight")] + ".weight_scale")
    for name in [k for k in src.specs if k.endswith(".scale_input")]:
        src.input_scales[name[: -len(".scale_input")]] = float(_drop(src, name).float().reshape(-1)[0])


def _from_comfy_quant(src: ScaledSource, metadata: Mapping[str, str], path: Path, prefix: str) -> None:
    layers: dict[str, dict] = {}
    if QUANT_METADATA_KEY in metadata:
        try:
            # layer names are full state-dict names (ComfyUI adds no prefix when it reads them)
            listed = json.loads(metadata[QUANT_METADATA_KEY])["layers"]
            layers.update({k.removeprefix(prefix): v for k, v in listed.items()})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path.name}: unreadable {QUANT_METADATA_KEY} header ({e})") from None
    for name in [k for k in src.specs if k.endswith(".comfy_quant")]:
        raw = _drop(src, name)
        try:
            layers[name[: -len(".comfy_quant")]] = json.loads(bytes(raw.to(torch.uint8).reshape(-1).tolist()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path.name}: {name} is not valid comfy_quant JSON ({e})") from None
    for layer, conf in layers.items():
        fmt = conf.get("format") if isinstance(conf, dict) else conf
        if fmt not in COMFY_FP8_FORMATS:
            raise UnsupportedQuantizationError(
                f"{path.name}: layer {layer!r} uses quantization format {fmt!r}; this pack reads FP8 "
                f"({sorted(COMFY_FP8_FORMATS)}) only. Use a bf16 or FP8 file of this model")
        extra = [k for k in (f"{layer}.weight_scale_2", f"{layer}.pre_quant_scale") if k in src.specs]
        if extra:
            raise UnsupportedQuantizationError(f"{path.name}: {extra[0]!r} belongs to a block-scaled format this "
                                               "pack does not read")
        wname = f"{layer}.weight"
        if wname not in src.specs:
            raise CheckpointError(f"{path.name}: comfy_quant describes layer {layer!r} but {wname!r} is missing")
        dtype = COMFY_FP8_FORMATS[fmt]
        spec = src.specs[wname]
        if spec.dtype == torch.uint8:  # FP8 bytes stored as uint8 are allowed by the format
            src.specs[wname] = TensorSpec(spec.shape, dtype)
            getter = src.fetchers[wname]
            src.fetchers[wname] = (lambda g=getter, d=dtype: g().view(d))
        elif spec.dtype != dtype:
            raise CheckpointError(f"{path.name}: {wname} is {spec.dtype} but its comfy_quant format says {fmt}")
    for name in [k for k in src.specs if k.endswith(".input_scale")]:
        src.input_scales[name[: -len(".input_scale")]] = float(_drop(src, name).float().reshape(-1)[0])


def _from_map(src: ScaledSource, fp8_map: dict[str, torch.Tensor], map_file: Path) -> None:
    by_canonical = {tencent_to_canonical(k + ".weight"): v for k, v in fp8_map.items()}
    for name, spec in list(src.specs.items()):
        if spec.dtype not in FP8_DTYPES or not name.endswith(".weight") or len(spec.shape) != 2:
            continue
        layer = name[: -len(".weight")]
        scale = fp8_map.get(layer)
        if scale is None:
            scale = by_canonical.get(tencent_to_canonical(name))
        if scale is None:
            raise MissingFP8MapError(f"FP8 scale map {map_file.name} has no entry for {layer!r}: the map belongs to a "
                                     "different checkpoint. Use the map from the same download as the weights")
        src.specs[f"{layer}.weight_scale"] = TensorSpec((), torch.float32)
        src.fetchers[f"{layer}.weight_scale"] = (lambda s=scale: s.clone())


def _normalise_scales(src: ScaledSource) -> None:
    for name in [k for k in src.specs if k.endswith(".weight_scale")]:
        src.specs[name] = _scale_spec(src.specs[name])
        getter = src.fetchers[name]
        src.fetchers[name] = (lambda g=getter: _as_scale(g()))


def _finish_fp8(src: ScaledSource) -> None:
    """Give unscaled FP8 linears scale 1; upcast FP8 tensors that are not linear weights (norms, biases, conv)."""
    upcast = []
    for name, spec in list(src.specs.items()):
        if spec.dtype not in FP8_DTYPES:
            continue
        scale_name = name[: -len(".weight")] + ".weight_scale" if name.endswith(".weight") else None
        if len(spec.shape) == 2 and scale_name is not None:
            if scale_name not in src.specs:
                if src.flavour != "unscaled":
                    raise CheckpointError(f"FP8 weight {name!r} has no scale in this {src.flavour} checkpoint "
                                          "(file truncated or inconsistent)")
                src.specs[scale_name] = TensorSpec((), torch.float32)
                src.fetchers[scale_name] = (lambda: torch.tensor(1.0))
            continue
        if scale_name is not None and scale_name in src.specs:
            raise CheckpointError(f"{name!r} has shape {spec.shape} and an FP8 scale; only 2-D linear weights can "
                                  "be FP8 in a HunyuanVideo checkpoint")
        upcast.append(name)
        src.specs[name] = TensorSpec(spec.shape, torch.bfloat16)
        getter = src.fetchers[name]
        src.fetchers[name] = (lambda g=getter: g().to(torch.bfloat16))
    if upcast:
        src.notes.append(f"{len(upcast)} FP8 non-linear tensors upcast to bf16 (exact), e.g. {upcast[0]}")
    for name in [k for k in src.specs if k.endswith(".weight_scale")]:
        wname = name[: -len("_scale")]
        if wname not in src.specs or src.specs[wname].dtype not in FP8_DTYPES:
            raise CheckpointError(f"{name!r} is an FP8 scale but {wname!r} is "
                                  f"{'missing' if wname not in src.specs else src.specs[wname].dtype}")


__all__ = ["FLAVOURS", "OURS_VERSION_KEY", "OURS_VERSION", "QUANT_METADATA_KEY", "COMFY_FP8_FORMATS",
           "ScaledSource", "map_path_for", "load_fp8_map", "detect_flavour", "normalize_fp8"]
