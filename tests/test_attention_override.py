"""FP8 attention behind ComfyUI's ``optimized_attention_override`` hook, driven the way ComfyUI calls it."""

import pytest
import torch
import torch.nn.functional as F

from hyvideo_fp8.nodes.attention_override import key_padding_from_mask, make_override


def comfy_sdpa(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    """ComfyUI's attention_pytorch contract, in float64 (the reference)."""
    if not skip_reshape:
        b, _, hd = q.shape
        q, k, v = (t.view(b, -1, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                         attn_mask=None if mask is None else mask.double()).to(q.dtype)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def qkv(b=1, h=2, lq=80, d=128):
    return [torch.randn(b, h, lq, d) for _ in range(3)]


def test_long_unmasked_calls_run_fp8_close_to_the_reference():
    q, k, v = qkv()
    calls = []
    out = make_override(min_tokens=64)(lambda *a, **kw: calls.append(1), q, k, v, 2, skip_reshape=True)
    assert not calls and out.shape == (1, 80, 256) and torch.isfinite(out).all()
    assert rel(out, comfy_sdpa(q, k, v, 2, skip_reshape=True)) < 0.06  # measured ~0.04 (FP8 P.V dominates)


def test_short_calls_and_query_masks_go_back_to_comfy():
    q, k, v = qkv(lq=40)
    sentinel = object()
    hand_back = lambda *a, **kw: sentinel  # noqa: E731
    assert make_override(min_tokens=64)(hand_back, q, k, v, 2, skip_reshape=True) is sentinel
    full = torch.zeros(1, 1, 40, 40)  # varies over queries: the text refiner's mask shape
    assert make_override(min_tokens=8)(hand_back, q, k, v, 2, mask=full, skip_reshape=True) is sentinel


def test_additive_key_mask_excludes_padded_text_exactly():
    q, k, v = qkv(lq=96)
    k[:, :, 90:] *= 1e3  # garbage in the padded keys must not leak
    v[:, :, 90:] = float("nan")
    mask = torch.zeros(1, 1, 96)
    mask[..., 90:] = -torch.finfo(torch.float32).max
    override = make_override(min_tokens=8)
    out = override(comfy_sdpa, q, k, v, 2, mask=mask, skip_reshape=True, skip_output_reshape=True)
    alone = override(comfy_sdpa, q[:, :, :90], k[:, :, :90], v[:, :, :90], 2, skip_reshape=True,
                     skip_output_reshape=True)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, :90], alone)


def test_flat_layout_in_and_out():
    q, k, v = (t.transpose(1, 2).reshape(2, 72, 256) for t in qkv(b=2, lq=72))
    out = make_override(min_tokens=8)(comfy_sdpa, q, k, v, 2)
    assert out.shape == (2, 72, 256)
    assert rel(out, comfy_sdpa(q, k, v, 2)) < 0.06


@pytest.mark.parametrize("shape", [(1, 5), (2, 1, 1, 5), (5,)])
def test_key_padding_from_additive_and_boolean_masks(shape):
    m = torch.zeros(shape)
    m[..., -2:] = -1e30
    valid = key_padding_from_mask(m, 2, 5)
    assert valid.shape == (2, 5) and valid[:, :3].all() and not valid[:, 3:].any()
    assert torch.equal(key_padding_from_mask(m > -1, 2, 5), valid)
    assert key_padding_from_mask(None, 2, 5) is None
    assert key_padding_from_mask(torch.zeros(3, 5), 2, 5) is False  # batch of 3 for 2 samples
