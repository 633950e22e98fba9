"""The double- and single-stream blocks against HunyuanVideo's block equations, written out here in float64 from the
published description of the official implementation (Tencent ``hyvideo/modules/models.py``: modulation chunk order,
pre-norms, RMS q/k norm, 3-D RoPE on the image tokens, joint attention image-first, gated residuals), not from the
pack's code.

``tests/test_model.py`` compares the model with itself in float64, which catches precision bugs but not formula
bugs; the ComfyUI parity tests (``tests/host``) compare with ComfyUI's own model but need a ComfyUI checkout. This
file is the CPU check of the formulas: every weight is read by its ComfyUI name and applied by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hyvideo_fp8.fp8.kernel_plan import make_plan
from hyvideo_fp8.hunyuan.blocks import BlockInputs
from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import load_transformer
from hyvideo_fp8.hunyuan.rope import RopeTables, rope_tables
from tests.tiny_model import rel, strong_state_dict

CFG = tiny_config()
F64 = torch.float64
GRID = (2, 3, 4)  # token grid (t, h, w)
N_TXT = 5


def linear(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def modulation(vec: torch.Tensor, sd: dict, name: str, factor: int) -> list[torch.Tensor]:
    """SiLU -> Linear(hidden, factor * hidden), chunked in order (shift, scale, gate per half), each [B, 1, hidden]."""
    return list(linear(F.silu(vec), sd, name)[:, None, :].chunk(factor, dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine, eps 1e-6, then x * (1 + scale) + shift."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * (1 + scale) + shift


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * weight


def rope_angles(grid: tuple[int, int, int]) -> torch.Tensor:
    """[T*H*W, head_dim / 2]: axis a of dim d contributes pos_a * theta ** (-2i / d), i < d / 2, axes in (t, h, w)
    order, tokens in t-h-w order."""
    t, h, w = grid
    positions = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"),
                            dim=-1).reshape(-1, 3).to(F64)
    parts = []
    for axis, d in enumerate(CFG.axes_dim):
        freqs = 1.0 / CFG.theta ** (torch.arange(0, d, 2, dtype=F64) / d)
        parts.append(positions[:, axis:axis + 1] * freqs[None])
    return torch.cat(parts, dim=-1)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (x[2i], x[2i+1]) rotated: (x0 cos - x1 sin, x0 sin + x1 cos); x [B, L, H, D]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = torch.cos(angles)[None, :, None], torch.sin(angles)[None, :, None]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def heads_qkv(qkv: torch.Tensor, sd: dict, norm: str, n_img: int | None, angles: torch.Tensor):
    """[B, L, 3*H*D] -> q, k, v [B, L, H, D]: (K H D) channel order, RMS norm of q and k, RoPE on image tokens."""
    B, L, _ = qkv.shape
    q, k, v = qkv.view(B, L, 3, CFG.num_heads, -1).unbind(2)
    q, k = rms_norm(q, sd[f"{norm}.query_norm.scale"]), rms_norm(k, sd[f"{norm}.key_norm.scale"])
    if n_img is not None:
        q = torch.cat([rotate(q[:, :n_img], angles), q[:, n_img:]], dim=1)
        k = torch.cat([rotate(k[:, :n_img], angles), k[:, n_img:]], dim=1)
    return q, k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v per head; [B, L, H, D] in, [B, L, H*D] out."""
    logits = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(q.shape[-1])
    out = torch.einsum("bhlm,bmhd->blhd", logits.softmax(-1), v)
    return out.flatten(2)


def double_block(img, txt, vec, sd, p, angles):
    n_img = img.shape[1]
    im, tm = modulation(vec, sd, f"{p}.img_mod.lin", 6), modulation(vec, sd, f"{p}.txt_mod.lin", 6)
    qi, ki, vi = heads_qkv(linear(modulate(img, im[0], im[1]), sd, f"{p}.img_attn.qkv"), sd, f"{p}.img_attn.norm",
                           n_img, angles)
    qt, kt, vt = heads_qkv(linear(modulate(txt, tm[0], tm[1]), sd, f"{p}.txt_attn.qkv"), sd, f"{p}.txt_attn.norm",
                           None, angles)
    a = attend(torch.cat([qi, qt], 1), torch.cat([ki, kt], 1), torch.cat([vi, vt], 1))
    img = img + im[2] * linear(a[:, :n_img], sd, f"{p}.img_attn.proj")
    txt = txt + tm[2] * linear(a[:, n_img:], sd, f"{p}.txt_attn.proj")
    for side, x, m in (("img", img, im), ("txt", txt, tm)):
        h = F.gelu(linear(modulate(x, m[3], m[4]), sd, f"{p}.{side}_mlp.0"), approximate="tanh")
        x = x + m[5] * linear(h, sd, f"{p}.{side}_mlp.2")
        img, txt = (x, txt) if side == "img" else (img, x)
    return img, txt


def single_block(x, vec, sd, p, n_img, angles):
    shift, scale, gate = modulation(vec, sd, f"{p}.modulation.lin", 3)
    hidden = CFG.hidden_size
    y = linear(modulate(x, shift, scale), sd, f"{p}.linear1")
    q, k, v = heads_qkv(y[..., :3 * hidden], sd, f"{p}.norm", n_img, angles)
    mlp = F.gelu(y[..., 3 * hidden:], approximate="tanh")
    return x + gate * linear(torch.cat([attend(q, k, v), mlp], dim=-1), sd, f"{p}.linear2")


@pytest.fixture(scope="module")
def setup():
    sd = {k: v.to(F64) for k, v in strong_state_dict(seed=11).items()}
    model = load_transformer(dict(sd), None, dtype=F64)
    g = torch.Generator().manual_seed(2)
    n_img = math.prod(GRID)
    img = torch.randn(2, n_img, CFG.hidden_size, generator=g, dtype=F64)
    txt = torch.randn(2, N_TXT, CFG.hidden_size, generator=g, dtype=F64)
    vec = torch.randn(2, CFG.hidden_size, generator=g, dtype=F64)
    rope = RopeTables(rope_tables(GRID, CFG.axes_dim, CFG.theta, "cpu", F64), N_TXT, F64, F64, fused=False)
    ctx = BlockInputs(rope=rope, key_padding_mask=None, norm_dtype=F64, plan=make_plan("cpu", F64))
    return sd, model, img, txt, vec, ctx


def test_double_stream_block_follows_the_equations(setup):
    sd, model, img, txt, vec, ctx = setup
    ref_img, ref_txt = double_block(img, txt, vec, sd, "double_blocks.1", rope_angles(GRID))
    with torch.no_grad():
        out_img, out_txt = model.double_blocks[1](img.clone(), txt.clone(), vec, ctx, "sdpa")
    # compare the blocks' updates, not their outputs: the residual would hide a wrong update term
    assert rel(out_img - img, ref_img - img) < 1e-12  # float64 both ways: summation order only
    assert rel(out_txt - txt, ref_txt - txt) < 1e-12
    assert ((ref_img - img).norm() / img.norm()).item() > 1e-2  # the update is not negligible


def test_single_stream_block_follows_the_equations(setup):
    sd, model, img, txt, vec, ctx = setup
    x = torch.cat([img, txt], dim=1)
    ref = single_block(x, vec, sd, "single_blocks.0", img.shape[1], rope_angles(GRID))
    with torch.no_grad():
        out = model.single_blocks[0](x.clone(), vec, ctx, "sdpa")
    assert rel(out - x, ref - x) < 1e-12


def test_the_equations_notice_a_formula_change(setup):
    """The reference is sensitive to the details it encodes: text rotated like image tokens, or the modulation
    chunks in another order, move the block's update far beyond the tolerance above."""
    sd, model, img, txt, vec, ctx = setup
    x = torch.cat([img, txt], dim=1)
    angles = rope_angles(GRID)
    right = single_block(x, vec, sd, "single_blocks.0", img.shape[1], angles) - x
    all_rotated = torch.cat([angles, torch.zeros(N_TXT, angles.shape[1], dtype=F64) + 1.0])
    wrong = single_block(x, vec, sd, "single_blocks.0", x.shape[1], all_rotated) - x
    assert rel(wrong, right) > 1e-3
    swapped = dict(sd)
    w, b = sd["single_blocks.0.modulation.lin.weight"], sd["single_blocks.0.modulation.lin.bias"]
    swapped["single_blocks.0.modulation.lin.weight"] = torch.cat(w.chunk(3)[::-1])
    swapped["single_blocks.0.modulation.lin.bias"] = torch.cat(b.chunk(3)[::-1])
    assert rel(single_block(x, vec, swapped, "single_blocks.0", img.shape[1], angles) - x, right) > 1e-3
