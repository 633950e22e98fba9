"""Write tiny random HunyuanVideo checkpoints in every layout, file format, wrapper, prefix and FP8 flavour.

Test helper shared by the checkpoint, loader and node tests. It is deliberately independent of
``hyvideo_fp8.hunyuan.checkpoint``: it renames canonical -> Tencent / diffusers with its own tables (the inverse
direction of the readers), quantizes with its own few lines and writes with ``safetensors.torch.save_file`` /
``torch.save``, so a bug in the readers cannot cancel out against the writer.

``write_checkpoint(...)`` returns the canonical state dict the loader must produce: high-precision tensors as
written, FP8 linears as ``<layer>.weight`` (float8) + ``<layer>.weight_scale`` (``[]`` or ``[N]``). Split FP8 pieces
(diffusers q/k/v, ``linear1``) are quantized piece by piece like a diffusers-native quantizer would, so their
re-fused scale is per output channel (each piece's scale repeated over its rows).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from hyvideo_fp8.hunyuan.config import HunyuanConfig, canonical_shapes, tiny_config

LAYOUTS = ("tencent", "comfyui", "diffusers")
FORMATS = ("safetensors", "pt")
WRAPPERS = (None, "module", "ema", "state_dict")
FP8_FLAVOURS = (None, "official", "unscaled", "scaled_fp8", "comfy_quant", "ours")
PREFIXES = ("", "model.diffusion_model.", "transformer.")
E4M3_MAX = 448.0

# canonical linears the factory stores in FP8 (block linears like the official release, plus a fused refiner qkv and
# the swapped final adaLN so every rename path meets FP8 data)
_QUANTIZED = re.compile(r"(double_blocks|single_blocks)\..*"
                        r"|txt_in\.individual_token_refiner\.blocks\.\d+\.self_attn\.qkv"
                        r"|final_layer\.adaLN_modulation\.1")

_TO_TENCENT = (
    (r"^txt_in\.t_embedder\.in_layer\.", "txt_in.t_embedder.mlp.0."),
    (r"^txt_in\.t_embedder\.out_layer\.", "txt_in.t_embedder.mlp.2."),
    (r"^txt_in\.c_embedder\.in_layer\.", "txt_in.c_embedder.linear_1."),
    (r"^txt_in\.c_embedder\.out_layer\.", "txt_in.c_embedder.linear_2."),
    (r"^(time_in|guidance_in|time_r_in)\.in_layer\.", r"\1.mlp.0."),
    (r"^(time_in|guidance_in|time_r_in)\.out_layer\.", r"\1.mlp.2."),
    (r"_attn\.qkv\.", "_attn_qkv."),
    (r"_attn\.proj\.", "_attn_proj."),
    (r"_attn\.norm\.query_norm\.scale$", "_attn_q_norm.weight"),
    (r"_attn\.norm\.key_norm\.scale$", "_attn_k_norm.weight"),
    (r"\.norm\.query_norm\.scale$", ".q_norm.weight"),
    (r"\.norm\.key_norm\.scale$", ".k_norm.weight"),
    (r"_mod\.lin\.", "_mod.linear."),
    (r"\.modulation\.lin\.", ".modulation.linear."),
    (r"(_mlp|\.blocks\.\d+\.mlp)\.0\.", r"\1.fc1."),
    (r"(_mlp|\.blocks\.\d+\.mlp)\.2\.", r"\1.fc2."),
)

_R = r"txt_in\.individual_token_refiner\.blocks\.(\d+)"
_DR = "context_embedder.token_refiner.refiner_blocks.{0}"
# canonical layer/param stem (without .weight/.bias) -> diffusers stems (several = split along rows)
_TO_DIFFUSERS = (
    (r"img_in\.proj", ["x_embedder.proj"]),
    (r"txt_in\.input_embedder", ["context_embedder.proj_in"]),
    (r"txt_in\.t_embedder\.in_layer", ["context_embedder.time_text_embed.timestep_embedder.linear_1"]),
    (r"txt_in\.t_embedder\.out_layer", ["context_embedder.time_text_embed.timestep_embedder.linear_2"]),
    (r"txt_in\.c_embedder\.in_layer", ["context_embedder.time_text_embed.text_embedder.linear_1"]),
    (r"txt_in\.c_embedder\.out_layer", ["context_embedder.time_text_embed.text_embedder.linear_2"]),
    (_R + r"\.(norm1|norm2)", [_DR + ".{1}"]),
    (_R + r"\.self_attn\.qkv", [_DR + ".attn.to_q", _DR + ".attn.to_k", _DR + ".attn.to_v"]),
    (_R + r"\.self_attn\.proj", [_DR + ".attn.to_out.0"]),
    (_R + r"\.mlp\.0", [_DR + ".ff.net.0.proj"]),
    (_R + r"\.mlp\.2", [_DR + ".ff.net.2"]),
    (_R + r"\.adaLN_modulation\.1", [_DR + ".norm_out.linear"]),
    (r"time_in\.in_layer", ["time_text_embed.timestep_embedder.linear_1"]),
    (r"time_in\.out_layer", ["time_text_embed.timestep_embedder.linear_2"]),
    (r"vector_in\.in_layer", ["time_text_embed.text_embedder.linear_1"]),
    (r"vector_in\.out_layer", ["time_text_embed.text_embedder.linear_2"]),
    (r"guidance_in\.in_layer", ["time_text_embed.guidance_embedder.linear_1"]),
    (r"guidance_in\.out_layer", ["time_text_embed.guidance_embedder.linear_2"]),
    (r"double_blocks\.(\d+)\.img_mod\.lin", ["transformer_blocks.{0}.norm1.linear"]),
    (r"double_blocks\.(\d+)\.txt_mod\.lin", ["transformer_blocks.{0}.norm1_context.linear"]),
    (r"double_blocks\.(\d+)\.img_attn\.qkv",
     ["transformer_blocks.{0}.attn.to_q", "transformer_blocks.{0}.attn.to_k", "transformer_blocks.{0}.attn.to_v"]),
    (r"double_blocks\.(\d+)\.txt_attn\.qkv", ["transformer_blocks.{0}.attn.add_q_proj",
                                              "transformer_blocks.{0}.attn.add_k_proj",
                                              "transformer_blocks.{0}.attn.add_v_proj"]),
    (r"double_blocks\.(\d+)\.img_attn\.proj", ["transformer_blocks.{0}.attn.to_out.0"]),
    (r"double_blocks\.(\d+)\.txt_attn\.proj", ["transformer_blocks.{0}.attn.to_add_out"]),
    (r"double_blocks\.(\d+)\.img_mlp\.0", ["transformer_blocks.{0}.ff.net.0.proj"]),
    (r"double_blocks\.(\d+)\.img_mlp\.2", ["transformer_blocks.{0}.ff.net.2"]),
    (r"double_blocks\.(\d+)\.txt_mlp\.0", ["transformer_blocks.{0}.ff_context.net.0.proj"]),
    (r"double_blocks\.(\d+)\.txt_mlp\.2", ["transformer_blocks.{0}.ff_context.net.2"]),
    (r"single_blocks\.(\d+)\.linear1", ["single_transformer_blocks.{0}.attn.to_q",
                                        "single_transformer_blocks.{0}.attn.to_k",
                                        "single_transformer_blocks.{0}.attn.to_v",
                                        "single_transformer_blocks.{0}.proj_mlp"]),
    (r"single_blocks\.(\d+)\.linear2", ["single_transformer_blocks.{0}.proj_out"]),
    (r"single_blocks\.(\d+)\.modulation\.lin", ["single_transformer_blocks.{0}.norm.linear"]),
    (r"final_layer\.linear", ["proj_out"]),
    (r"final_layer\.adaLN_modulation\.1", ["norm_out.linear"]),
)
# HunyuanVideo 1.5's diffusers names (HunyuanVideo15Transformer3DModel), looked up before the v1 table
_TO_DIFFUSERS_15 = (
    (r"time_in\.in_layer", ["time_embed.timestep_embedder.linear_1"]),
    (r"time_in\.out_layer", ["time_embed.timestep_embedder.linear_2"]),
    (r"time_r_in\.in_layer", ["time_embed.timestep_embedder_r.linear_1"]),
    (r"time_r_in\.out_layer", ["time_embed.timestep_embedder_r.linear_2"]),
    (r"byt5_in\.layernorm", ["context_embedder_2.norm"]),
    (r"byt5_in\.fc(\d)", ["context_embedder_2.linear_{0}"]),
    (r"vision_in\.proj\.0", ["image_embedder.norm_in"]),
    (r"vision_in\.proj\.1", ["image_embedder.linear_1"]),
    (r"vision_in\.proj\.3", ["image_embedder.linear_2"]),
    (r"vision_in\.proj\.4", ["image_embedder.norm_out"]),
    (r"cond_type_embedding", ["cond_type_embed"]),
)
_DIFFUSERS_NORMS = (
    (r"double_blocks\.(\d+)\.img_attn\.norm\.query_norm\.scale", "transformer_blocks.{0}.attn.norm_q.weight"),
    (r"double_blocks\.(\d+)\.img_attn\.norm\.key_norm\.scale", "transformer_blocks.{0}.attn.norm_k.weight"),
    (r"double_blocks\.(\d+)\.txt_attn\.norm\.query_norm\.scale", "transformer_blocks.{0}.attn.norm_added_q.weight"),
    (r"double_blocks\.(\d+)\.txt_attn\.norm\.key_norm\.scale", "transformer_blocks.{0}.attn.norm_added_k.weight"),
    (r"single_blocks\.(\d+)\.norm\.query_norm\.scale", "single_transformer_blocks.{0}.attn.norm_q.weight"),
    (r"single_blocks\.(\d+)\.norm\.key_norm\.scale", "single_transformer_blocks.{0}.attn.norm_k.weight"),
)


def random_canonical(config: HunyuanConfig | None = None, seed: int = 0, dtype: torch.dtype = torch.bfloat16
                     ) -> dict[str, torch.Tensor]:
    """Fresh random weights in canonical names: linears ~ N(0, 1/in) with two 20x outlier output channels each,
    norm weights around 1, small biases (none are zero)."""
    config = config or tiny_config()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in canonical_shapes(config).items():
        if len(shape) == 2:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
            rows = torch.randperm(shape[0], generator=g)[:2]
            t[rows] *= 20.0
        elif name.endswith((".scale", "norm1.weight", "norm2.weight", "layernorm.weight", "proj.0.weight",
                            "proj.4.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        sd[name] = t.to(dtype)
    return sd


def _tencent_name(name: str) -> str:
    for pat, rep in _TO_TENCENT:
        name = re.sub(pat, rep, name)
    return name


def _source_stems(stem: str, layout: str, config: HunyuanConfig) -> list[str]:
    """Names of a canonical layer (``stem`` without .weight/.bias) in ``layout``; several = split along rows.
    Tencent's HunyuanVideo 1.5 files split each double block stream's qkv into ``_q``, ``_k``, ``_v``."""
    if layout == "comfyui":
        return [stem]
    if layout == "tencent":
        name = _tencent_name(stem + ".weight")[: -len(".weight")]
        if config.is_v15 and re.fullmatch(r"double_blocks\.\d+\.(img|txt)_attn_qkv", name):
            return [name[: -len("qkv")] + p for p in "qkv"]
        return [name]
    for pat, targets in (_TO_DIFFUSERS_15 if config.is_v15 else ()) + _TO_DIFFUSERS:
        m = re.fullmatch(pat, stem)
        if m:
            return [t.format(*m.groups()) for t in targets]
    raise KeyError(stem)


def _row_splits(stem: str, rows: int, config: HunyuanConfig, n_pieces: int) -> list[int]:
    if n_pieces == 1:
        return [rows]
    h = config.hidden_size
    return [h, h, h, rows - 3 * h] if n_pieces == 4 else [rows // 3] * 3


def _swapped(stem: str, layout: str) -> bool:
    return layout == "diffusers" and stem == "final_layer.adaLN_modulation.1"


def _swap(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[0] // 2
    return torch.cat([t.view(torch.uint8)[half:], t.view(torch.uint8)[:half]]).view(t.dtype) if t.dtype in (
        torch.float8_e4m3fn, torch.float8_e5m2) else torch.cat([t[half:], t[:half]])


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    if parts[0].dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return torch.cat([p.view(torch.uint8) for p in parts]).view(parts[0].dtype)
    return torch.cat(parts)


def _quantize(w: torch.Tensor, flavour: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Factory-side FP8 recipes: per-tensor abs-max (official, scaled_fp8, comfy_quant), per-row (ours), none."""
    w = w.float()
    if flavour == "unscaled":
        return w.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), torch.tensor(1.0)
    amax = w.abs().amax(dim=1) if flavour == "ours" else w.abs().amax()
    scale = (amax / E4M3_MAX).float()
    div = scale[:, None] if flavour == "ours" else scale
    return (w / div).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def _combine_scales(scales: list[torch.Tensor], rows: list[int]) -> torch.Tensor:
    if all(s.dim() == 0 for s in scales) and all(torch.equal(s, scales[0]) for s in scales):
        return scales[0]
    return torch.cat([s.expand(r) if s.dim() == 0 else s for s, r in zip(scales, rows)])


def source_state_dict(layout: str = "comfyui", fp8: str | None = None, config: HunyuanConfig | None = None,
                      seed: int = 0, dtype: torch.dtype = torch.bfloat16
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(source tensors in layout names, canonical reference, FP8 scale map in layout names)`` without writing.

    The source dict carries the flavour's scale keys (``scale_weight``, ``weight_scale``, ``comfy_quant``...), except
    the official flavour, whose scales are returned as the third item (its ``_map.pt``).
    """
    if layout not in LAYOUTS or fp8 not in FP8_FLAVOURS:
        raise ValueError(f"layout {layout!r} / fp8 {fp8!r} not in {LAYOUTS} / {FP8_FLAVOURS}")
    config = config or tiny_config()
    hp = random_canonical(config, seed, dtype)
    src: dict[str, torch.Tensor] = {}
    ref: dict[str, torch.Tensor] = {}
    fp8_map: dict[str, torch.Tensor] = {}
    for name, t in hp.items():
        if layout == "diffusers" and name.endswith(".scale"):
            src[next(d.format(*m.groups()) for p, d in _DIFFUSERS_NORMS if (m := re.fullmatch(p, name)))] = t
            ref[name] = t
            continue
        if layout == "tencent" and not name.endswith((".weight", ".bias")):
            src[_tencent_name(name)] = t
            ref[name] = t
            continue
        stem, param = name.rsplit(".", 1)
        stems = _source_stems(stem, layout, config)
        swapped = _swapped(stem, layout)
        full = _swap(t) if swapped else t
        rows = _row_splits(stem, t.shape[0], config, len(stems))
        pieces = list(torch.split(full, rows)) if len(stems) > 1 else [full]
        quantize = fp8 is not None and param == "weight" and t.dim() == 2 and _QUANTIZED.fullmatch(stem)
        if not quantize:
            for s, p in zip(stems, pieces):
                src[f"{s}.{param}"] = p.contiguous()
            ref[name] = t
            continue
        qs, scales = [], []
        for s, p in zip(stems, pieces):
            q, scale = _quantize(p, fp8)
            qs.append(q)
            scales.append(scale)
            src[f"{s}.weight"] = q
            if fp8 == "official":
                fp8_map[s] = scale.reshape(1)
            elif fp8 == "scaled_fp8":
                src[f"{s}.scale_weight"] = scale
            elif fp8 in ("comfy_quant", "ours"):
                src[f"{s}.weight_scale"] = scale
            if fp8 == "comfy_quant":
                src[f"{s}.comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
        q, scale = _cat(qs), _combine_scales(scales, rows)
        if swapped:
            q, scale = _swap(q), (scale if scale.dim() == 0 else _swap(scale))
        ref[name], ref[f"{stem}.weight_scale"] = q, scale
    if fp8 == "scaled_fp8":
        src["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        first = next(k for k in src if k.endswith(".scale_weight"))
        src[first[: -len(".scale_weight")] + ".scale_input"] = torch.tensor(0.5)
    return src, ref, fp8_map


def write_checkpoint(path: str | Path, layout: str = "comfyui", fmt: str = "safetensors", wrapper: str | None = None,
                     prefix: str = "", fp8: str | None = None, config: HunyuanConfig | None = None, seed: int = 0,
                     dtype: torch.dtype = torch.bfloat16, rmsnorm_weight: bool = False) -> dict[str, torch.Tensor]:
    """Write a tiny random checkpoint and return the canonical reference state dict.

    ``rmsnorm_weight`` (ComfyUI layout only) names the q/k RMS norms ``...query_norm.weight`` as ComfyUI 0.29+ saves
    them, instead of ``.scale``.

    ``wrapper`` (``.pt`` only): ``"module"`` (DeepSpeed, with bookkeeping entries), ``"ema"`` (``module`` holds
    *different* decoy weights, ``ema`` the reference: load with ``prefer="ema"``), ``"state_dict"``.
    ``fp8="official"`` (``.pt`` only) also writes ``<stem>_map.pt``; ``"ours"`` needs safetensors (metadata).
    """
    path = Path(path)
    if fmt not in FORMATS or wrapper not in WRAPPERS:
        raise ValueError(f"fmt {fmt!r} / wrapper {wrapper!r} not in {FORMATS} / {WRAPPERS}")
    if fmt == "safetensors" and wrapper is not None:
        raise ValueError("safetensors files have no wrappers")
    if fp8 == "official" and fmt != "pt":
        raise ValueError("the official FP8 flavour is a .pt file with a _map.pt")
    if fp8 == "ours" and fmt != "safetensors":
        raise ValueError("our format is safetensors (it needs header metadata)")
    if rmsnorm_weight and layout != "comfyui":
        raise ValueError("the .weight spelling of the q/k norms is ComfyUI's; other layouts have their own names")
    src, ref, fp8_map = source_state_dict(layout, fp8, config, seed, dtype)
    if rmsnorm_weight:
        src = {re.sub(r"(\.norm\.(query|key)_norm)\.scale$", r"\1.weight", k): v for k, v in src.items()}
    src = {prefix + k: v for k, v in src.items()}
    metadata: dict[str, str] = {}
    if fp8 == "ours":
        metadata["hyvideo_fp8.format_version"] = "1"
    if fp8 == "comfy_quant":
        layers = {k[: -len(".comfy_quant")]: {"format": "float8_e4m3fn"} for k in src if k.endswith(".comfy_quant")}
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in src.items()}, str(path), metadata=metadata or None)
    else:
        obj: dict = src
        if wrapper == "module":
            obj = {"module": src, "dp_world_size": 1, "global_steps": 100}
        elif wrapper == "ema":
            decoy, _, _ = source_state_dict(layout, fp8, config, seed + 1000, dtype)
            obj = {"module": {prefix + k: v for k, v in decoy.items()}, "ema": src}
        elif wrapper == "state_dict":
            obj = {"state_dict": src, "epoch": 3}
        torch.save(obj, path)
    if fp8 == "official":
        torch.save(fp8_map, path.with_name(f"{path.stem}_map{path.suffix}"))
    return ref


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


def assert_same_state_dict(got: dict, ref: dict) -> None:
    """Same keys, dtypes, shapes and bits (FP8 compared as bytes)."""
    assert sorted(got) == sorted(ref)
    for k, r in ref.items():
        g = got[k]
        assert g.dtype == r.dtype and tuple(g.shape) == tuple(r.shape), (k, g.dtype, r.dtype, g.shape, r.shape)
        assert torch.equal(_bits(g), _bits(r)), k


__all__ = ["LAYOUTS", "FORMATS", "WRAPPERS", "FP8_FLAVOURS", "PREFIXES", "random_canonical", "source_state_dict",
           "write_checkpoint", "assert_same_state_dict"]
