"""Describe a checkpoint without loading its weights: format, layout, wrapper, FP8 flavour, config, dtypes, scales.

Only FP8 scales (a few kB) are read, and checked (a NaN, zero or negative scale is an error, not a range to print);
everything else comes from names, shapes and header metadata.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

from .canonical import SCALE_SUFFIX, open_canonical
from .values import check_values

_OUR_KEYS = ("hyvideo_fp8.format_version", "hyvideo_fp8.source_name", "hyvideo_fp8.source_sha256")


def inspect_checkpoint_dict(path: str | os.PathLike, *, prefer: str = "module",
                            fp8_map: str | os.PathLike | None = None) -> dict:
    """The facts :func:`inspect_checkpoint` prints, as a JSON-serialisable dict."""
    with open_canonical(path, prefer=prefer, fp8_map=fp8_map) as ckpt:
        info = ckpt.info
        dtypes: dict[str, dict[str, int]] = {}
        for spec in ckpt.specs.values():
            d = dtypes.setdefault(str(spec.dtype).removeprefix("torch."), {"tensors": 0, "parameters": 0})
            d["tensors"] += 1
            d["parameters"] += math.prod(spec.shape)
        granularity: Counter[str] = Counter()
        lo, hi = math.inf, -math.inf
        for layer in ckpt.quantized_layers():
            s = ckpt.get(layer + SCALE_SUFFIX)
            check_values(layer + SCALE_SUFFIX, s, os.path.basename(ckpt.info.path))
            granularity["per-tensor" if s.dim() == 0 else "per-channel"] += 1
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
        meta = info.metadata
        policy = None
        if "hyvideo_fp8.policy" in meta:
            policy = json.loads(meta["hyvideo_fp8.policy"]).get("name")
        return {
            "path": info.path, "file_format": info.file_format, "wrapper": "/".join(info.wrapper) or None,
            "prefix": info.prefix or None, "layout": info.layout, "fp8_flavour": info.fp8_flavour,
            "fp8_map": info.fp8_map, "variant": info.config.variant, "model": info.config.describe(),
            "config": info.config.to_dict(),
            "tensors": len(ckpt.specs), "parameters": sum(d["parameters"] for d in dtypes.values()),
            "dtypes": dtypes, "fp8_layers": sum(granularity.values()), "scale_granularity": dict(granularity),
            "scale_min": lo if granularity else None, "scale_max": hi if granularity else None,
            "input_scales": len(info.input_scales), "ignored_keys": len(info.ignored_keys),
            "policy": policy,
            "recipe": json.loads(meta["hyvideo_fp8.recipe"]) if "hyvideo_fp8.recipe" in meta else None,
            "metadata": {k: meta[k] for k in _OUR_KEYS if k in meta}, "notes": list(info.notes),
        }


def _count(n: int) -> str:
    """12.82 B, 1.25 M, 950: parameter counts in the unit that fits."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def inspect_checkpoint(path: str | os.PathLike, *, prefer: str = "module",
                       fp8_map: str | os.PathLike | None = None) -> str:
    """A human-readable summary of a HunyuanVideo checkpoint file."""
    d = inspect_checkpoint_dict(path, prefer=prefer, fp8_map=fp8_map)
    cfg = d["config"]
    lines = [
        f"file:      {d['path']}",
        f"format:    {d['file_format']}" + (f", wrapper {d['wrapper']}" if d["wrapper"] else "")
        + (f", prefix {d['prefix']!r}" if d["prefix"] else ""),
        f"layout:    {d['layout']}",
        f"fp8:       {d['fp8_flavour'] or 'none (high precision)'}" + (f", map {d['fp8_map']}" if d["fp8_map"] else ""),
        f"model:     {d['variant']}: {d['model']}",
        f"config:    hidden {cfg['hidden_size']}, heads {cfg['num_heads']}, {cfg['depth']} double + "
        f"{cfg['depth_single_blocks']} single blocks, in/out channels {cfg['in_channels']}/{cfg['out_channels']}, "
        f"guidance_embed {cfg['guidance_embed']}",
        f"size:      {d['tensors']} tensors, {_count(d['parameters'])} parameters",
        "dtypes:    " + ", ".join(f"{k} {v['tensors']} tensors / {v['parameters']:,} params"
                                  for k, v in sorted(d["dtypes"].items())),
    ]
    if d["fp8_layers"]:
        gran = ", ".join(f"{n} {k}" for k, n in sorted(d["scale_granularity"].items()))
        lines.append(f"fp8 scales: {d['fp8_layers']} layers ({gran}), range [{d['scale_min']:.3e}, "
                     f"{d['scale_max']:.3e}]")
    if d["input_scales"]:
        lines.append(f"input scales: {d['input_scales']} static activation scales (reported, not used)")
    if d["policy"]:
        lines.append(f"policy:    {d['policy']}")
    if d["recipe"]:
        lines.append(f"recipe:    {d['recipe']}")
    for k, v in d["metadata"].items():
        lines.append(f"{k}: {v}")
    if d["ignored_keys"]:
        lines.append(f"ignored:   {d['ignored_keys']} keys outside the transformer (other models, bookkeeping)")
    lines += [f"note:      {n}" for n in d["notes"]]
    return "\n".join(lines)


__all__ = ["inspect_checkpoint", "inspect_checkpoint_dict"]
