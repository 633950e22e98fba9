"""Key layouts of HunyuanVideo checkpoints and their renames to the canonical (ComfyUI internal) names.

Three layouts exist (reference ``hunyuanvideo.md`` §9.4): Tencent's original names (also what Kijai, Comfy-Org and
GGUF repacks ship), ComfyUI's internal names (what ComfyUI saves; our canonical names) and diffusers'. Tencent ->
canonical is a set of substring replaces (idempotent on canonical names, like ComfyUI's own loader); Tencent's
HunyuanVideo 1.5 files also split each double block's ``img_attn_qkv``/``txt_attn_qkv`` into ``_q``, ``_k``, ``_v``,
which the plan fuses back in that order. diffusers (v1 and 1.5)
splits fused linears (q/k/v, and a single block's ``linear1`` into q/k/v/proj_mlp) and stores the final adaLN
halves as [scale; shift] instead of [shift; scale]; the plan re-fuses and swaps them back.

Everything here works on names and shapes only; :mod:`.canonical` executes the plan tensor by tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..config import NotHunyuanVideoError
from .errors import CheckpointError
from .readers import TensorSpec

LAYOUTS = ("tencent", "comfyui", "diffusers")
ANCHORS = ("img_in.proj.weight", "x_embedder.proj.weight")  # present in every HunyuanVideo transformer file

_TENCENT_RENAMES: tuple[tuple[str, str], ...] = (
    ("txt_in.t_embedder.mlp.0.", "txt_in.t_embedder.in_layer."),
    ("txt_in.t_embedder.mlp.2.", "txt_in.t_embedder.out_layer."),
    ("txt_in.c_embedder.linear_1.", "txt_in.c_embedder.in_layer."),
    ("txt_in.c_embedder.linear_2.", "txt_in.c_embedder.out_layer."),
    ("_attn_qkv.", "_attn.qkv."),
    ("_attn_proj.", "_attn.proj."),
    ("_attn_q_norm.weight", "_attn.norm.query_norm.scale"),
    ("_attn_k_norm.weight", "_attn.norm.key_norm.scale"),
    (".q_norm.weight", ".norm.query_norm.scale"),
    (".k_norm.weight", ".norm.key_norm.scale"),
    ("_mod.linear.", "_mod.lin."),
    (".modulation.linear.", ".modulation.lin."),
    ("mlp.fc1.", "mlp.0."),
    ("mlp.fc2.", "mlp.2."),
    ("_in.mlp.0.", "_in.in_layer."),
    ("_in.mlp.2.", "_in.out_layer."),
)
_TENCENT_MARKS = tuple(old for old, _ in _TENCENT_RENAMES) + ("_attn_q.", "_attn_k.", "_attn_v.")
# Tencent 1.5's split q/k/v of a double block stream (weight, bias or FP8 scale) -> its fused ``_attn_qkv`` name
_TENCENT_SPLIT_QKV = re.compile(r"(double_blocks\.\d+\.(?:img|txt)_attn)_([qkv])\.(weight|bias|weight_scale)")
_QKV_PIECES = ("q", "k", "v")
# ComfyUI 0.29+ builds the q/k RMS norms as torch RMSNorm and saves their parameter as ``.weight``; 0.3.64 and older
# (and the canonical names) use ``.scale``
_RMSNORM_WEIGHTS = ((".norm.query_norm.weight", ".norm.query_norm.scale"),
                    (".norm.key_norm.weight", ".norm.key_norm.scale"))
_DIFFUSERS_ROOTS = ("transformer_blocks.", "single_transformer_blocks.", "x_embedder.", "context_embedder.",
                    "time_text_embed.")

_REF = r"context_embedder\.token_refiner\.refiner_blocks\.(\d+)"
_CREF = "txt_in.individual_token_refiner.blocks.{0}"
# diffusers name (fullmatch; the last group is the parameter suffix) -> canonical name
_DIFFUSERS_RENAMES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), t) for p, t in (
    (r"x_embedder\.proj\.(.+)", "img_in.proj.{0}"),
    (r"context_embedder\.proj_in\.(.+)", "txt_in.input_embedder.{0}"),
    (r"context_embedder\.time_text_embed\.timestep_embedder\.linear_1\.(.+)", "txt_in.t_embedder.in_layer.{0}"),
    (r"context_embedder\.time_text_embed\.timestep_embedder\.linear_2\.(.+)", "txt_in.t_embedder.out_layer.{0}"),
    (r"context_embedder\.time_text_embed\.text_embedder\.linear_1\.(.+)", "txt_in.c_embedder.in_layer.{0}"),
    (r"context_embedder\.time_text_embed\.text_embedder\.linear_2\.(.+)", "txt_in.c_embedder.out_layer.{0}"),
    (_REF + r"\.(norm1|norm2)\.(.+)", _CREF + ".{1}.{2}"),
    (_REF + r"\.attn\.to_out\.0\.(.+)", _CREF + ".self_attn.proj.{1}"),
    (_REF + r"\.ff\.net\.0\.proj\.(.+)", _CREF + ".mlp.0.{1}"),
    (_REF + r"\.ff\.net\.2\.(.+)", _CREF + ".mlp.2.{1}"),
    (_REF + r"\.norm_out\.linear\.(.+)", _CREF + ".adaLN_modulation.1.{1}"),
    (r"time_text_embed\.timestep_embedder\.linear_1\.(.+)", "time_in.in_layer.{0}"),
    (r"time_text_embed\.timestep_embedder\.linear_2\.(.+)", "time_in.out_layer.{0}"),
    (r"time_text_embed\.text_embedder\.linear_1\.(.+)", "vector_in.in_layer.{0}"),
    (r"time_text_embed\.text_embedder\.linear_2\.(.+)", "vector_in.out_layer.{0}"),
    (r"time_text_embed\.guidance_embedder\.linear_1\.(.+)", "guidance_in.in_layer.{0}"),
    (r"time_text_embed\.guidance_embedder\.linear_2\.(.+)", "guidance_in.out_layer.{0}"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(.+)", "double_blocks.{0}.img_mod.lin.{1}"),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear\.(.+)", "double_blocks.{0}.txt_mod.lin.{1}"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_q\.weight", "double_blocks.{0}.img_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_k\.weight", "double_blocks.{0}.img_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight", "double_blocks.{0}.txt_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight", "double_blocks.{0}.txt_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.(.+)", "double_blocks.{0}.img_attn.proj.{1}"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out\.(.+)", "double_blocks.{0}.txt_attn.proj.{1}"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(.+)", "double_blocks.{0}.img_mlp.0.{1}"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(.+)", "double_blocks.{0}.img_mlp.2.{1}"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.(.+)", "double_blocks.{0}.txt_mlp.0.{1}"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.(.+)", "double_blocks.{0}.txt_mlp.2.{1}"),
    (r"single_transformer_blocks\.(\d+)\.proj_out\.(.+)", "single_blocks.{0}.linear2.{1}"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight", "single_blocks.{0}.norm.query_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight", "single_blocks.{0}.norm.key_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.norm\.linear\.(.+)", "single_blocks.{0}.modulation.lin.{1}"),
    (r"proj_out\.(.+)", "final_layer.linear.{0}"),
    # HunyuanVideo 1.5 (HunyuanVideo15Transformer3DModel)
    (r"time_embed\.timestep_embedder\.linear_1\.(.+)", "time_in.in_layer.{0}"),
    (r"time_embed\.timestep_embedder\.linear_2\.(.+)", "time_in.out_layer.{0}"),
    (r"time_embed\.timestep_embedder_r\.linear_1\.(.+)", "time_r_in.in_layer.{0}"),
    (r"time_embed\.timestep_embedder_r\.linear_2\.(.+)", "time_r_in.out_layer.{0}"),
    (r"context_embedder_2\.norm\.(.+)", "byt5_in.layernorm.{0}"),
    (r"context_embedder_2\.linear_([123])\.(.+)", "byt5_in.fc{0}.{1}"),
    (r"image_embedder\.norm_in\.(.+)", "vision_in.proj.0.{0}"),
    (r"image_embedder\.linear_1\.(.+)", "vision_in.proj.1.{0}"),
    (r"image_embedder\.linear_2\.(.+)", "vision_in.proj.3.{0}"),
    (r"image_embedder\.norm_out\.(.+)", "vision_in.proj.4.{0}"),
    (r"cond_type_embed\.weight", "cond_type_embedding.weight"),
))
# diffusers pieces that fuse (in this order, along the output dim) into one canonical linear
_FusedRule = tuple[re.Pattern, tuple[str, ...], str]
_DIFFUSERS_FUSED: tuple[_FusedRule, ...] = tuple((re.compile(p), pieces, t) for p, pieces, t in (
    (_REF + r"\.attn\.(to_q|to_k|to_v)\.(.+)", ("to_q", "to_k", "to_v"), _CREF + ".self_attn.qkv.{1}"),
    (r"transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)\.(.+)", ("to_q", "to_k", "to_v"),
     "double_blocks.{0}.img_attn.qkv.{1}"),
    (r"transformer_blocks\.(\d+)\.attn\.(add_q_proj|add_k_proj|add_v_proj)\.(.+)",
     ("add_q_proj", "add_k_proj", "add_v_proj"), "double_blocks.{0}.txt_attn.qkv.{1}"),
    (r"single_transformer_blocks\.(\d+)\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp)\.(.+)",
     ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "single_blocks.{0}.linear1.{1}"),
))
# the final adaLN: diffusers [scale; shift] -> canonical [shift; scale]
_DIFFUSERS_SWAPPED = re.compile(r"norm_out\.linear\.(.+)")
_SWAPPED_TARGET = "final_layer.adaLN_modulation.1.{0}"

# other models' tell-tale keys, for a useful "not a HunyuanVideo transformer" message (first match wins)
_OTHER_MODELS: tuple[tuple[str, str], ...] = (
    ("distilled_guidance_layer.", "Chroma"),
    ("img_in.weight", "Flux"),
    ("patch_embedding.weight", "Wan"),
    ("blocks.0.self_attn.q.weight", "Wan"),
    ("joint_blocks.", "Stable Diffusion 3"),
    ("input_blocks.0.0.weight", "a Stable Diffusion UNet (SD1.x/SDXL)"),
    ("transformer_blocks.0.scale_shift_table", "LTX-Video / PixArt"),
    ("encoder.down.", "a VAE"),
    ("decoder.up.", "a VAE"),
    ("text_model.encoder.", "a CLIP text encoder"),
    ("model.layers.0.self_attn.q_proj.weight", "a Llama-style text encoder"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 text encoder"),
)


@dataclass(frozen=True)
class Rule:
    """How one canonical tensor is made from source tensors.

    ``op``: ``copy`` (one source), ``concat`` (along dim 0), ``swap`` (exchange the two halves of dim 0),
    ``concat_scale`` (FP8 scales of concatenated pieces; ``rows`` = each piece's output rows), ``swap_scale``.
    """

    op: str
    sources: tuple[str, ...]
    rows: tuple[int, ...] = ()


def find_prefix(keys: Iterable[str]) -> str:
    """The key prefix in front of the transformer's names (``""``, ``model.diffusion_model.``, ``transformer.``...).

    Found from the anchor keys rather than a fixed list, so any wrapper prefix works; when several prefixes hold a
    transformer the one with most keys wins (a full checkpoint also holds a VAE and text encoders).
    """
    keys = list(keys)
    candidates = {k[: -len(a)] for k in keys for a in ANCHORS if k.endswith(a) and (k == a or k[-len(a) - 1] == ".")}
    if not candidates:
        return ""
    return max(sorted(candidates), key=lambda p: sum(k.startswith(p) for k in keys))


def detect_layout(keys: Iterable[str]) -> str:
    """``"diffusers"``, ``"tencent"`` or ``"comfyui"`` from the (prefix-stripped) names."""
    keys = list(keys)
    if any(k.startswith(_DIFFUSERS_ROOTS) for k in keys):
        return "diffusers"
    if any(m in k for k in keys for m in _TENCENT_MARKS):
        return "tencent"
    return "comfyui"


def other_model_error(keys: Iterable[str]) -> NotHunyuanVideoError | None:
    """A NotHunyuanVideoError naming the model the keys look like, or None when nothing is recognised."""
    keys = list(keys)
    for mark, model in _OTHER_MODELS:
        if any(k == mark or k.startswith(mark) or f".{mark}" in k for k in keys):
            return NotHunyuanVideoError(
                f"not a HunyuanVideo transformer: the keys look like {model} (found {mark!r}). Load a HunyuanVideo "
                "v1 or 1.5 diffusion model (Tencent, ComfyUI or diffusers layout) here")
    return None


def not_hunyuan_error(keys: Iterable[str], detail: str) -> NotHunyuanVideoError:
    """A NotHunyuanVideoError that names the model the keys look like, when we can tell, else ``detail``."""
    keys = list(keys)
    return other_model_error(keys) or NotHunyuanVideoError(
        f"not a HunyuanVideo transformer: {detail}. First keys: {sorted(keys)[:3]}. Load a HunyuanVideo v1 or 1.5 "
        "diffusion model (Tencent, ComfyUI or diffusers layout)")


def tencent_to_canonical(name: str) -> str:
    """Rename one Tencent-layout key, or a ComfyUI 0.29+ q/k norm ``.weight`` (canonical names pass through)."""
    for old, new in _TENCENT_RENAMES:
        name = name.replace(old, new)
    for old, new in _RMSNORM_WEIGHTS:
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name


def plan_canonical(specs: Mapping[str, TensorSpec], layout: str) -> dict[str, Rule]:
    """Map every canonical name to the :class:`Rule` that builds it from ``specs`` (prefix-stripped source names,
    FP8 scales already normalised to ``<layer>.weight_scale``)."""
    if layout == "diffusers":
        return _plan_diffusers(specs)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; allowed: {LAYOUTS}")
    plan: dict[str, Rule] = {}
    split: dict[str, dict[str, str]] = {}  # fused Tencent name -> q/k/v piece -> source name
    for name in specs:
        m = _TENCENT_SPLIT_QKV.fullmatch(name)
        if m:
            split.setdefault(f"{m.group(1)}_qkv.{m.group(3)}", {})[m.group(2)] = name
            continue
        target = tencent_to_canonical(name)
        if target in plan:
            raise CheckpointError(f"the checkpoint holds {target!r} twice (as {plan[target].sources[0]!r} and "
                                  f"{name!r}): Tencent and ComfyUI names are mixed up in one file")
        plan[target] = Rule("copy", (name,))
    for fused, found in split.items():
        missing = [p for p in _QKV_PIECES if p not in found]
        if missing:
            raise CheckpointError(f"checkpoint has {next(iter(found.values()))!r} but not its sibling piece(s) "
                                  f"{missing} needed to rebuild {fused!r} (file truncated or partial?)")
        target = tencent_to_canonical(fused)
        if target in plan:
            raise CheckpointError(f"the checkpoint holds {target!r} both fused and split into q/k/v: Tencent and "
                                  "ComfyUI names are mixed up in one file")
        sources = tuple(found[p] for p in _QKV_PIECES)
        plan[target] = _fused_rule(specs, target, sources)
    return plan


def _fused_rule(specs: Mapping[str, TensorSpec], target: str, sources: tuple[str, ...]) -> Rule:
    """Concatenate ``sources`` along the output dim into ``target`` (an FP8 scale: each piece's rows)."""
    if not target.endswith(".weight_scale"):
        return Rule("concat", sources)
    weights = [s[: -len("_scale")] for s in sources]
    absent = [w for w in weights if w not in specs]
    if absent:
        raise CheckpointError(f"FP8 scale without its weight: {absent[0]!r} is missing")
    return Rule("concat_scale", sources, tuple(specs[w].shape[0] for w in weights))


def _plan_diffusers(specs: Mapping[str, TensorSpec]) -> dict[str, Rule]:
    plan: dict[str, Rule] = {}
    groups: dict[str, dict[str, str]] = {}  # canonical target -> piece token -> source name
    group_order: dict[str, tuple[str, ...]] = {}
    unknown: list[str] = []
    for name in specs:
        m = _DIFFUSERS_SWAPPED.fullmatch(name)
        if m:
            suffix = m.group(1)
            plan[_SWAPPED_TARGET.format(suffix)] = Rule("swap_scale" if suffix == "weight_scale" else "swap", (name,))
            continue
        for pat, target in _DIFFUSERS_RENAMES:
            m = pat.fullmatch(name)
            if m:
                plan[target.format(*m.groups())] = Rule("copy", (name,))
                break
        else:
            for pat, pieces, target in _DIFFUSERS_FUSED:
                m = pat.fullmatch(name)
                if m:
                    *head, piece, suffix = m.groups()
                    key = target.format(*head, suffix)
                    groups.setdefault(key, {})[piece] = name
                    group_order[key] = pieces
                    break
            else:
                unknown.append(name)
    if unknown:
        raise not_hunyuan_error(specs, f"unexpected diffusers key(s) {unknown[:5]}")
    for target, found in groups.items():
        order = group_order[target]
        missing = [p for p in order if p not in found]
        if missing:
            some = next(iter(found.values()))
            raise CheckpointError(f"diffusers checkpoint has {some!r} but not its sibling piece(s) {missing} needed to "
                                  f"rebuild {target!r} (file truncated or partial?)")
        plan[target] = _fused_rule(specs, target, tuple(found[p] for p in order))
    return plan


__all__ = ["LAYOUTS", "Rule", "find_prefix", "detect_layout", "not_hunyuan_error", "other_model_error",
           "tencent_to_canonical", "plan_canonical"]
