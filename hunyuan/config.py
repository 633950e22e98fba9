"""HunyuanVideo transformer configuration and its detection from a state dict.

One config covers the family ComfyUI's ``HunyuanVideo`` class runs: v1 text-to-video, v1 image-to-video (image
latent and mask concatenated: 33 input channels; SkyReels: 32) and HunyuanVideo 1.5 (no single blocks, patch 1x1x1,
a byT5 glyph-text mapper, a SigLIP vision projection, a condition-type embedding and, step-distilled, a meanflow
``time_r`` embedder; super-resolution: 98 input channels). Parameter names are ComfyUI's internal layout (see
``hunyuan/checkpoint`` for the renames from Tencent and diffusers files). Detection reads only names and shapes, so
it works on lazy/meta tensors and never touches weight data.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

HEAD_DIM = 128


class NotHunyuanVideoError(ValueError):
    """The state dict is not a HunyuanVideo (v1 or 1.5) transformer."""


# variant -> what it is (``HunyuanConfig.variant``; the ComfyUI adapter builds the matching model class)
VARIANTS = {
    "v1": "HunyuanVideo text-to-video",
    "v1-i2v": "HunyuanVideo-I2V (image latent + mask concatenated, first-frame token replace)",
    "v1-skyreels-i2v": "SkyReels image-to-video (image latent concatenated)",
    "1.5": "HunyuanVideo 1.5 (text- and image-to-video)",
    "1.5-sr": "HunyuanVideo 1.5 super-resolution (distilled)",
}


@dataclass(frozen=True)
class HunyuanConfig:
    """Hyper-parameters of HYVideo-T/2 and its scaled-down test variants."""

    in_channels: int = 16
    out_channels: int = 16
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 20
    depth_single_blocks: int = 40
    mlp_ratio: float = 4.0
    context_in_dim: int = 4096
    vec_in_dim: int = 768
    guidance_embed: bool = True
    patch_size: tuple[int, int, int] = (1, 2, 2)
    axes_dim: tuple[int, int, int] = (16, 56, 56)
    theta: float = 256.0
    refiner_depth: int = 2
    qkv_bias: bool = True
    # HunyuanVideo 1.5's extra inputs (absent in v1): byT5 mapper (in, hidden, mid) dims, () without one;
    # SigLIP feature size of the vision projection, 0 without one; the text/byT5/vision type embedding;
    # the meanflow ``time_r`` embedder of the step-distilled models.
    byt5_dims: tuple[int, ...] = ()
    vision_in_dim: int = 0
    cond_type_embedding: bool = False
    meanflow: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"axes_dim {self.axes_dim} must sum to the head dim {self.head_dim}")
        if len(self.byt5_dims) not in (0, 3):
            raise ValueError(f"byt5_dims must be () or (in, hidden, mid), got {self.byt5_dims}")

    @property
    def is_v15(self) -> bool:
        """HunyuanVideo 1.5 (ComfyUI tells it by its vision projection; the type embedding comes with it)."""
        return bool(self.vision_in_dim) or self.cond_type_embedding

    @property
    def family(self) -> str:
        """``"1.5"`` or ``"v1"``: what a policy's per-family error budgets are keyed by."""
        return "1.5" if self.is_v15 else "v1"

    @property
    def meanflow_sum(self) -> bool:
        """The meanflow embedding is added to the timestep's (1.5) rather than averaged with it."""
        return self.is_v15

    @property
    def variant(self) -> str:
        """The family member, a key of ``VARIANTS``, from the input channels and the 1.5 modules."""
        c = self.out_channels
        if self.is_v15:
            return "1.5-sr" if self.in_channels == 3 * c + 2 else "1.5"
        if self.in_channels == 2 * c + 1:
            return "v1-i2v"
        if self.in_channels == 2 * c:
            return "v1-skyreels-i2v"
        return "v1"

    @property
    def vae_spatial_compression(self) -> int:
        """Pixels per latent pixel of the family member's VAE (1.5's VAE compresses 16x, v1's 8x; both 4x in time)."""
        return 16 if self.is_v15 else 8

    def latent_shape(self, batch: int, width: int, height: int, frames: int) -> tuple[int, int, int, int, int]:
        """The denoised latent of a ``width`` x ``height`` x ``frames`` video: ``out_channels`` channels (the
        image-conditioning channels a model also takes come from the conditioning, not the latent)."""
        s = self.vae_spatial_compression
        return (batch, self.out_channels, (frames - 1) // 4 + 1, height // s, width // s)

    def describe(self) -> str:
        """One line naming the variant and its size, for ``inspect``, the converter and the loader's log."""
        extra = ", step-distilled (meanflow time_r)" if self.meanflow else ""
        return (f"{VARIANTS[self.variant]}{extra}: {self.depth} double + {self.depth_single_blocks} single blocks, "
                f"hidden {self.hidden_size}, {self.in_channels} input channels")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def block_order(self) -> list[str]:
        """Block name prefixes in execution order (for boundary-block policies)."""
        return [f"double_blocks.{i}." for i in range(self.depth)] + [
            f"single_blocks.{i}." for i in range(self.depth_single_blocks)
        ]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "HunyuanConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown HunyuanConfig fields {sorted(unknown)}")
        d = dict(d)
        for k in ("patch_size", "axes_dim", "byt5_dims"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


RELEASED = HunyuanConfig()
# HunyuanVideo 1.5 (480p/720p T2V and I2V share it; the step-distilled I2V adds ``meanflow``)
RELEASED_15 = HunyuanConfig(
    in_channels=65, out_channels=32, hidden_size=2048, num_heads=16, depth=54, depth_single_blocks=0,
    context_in_dim=3584, vec_in_dim=0, guidance_embed=False, patch_size=(1, 1, 1), byt5_dims=(1472, 2048, 2048),
    vision_in_dim=1152, cond_type_embedding=True)


def default_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE split (t, h, w) of a head: [16, 56, 56] for the released 128, a quarter for t otherwise."""
    if head_dim == HEAD_DIM:
        return (16, 56, 56)
    t = max(2, (head_dim // 4) // 2 * 2)
    hw = (head_dim - t) // 4 * 2
    return (head_dim - 2 * hw, hw, hw)


def tiny_config(**overrides) -> HunyuanConfig:
    """A few-kilobyte model with every structural feature of the real one (tests, demo)."""
    base = dict(
        hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, context_in_dim=32,
        vec_in_dim=24, axes_dim=(8, 12, 12),  # == default_axes(32)
    )
    base.update(overrides)
    return HunyuanConfig(**base)


def tiny_variant_config(variant: str, **overrides) -> HunyuanConfig:
    """``tiny_config`` shaped as one family member (a key of ``VARIANTS``): v1 I2V's concatenated image latent and
    mask, 1.5's patch 1x1x1, 32-channel latent, no single blocks, no pooled vector or guidance embedder, and small
    byT5 and vision inputs (ComfyUI's own 1.5 fixes the byT5 mapper at (1472, 2048, 2048): override ``byt5_dims``
    to compare with it)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    base: dict = {}
    if variant == "v1-i2v":
        base = dict(in_channels=33)
    elif variant == "v1-skyreels-i2v":
        base = dict(in_channels=32)
    elif variant.startswith("1.5"):
        base = dict(in_channels=98 if variant == "1.5-sr" else 65, out_channels=32, depth_single_blocks=0,
                    vec_in_dim=0, guidance_embed=False, patch_size=(1, 1, 1), byt5_dims=(24, 40, 48),
                    vision_in_dim=20, cond_type_embedding=True)
    base.update(overrides)
    return tiny_config(**base)


# 2-D weights that are not linear layers (everything else named ``*.weight`` with two dims is one)
EMBEDDING_WEIGHTS = frozenset({"cond_type_embedding.weight"})


def is_linear_weight(name: str, shape: Sequence[int]) -> bool:
    """Whether canonical tensor ``name`` is a linear layer's weight (what FP8 storage applies to)."""
    return name.endswith(".weight") and len(shape) == 2 and name not in EMBEDDING_WEIGHTS


def canonical_shapes(cfg: HunyuanConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the transformer in ComfyUI names, with its shape."""
    h, m, c = cfg.hidden_size, cfg.mlp_hidden, cfg.context_in_dim
    s: dict[str, tuple[int, ...]] = {}

    def lin(name: str, out_f: int, in_f: int) -> None:
        s[f"{name}.weight"] = (out_f, in_f)
        s[f"{name}.bias"] = (out_f,)

    s["img_in.proj.weight"] = (h, cfg.in_channels, *cfg.patch_size)
    s["img_in.proj.bias"] = (h,)
    for emb in ("time_in", "guidance_in") if cfg.guidance_embed else ("time_in",):
        lin(f"{emb}.in_layer", h, 256)
        lin(f"{emb}.out_layer", h, h)
    if cfg.vec_in_dim:
        lin("vector_in.in_layer", h, cfg.vec_in_dim)
        lin("vector_in.out_layer", h, h)
    lin("txt_in.input_embedder", h, c)
    lin("txt_in.t_embedder.in_layer", h, 256)
    lin("txt_in.t_embedder.out_layer", h, h)
    lin("txt_in.c_embedder.in_layer", h, c)
    lin("txt_in.c_embedder.out_layer", h, h)
    for j in range(cfg.refiner_depth):
        p = f"txt_in.individual_token_refiner.blocks.{j}"
        for n in ("norm1", "norm2"):
            s[f"{p}.{n}.weight"] = (h,)
            s[f"{p}.{n}.bias"] = (h,)
        lin(f"{p}.self_attn.qkv", 3 * h, h)
        lin(f"{p}.self_attn.proj", h, h)
        lin(f"{p}.mlp.0", m, h)
        lin(f"{p}.mlp.2", h, m)
        lin(f"{p}.adaLN_modulation.1", 2 * h, h)
    d = cfg.head_dim
    for i in range(cfg.depth):
        p = f"double_blocks.{i}"
        for side in ("img", "txt"):
            lin(f"{p}.{side}_mod.lin", 6 * h, h)
            lin(f"{p}.{side}_attn.qkv", 3 * h, h)
            s[f"{p}.{side}_attn.norm.query_norm.scale"] = (d,)
            s[f"{p}.{side}_attn.norm.key_norm.scale"] = (d,)
            lin(f"{p}.{side}_attn.proj", h, h)
            lin(f"{p}.{side}_mlp.0", m, h)
            lin(f"{p}.{side}_mlp.2", h, m)
    for i in range(cfg.depth_single_blocks):
        p = f"single_blocks.{i}"
        lin(f"{p}.linear1", 3 * h + m, h)
        lin(f"{p}.linear2", h, h + m)
        s[f"{p}.norm.query_norm.scale"] = (d,)
        s[f"{p}.norm.key_norm.scale"] = (d,)
        lin(f"{p}.modulation.lin", 3 * h, h)
    lin("final_layer.linear", cfg.patch_volume * cfg.out_channels, h)
    lin("final_layer.adaLN_modulation.1", 2 * h, h)
    if cfg.byt5_dims:
        b_in, b_hidden, b_mid = cfg.byt5_dims
        s["byt5_in.layernorm.weight"] = s["byt5_in.layernorm.bias"] = (b_in,)
        lin("byt5_in.fc1", b_hidden, b_in)
        lin("byt5_in.fc2", b_mid, b_hidden)
        lin("byt5_in.fc3", h, b_mid)
    if cfg.vision_in_dim:
        v = cfg.vision_in_dim
        s["vision_in.proj.0.weight"] = s["vision_in.proj.0.bias"] = (v,)
        lin("vision_in.proj.1", v, v)
        lin("vision_in.proj.3", h, v)
        s["vision_in.proj.4.weight"] = s["vision_in.proj.4.bias"] = (h,)
    if cfg.cond_type_embedding:
        s["cond_type_embedding.weight"] = (3, h)
    if cfg.meanflow:
        lin("time_r_in.in_layer", h, 256)
        lin("time_r_in.out_layer", h, h)
    return s


_DETECT_KEYS = ("txt_in.individual_token_refiner.blocks.0.norm1.weight", "img_in.proj.weight",
                "final_layer.linear.weight", "txt_in.input_embedder.weight")


def _count_blocks(keys: Sequence[str], prefix: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    if idx and idx != set(range(len(idx))):
        raise NotHunyuanVideoError(f"{prefix} indices are not contiguous from 0: {sorted(idx)}")
    return len(idx)


def detect_config(shapes: Mapping[str, Sequence[int]]) -> HunyuanConfig:
    """Infer the config from canonical (ComfyUI-named) parameter shapes.

    Raises NotHunyuanVideoError naming the missing key when the dict is another model.
    """
    missing = [k for k in _DETECT_KEYS if k not in shapes]
    if missing:
        raise NotHunyuanVideoError(
            f"not a HunyuanVideo transformer: missing {missing[0]!r}. "
            "Load a HunyuanVideo v1 or 1.5 diffusion model (Tencent, ComfyUI or diffusers layout)."
        )
    keys = list(shapes)
    w = shapes["img_in.proj.weight"]
    if len(w) == 4:
        raise NotHunyuanVideoError("img_in.proj.weight is a 2-D patch embedding: this is a HunyuanImage (2.1) "
                                   "checkpoint, an image model; load a HunyuanVideo v1 or 1.5 transformer here")
    if len(w) != 5:
        raise NotHunyuanVideoError(f"img_in.proj.weight has shape {tuple(w)}, expected a 5-D Conv3d weight")
    hidden, in_ch, patch = int(w[0]), int(w[1]), tuple(int(x) for x in w[2:])
    if hidden % HEAD_DIM and hidden >= HEAD_DIM:
        raise NotHunyuanVideoError(f"hidden size {hidden} is not a multiple of the head dim {HEAD_DIM}")
    num_heads = max(1, hidden // HEAD_DIM)
    head_dim = hidden // num_heads
    qn = shapes.get("double_blocks.0.img_attn.norm.query_norm.scale") or shapes.get(
        "single_blocks.0.norm.query_norm.scale"
    )
    if qn is not None and int(qn[0]) != head_dim:
        head_dim = int(qn[0])
        num_heads = hidden // head_dim
    pv = patch[0] * patch[1] * patch[2]
    out_ch = int(shapes["final_layer.linear.weight"][0]) // pv
    mlp_hidden = None
    if "double_blocks.0.img_mlp.0.weight" in shapes:
        mlp_hidden = int(shapes["double_blocks.0.img_mlp.0.weight"][0])
    elif "single_blocks.0.linear1.weight" in shapes:
        mlp_hidden = int(shapes["single_blocks.0.linear1.weight"][0]) - 3 * hidden
    mlp_ratio = (mlp_hidden / hidden) if mlp_hidden else 4.0
    axes = default_axes(head_dim)
    vec = shapes.get("vector_in.in_layer.weight")
    byt5_dims: tuple[int, ...] = ()
    for k in ("byt5_in.fc1.weight", "byt5_in.fc2.weight"):
        if any(n.startswith("byt5_in.") for n in keys) and k not in shapes:
            raise NotHunyuanVideoError(f"HunyuanVideo 1.5 checkpoint is missing {k!r} (file truncated or partial?)")
    if "byt5_in.fc1.weight" in shapes:
        fc1, fc2 = shapes["byt5_in.fc1.weight"], shapes["byt5_in.fc2.weight"]
        byt5_dims = (int(fc1[1]), int(fc1[0]), int(fc2[0]))
    vision = shapes.get("vision_in.proj.0.weight")
    cfg = HunyuanConfig(
        in_channels=in_ch, out_channels=out_ch, hidden_size=hidden, num_heads=num_heads,
        depth=_count_blocks(keys, "double_blocks"), depth_single_blocks=_count_blocks(keys, "single_blocks"),
        mlp_ratio=mlp_ratio, context_in_dim=int(shapes["txt_in.input_embedder.weight"][1]),
        vec_in_dim=int(vec[1]) if vec is not None else 0,
        guidance_embed=any(k.startswith("guidance_in.") for k in keys), patch_size=patch, axes_dim=axes,
        refiner_depth=_count_blocks(keys, "txt_in.individual_token_refiner.blocks"),
        byt5_dims=byt5_dims, vision_in_dim=int(vision[0]) if vision is not None else 0,
        cond_type_embedding="cond_type_embedding.weight" in shapes,
        meanflow=any(k.startswith("time_r_in.") for k in keys),
    )
    expected = canonical_shapes(cfg)
    for k, shp in expected.items():
        if k not in shapes:
            raise NotHunyuanVideoError(f"HunyuanVideo checkpoint ({cfg.variant}) is missing {k!r} "
                                       "(file truncated or partial?)")
        if tuple(int(x) for x in shapes[k]) != shp:
            raise NotHunyuanVideoError(f"{k!r} has shape {tuple(shapes[k])}, expected {shp} for {cfg}")
    return cfg


__all__ = ["HunyuanConfig", "NotHunyuanVideoError", "VARIANTS", "RELEASED", "RELEASED_15", "tiny_config",
           "tiny_variant_config", "canonical_shapes", "detect_config", "default_axes", "EMBEDDING_WEIGHTS",
           "is_linear_weight"]
