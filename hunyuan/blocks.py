"""Transformer blocks of HunyuanVideo: token refiner, double-stream, single-stream, final layer.

Module and parameter names are ComfyUI's (``comfy/ldm/flux/layers.py``,
``comfy/ldm/hunyuan_video/model.py``); the numerics follow ComfyUI's native model
except where ``model.py``'s docstring lists a deliberate difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..fp8.kernel_plan import Kernel, KernelPlan
from .attention import attention
from .joint_qkv import JointQKV
from .layers import (
    LayerNorm,
    MLPEmbedder,
    Modulation,
    QKNorm,
    concat_gelu_linear,
    gelu_linear,
    modulated_linear,
    norm_modulate,
    timestep_embedding,
)
from .rope import RopeTables, split_heads


@dataclass
class BlockInputs:
    """Per-forward constants every block reads (computed once in ``HunyuanVideoTransformer.forward``)."""

    rope: RopeTables  # image-token rotations and the q/k prologue (fused or eager)
    key_padding_mask: Tensor | None  # [B, N_img + N_txt] bool, True = valid; None when no text is padded
    norm_dtype: torch.dtype
    plan: KernelPlan  # which implementation runs each part on this device (fp8.kernel_plan)
    fused_producers: bool = False  # feed W8A8 layers from the fused FP8 producers (fp8.fused)
    token_chunk: int = 0  # token-wise steps run over chunks of this many tokens when longer; 0: never chunk
    # Token replace (image-to-video's guiding frame): the leading image tokens modulated by row 0 of a two-row
    # ``vec [B, 2, hidden]``; every other token takes row 1. 0 with a one-row ``vec [B, hidden]``.
    replaced_tokens: int = 0

    @property
    def producers(self) -> Kernel:
        """The fused producers' implementation, ``Kernel.NONE`` when the model has them off."""
        return self.plan.producers if self.fused_producers else Kernel.NONE


def token_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of at most ``chunk`` tokens covering ``0..n`` (one run when ``chunk <= 0`` or
    ``n <= chunk``). Token-wise steps (norms, linears, GELU, residual) are exact per token, so chunking changes
    only the peak memory: intermediates are chunk x features instead of tokens x features."""
    if chunk <= 0 or n <= chunk:
        return [(0, n)]
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


def modulation_ranges(n: int, chunk: int, split: int) -> list[tuple[int, int, int]]:
    """``token_ranges`` of ``0..n`` cut at ``split`` so none straddles it, each with its modulation row: 0 for the
    tokens before ``split`` (the guiding frame's), 1 after. ``split`` 0: every range takes row 1."""
    split = min(max(split, 0), n)
    first = [(s, e, 0) for s, e in token_ranges(split, chunk)] if split else []
    rest = [(split + s, split + e, 1) for s, e in token_ranges(n - split, chunk)] if split < n else []
    return first + rest


def modulation_row(mod: tuple[Tensor, ...], row: int) -> tuple[Tensor, ...]:
    """The ``[B, 1, hidden]`` pieces of one modulation row (a one-row modulation is every token's)."""
    if mod[0].shape[1] == 1:
        return mod
    return tuple(m[:, row:row + 1].contiguous() for m in mod)


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

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None, norm_dtype: torch.dtype, attn_mode: str,
                plan: KernelPlan | None = None) -> Tensor:
        gate_attn, gate_mlp = self.adaLN_modulation(c)[:, None, :].chunk(2, dim=-1)
        q, k, v = split_heads(self.self_attn.qkv(self.norm1(x, norm_dtype)), self.heads)
        a = attention(q, k, v.to(q.dtype), key_padding_mask=mask, mode=attn_mode, plan=plan)
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
                attn_modes: list[str], plan: KernelPlan | None = None) -> Tensor:
        t = self.t_embedder(timestep_embedding(timestep).to(x.dtype))
        if mask is None:
            pooled = x.sum(dim=1) / x.shape[1]
        else:
            m = mask.to(x.dtype)[..., None]
            pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
        c = t + self.c_embedder(pooled)
        x = self.input_embedder(x)
        for block, mode in zip(self.individual_token_refiner.blocks, attn_modes):
            x = block(x, c, mask, norm_dtype, mode, plan)
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

    def _project_qkv(self, joint: JointQKV, start: int, attn: SelfAttention, x: Tensor, mod: tuple[Tensor, ...],
                     ctx: BlockInputs, rotate: bool) -> None:
        """qkv linear + q/k norm (+ RoPE) of one stream, chunk by chunk, into its token range of ``joint``."""
        norm = attn.norm
        split = ctx.replaced_tokens if rotate else 0
        for s, e, row in modulation_ranges(x.shape[1], ctx.token_chunk, split):
            m = modulation_row(mod, row)
            qkv = modulated_linear(attn.qkv, x[:, s:e], m[0], m[1], ctx.norm_dtype, ctx.producers)
            joint.write(qkv, norm.query_norm.scale, norm.key_norm.scale, s, rotate, start + s)
            del qkv

    def _finish_stream(self, x: Tensor, a: Tensor, attn: SelfAttention, mlp: nn.Sequential, mod: tuple[Tensor, ...],
                       ctx: BlockInputs, split: int) -> Tensor:
        """Attention projection, then the MLP, each added to ``x`` in place with its gate, chunk by chunk (both are
        token-wise, so doing one chunk completely before the next is exact)."""
        nd, fp = ctx.norm_dtype, ctx.producers
        for s, e, row in modulation_ranges(x.shape[1], ctx.token_chunk, split):
            m = modulation_row(mod, row)
            xc = x[:, s:e]
            xc.addcmul_(attn.proj(a[:, s:e]), m[2])
            xc.addcmul_(gelu_linear(mlp[2], modulated_linear(mlp[0], xc, m[3], m[4], nd, fp), fp), m[5])
        return x

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, ctx: BlockInputs, attn_mode: str) -> tuple[Tensor, Tensor]:
        im = self.img_mod(vec)  # shift1, scale1, gate1, shift2, scale2, gate2
        tm = self.txt_mod(vec)
        (b, n_img, hidden), n_txt = img.shape, txt.shape[1]
        # Joint attention runs over cat(img, txt) (image tokens first, Tencent order): both streams write their
        # q, k, v straight into one joint sequence instead of being concatenated afterwards.
        joint = JointQKV(ctx.rope, attn_mode, ctx.plan, b, self.heads, n_img + n_txt, hidden // self.heads,
                         img.device)
        self._project_qkv(joint, 0, self.img_attn, img, im, ctx, rotate=True)
        self._project_qkv(joint, n_img, self.txt_attn, txt, tm, ctx, rotate=False)
        a = joint.attend(ctx.key_padding_mask)
        del joint
        img = self._finish_stream(img, a[:, :n_img], self.img_attn, self.img_mlp, im, ctx, ctx.replaced_tokens)
        txt = self._finish_stream(txt, a[:, n_img:], self.txt_attn, self.txt_mlp, tm, ctx, 0)
        del a
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
        """linear1 runs in two parts: its q, k, v rows before attention, its MLP rows after it, chunk by chunk
        together with linear2. So neither linear1's full output (7 x hidden a token) nor the MLP pre-activation
        (4 x hidden) is alive during attention; the price is a second LayerNorm + modulation pass over x."""
        mod = self.modulation(vec)  # shift, scale, gate
        b, L, _ = x.shape
        nd, fp = ctx.norm_dtype, ctx.producers
        qkv_rows, mlp_rows = slice(0, 3 * self.hidden), slice(3 * self.hidden, None)
        norm = self.norm

        ranges = modulation_ranges(L, ctx.token_chunk, ctx.replaced_tokens)
        joint = JointQKV(ctx.rope, attn_mode, ctx.plan, b, self.heads, L, self.hidden // self.heads, x.device)
        for s, e, row in ranges:
            sh, sc, _ = modulation_row(mod, row)
            qkv = modulated_linear(self.linear1, x[:, s:e], sh, sc, nd, fp, rows=qkv_rows)
            joint.write(qkv, norm.query_norm.scale, norm.key_norm.scale, s, rotate=True, row0=s)
            del qkv
        a = joint.attend(ctx.key_padding_mask)
        del joint
        for s, e, row in ranges:  # LayerNorm is per token: chunk s:e of x is read here before it is updated
            sh, sc, gate = modulation_row(mod, row)
            xc = x[:, s:e]
            mlp = modulated_linear(self.linear1, xc, sh, sc, nd, fp, rows=mlp_rows)
            xc.addcmul_(concat_gelu_linear(self.linear2, a[:, s:e], mlp, fp), gate)
            del mlp
        del a
        return _fp16_guard(x)


class LastLayer(nn.Module):
    """``final_layer``: LayerNorm, modulate with (shift, scale), project to patch pixels."""

    def __init__(self, hidden: int, patch_volume: int, out_channels: int, device=None, dtype=None) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, patch_volume * out_channels, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, device=device, dtype=dtype))

    def forward(self, x: Tensor, vec: Tensor, norm_dtype: torch.dtype, replaced_tokens: int = 0) -> Tensor:
        """``vec`` is ``[B, hidden]``, or ``[B, 2, hidden]`` whose row 0 modulates the first ``replaced_tokens``."""
        mod = self.adaLN_modulation(vec)
        mod = (mod[:, None, :] if mod.dim() == 2 else mod).chunk(2, dim=-1)
        if mod[0].shape[1] == 1:
            return self.linear(norm_modulate(x, *mod, norm_dtype))
        return torch.cat([self.linear(norm_modulate(x[:, s:e], *modulation_row(mod, row), norm_dtype))
                          for s, e, row in modulation_ranges(x.shape[1], 0, replaced_tokens)], dim=1)


__all__ = ["BlockInputs", "token_ranges", "modulation_ranges", "modulation_row", "split_heads", "TokenRefinerBlock",
           "IndividualTokenRefiner", "TokenRefiner", "DoubleStreamBlock", "SingleStreamBlock", "LastLayer"]
