"""Transformer blocks of HunyuanVideo: token refiner, double-stream, single-stream, final layer.

Module and parameter names are ComfyUI's (``comfy/ldm/flux/layers.py``,
``comfy/ldm/hunyuan_video/model.py``); the numerics follow ComfyUI's native model
except where ``model.py``'s docstring lists a deliberate difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import attention
from .layers import LayerNorm, MLPEmbedder, Modulation, QKNorm, gelu_tanh, norm_modulate, timestep_embedding
from .rope import norm_rope


@dataclass
class BlockInputs:
    """Per-forward constants every block reads (computed once in ``HunyuanVideoTransformer.forward``)."""

    rope_img: Tensor  # complex cos + i sin [N_img, D/2] for the image tokens
    rope_joint: Tensor  # the same plus identity rows for the text tokens (single blocks)
    key_padding_mask: Tensor | None  # [B, N_img + N_txt] bool, True = valid; None when no text is padded
    norm_dtype: torch.dtype
    compute_dtype: torch.dtype


def split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, L, 3*H*D]`` -> q, k, v ``[B, H, L, D]`` (views, no copy)."""
    b, L, _ = qkv.shape
    q, k, v = qkv.view(b, L, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


def _fp16_guard(x: Tensor) -> Tensor:
    """Clamp fp16 overflow like ComfyUI does (bf16/fp32 residuals cannot overflow here)."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


class SelfAttention(nn.Module):
    """qkv and proj linears of one stream, plus its per-head q/k RMS norm scales when ``qk_norm``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, qk_norm: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        if qk_norm:
            self.norm = QKNorm(dim // heads, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, bias=True, device=device, dtype=dtype)


class TokenRefinerBlock(nn.Module):
    """Bidirectional self-attention over the text with gate-only modulation from (t, pooled text)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, device=None, dtype=None) -> None:
        super().__init__()
        self.heads = heads
        mlp_hidden = int(hidden * mlp_ratio)
        self.norm1 = LayerNorm(hidden, device=device, dtype=dtype)
        self.self_attn = SelfAttention(hidden, heads, qkv_bias=True, qk_norm=False, device=device, dtype=dtype)
        self.norm2 = LayerNorm(hidden, device=device, dtype=dtype)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden, device=device, dtype=dtype), nn.SiLU(),
                                 nn.Linear(mlp_hidden, hidden, device=device, dtype=dtype))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, device=device, dtype=dtype))

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None, norm_dtype: torch.dtype, attn_mode: str) -> Tensor:
        gate_attn, gate_mlp = self.adaLN_modulation(c)[:, None, :].chunk(2, dim=-1)
        q, k, v = split_heads(self.self_attn.qkv(self.norm1(x, norm_dtype)), self.heads)
        a = attention(q, k, v.to(q.dtype), key_padding_mask=mask, mode=attn_mode)
        x = torch.addcmul(x, self.self_attn.proj(a), gate_attn)
        return torch.addcmul(x, self.mlp(self.norm2(x, norm_dtype)), gate_mlp)


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden: int, heads: int, depth: int, device=None, dtype=None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TokenRefinerBlock(hidden, heads, device=device, dtype=dtype) for _ in range(depth))


class TokenRefiner(nn.Module):
    """``txt_in``: projects the LLM hidden states and refines them, conditioned on t and their mean.

    The mean covers valid tokens only (Tencent's masked mean). Padded keys are excluded from
    the refiner's attention; padded query rows still see the valid keys, so they stay finite.
    """

    def __init__(self, text_dim: int, hidden: int, heads: int, depth: int, device=None, dtype=None) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(text_dim, hidden, device=device, dtype=dtype)
        self.t_embedder = MLPEmbedder(256, hidden, device=device, dtype=dtype)
        self.c_embedder = MLPEmbedder(text_dim, hidden, device=device, dtype=dtype)
        self.individual_token_refiner = IndividualTokenRefiner(hidden, heads, depth, device=device, dtype=dtype)

    def forward(self, x: Tensor, timestep: Tensor, mask: Tensor | None, norm_dtype: torch.dtype,
                attn_modes: list[str]) -> Tensor:
        t = self.t_embedder(timestep_embedding(timestep).to(x.dtype))
        if mask is None:
            pooled = x.sum(dim=1) / x.shape[1]
        else:
            m = mask.to(x.dtype)[..., None]
            pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
        c = t + self.c_embedder(pooled)
        x = self.input_embedder(x)
        for block, mode in zip(self.individual_token_refiner.blocks, attn_modes):
            x = block(x, c, mask, norm_dtype, mode)
        return x


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, joint attention over ``cat(img, txt)``."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, qkv_bias: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.heads = heads
        mlp_hidden = int(hidden * mlp_ratio)
        for side in ("img", "txt"):
            setattr(self, f"{side}_mod", Modulation(hidden, 6, device=device, dtype=dtype))
            setattr(self, f"{side}_attn", SelfAttention(hidden, heads, qkv_bias, qk_norm=True, device=device,
                                                        dtype=dtype))
            setattr(self, f"{side}_mlp", nn.Sequential(
                nn.Linear(hidden, mlp_hidden, device=device, dtype=dtype), nn.GELU(approximate="tanh"),
                nn.Linear(mlp_hidden, hidden, device=device, dtype=dtype)))

    def _qkv(self, attn: SelfAttention, x: Tensor, rope: Tensor | None, ctx: BlockInputs):
        q, k, v = split_heads(attn.qkv(x), self.heads)
        q = norm_rope(q, attn.norm.query_norm.scale, rope, ctx.norm_dtype, ctx.compute_dtype)
        k = norm_rope(k, attn.norm.key_norm.scale, rope, ctx.norm_dtype, ctx.compute_dtype)
        return q, k, v.to(ctx.compute_dtype)

    def _mlp(self, mlp: nn.Sequential, x: Tensor) -> Tensor:
        return mlp[2](gelu_tanh(mlp[0](x)))

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, ctx: BlockInputs, attn_mode: str) -> tuple[Tensor, Tensor]:
        im = self.img_mod(vec)  # shift1, scale1, gate1, shift2, scale2, gate2
        tm = self.txt_mod(vec)
        nd = ctx.norm_dtype
        img_q, img_k, img_v = self._qkv(self.img_attn, norm_modulate(img, im[0], im[1], nd), ctx.rope_img, ctx)
        txt_q, txt_k, txt_v = self._qkv(self.txt_attn, norm_modulate(txt, tm[0], tm[1], nd), None, ctx)
        q = torch.cat((img_q, txt_q), dim=2)  # image tokens first (Tencent order)
        del img_q, txt_q
        k = torch.cat((img_k, txt_k), dim=2)
        del img_k, txt_k
        v = torch.cat((img_v, txt_v), dim=2)
        del img_v, txt_v
        a = attention(q, k, v, key_padding_mask=ctx.key_padding_mask, mode=attn_mode)
        del q, k, v
        n_img = img.shape[1]
        img = img.addcmul_(self.img_attn.proj(a[:, :n_img]), im[2])
        txt = txt.addcmul_(self.txt_attn.proj(a[:, n_img:]), tm[2])
        del a
        img = img.addcmul_(self._mlp(self.img_mlp, norm_modulate(img, im[3], im[4], nd)), im[5])
        txt = txt.addcmul_(self._mlp(self.txt_mlp, norm_modulate(txt, tm[3], tm[4], nd)), tm[5])
        return img, _fp16_guard(txt)


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over the joint sequence: ``linear1`` -> (qkv | mlp), ``linear2`` on their concat."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, device=None, dtype=None) -> None:
        super().__init__()
        self.heads = heads
        self.hidden = hidden
        self.mlp_hidden = int(hidden * mlp_ratio)
        self.linear1 = nn.Linear(hidden, 3 * hidden + self.mlp_hidden, device=device, dtype=dtype)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden, hidden, device=device, dtype=dtype)
        self.norm = QKNorm(hidden // heads, device=device, dtype=dtype)
        self.modulation = Modulation(hidden, 3, device=device, dtype=dtype)

    def forward(self, x: Tensor, vec: Tensor, ctx: BlockInputs, attn_mode: str) -> Tensor:
        shift, scale, gate = self.modulation(vec)
        h = self.linear1(norm_modulate(x, shift, scale, ctx.norm_dtype))
        qkv, mlp = h.split([3 * self.hidden, self.mlp_hidden], dim=-1)
        q, k, v = split_heads(qkv, self.heads)
        q = norm_rope(q, self.norm.query_norm.scale, ctx.rope_joint, ctx.norm_dtype, ctx.compute_dtype)
        k = norm_rope(k, self.norm.key_norm.scale, ctx.rope_joint, ctx.norm_dtype, ctx.compute_dtype)
        a = attention(q, k, v.to(ctx.compute_dtype), key_padding_mask=ctx.key_padding_mask, mode=attn_mode)
        del q, k, v, qkv
        mlp = gelu_tanh(mlp)
        del h
        out = self.linear2(torch.cat((a, mlp.to(a.dtype)), dim=-1))
        del a, mlp
        return _fp16_guard(x.addcmul_(out, gate))


class LastLayer(nn.Module):
    """``final_layer``: LayerNorm, modulate with (shift, scale), project to patch pixels."""

    def __init__(self, hidden: int, patch_volume: int, out_channels: int, device=None, dtype=None) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, patch_volume * out_channels, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, device=device, dtype=dtype))

    def forward(self, x: Tensor, vec: Tensor, norm_dtype: torch.dtype) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(norm_modulate(x, shift, scale, norm_dtype))


__all__ = ["BlockInputs", "split_heads", "TokenRefinerBlock", "IndividualTokenRefiner", "TokenRefiner",
           "DoubleStreamBlock", "SingleStreamBlock", "LastLayer"]
