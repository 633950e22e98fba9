"""Our FP8 attention behind ComfyUI's ``optimized_attention_override`` hook (no ComfyUI import: plain torch in and out).

ComfyUI calls ``override(func, q, k, v, heads, mask=..., skip_reshape=..., skip_output_reshape=..., **kw)`` for every
attention of a natively loaded model, ``func`` being its own backend. We take the calls FP8 attention can serve
exactly (no mask, or a mask over keys only, as HunyuanVideo's text padding is) on sequences long enough to gain,
and hand everything else back to ``func`` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..fp8.attention import fp8_attention

# HunyuanVideo's shortest long attention is far above this, its text refiner (a few hundred tokens) below: the
# refiner keeps ComfyUI's kernel, as it keeps SDPA in the fp8-balanced preset (no time to gain there).
DEFAULT_MIN_TOKENS = 1024


def key_padding_from_mask(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None | bool:
    """``[B, keys]`` bool (True = attend) from ComfyUI's additive or boolean mask; ``False`` when the mask also
    varies over queries (then FP8 attention cannot take it); ``None`` for no mask."""
    if mask is None:
        return None
    if mask.shape[-1] != keys or (mask.dim() >= 2 and mask.shape[-2] != 1):
        return False
    m = mask.reshape(-1, keys) if mask.dim() > 1 else mask.reshape(1, keys)
    if m.shape[0] not in (1, batch):
        return False
    # Additive masks mark padding with a huge negative (HunyuanVideo: -finfo.max); exp() of anything below -1e4 is 0,
    # so the threshold is exact for such masks. Soft additive biases are not a key-padding mask (not used here).
    valid = m if m.dtype == torch.bool else m > -1e4
    return valid.expand(batch, keys)


def make_override(min_tokens: int = DEFAULT_MIN_TOKENS) -> Callable:
    """An ``optimized_attention_override`` that runs FP8 attention on calls of at least ``min_tokens`` keys."""

    def override(func, q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        if skip_reshape:
            b, _, lq, d = q.shape
        else:
            b, lq, hd = q.shape
            d = hd // heads
        lk = k.shape[-2] if skip_reshape else k.shape[1]
        padding = key_padding_from_mask(mask, b, lk)
        if padding is False or lk < min_tokens or kwargs.get("attn_precision") is not None:
            return func(q, k, v, heads, mask=mask, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)
        if not skip_reshape:
            q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        out = fp8_attention(q, k, v, key_padding_mask=padding)  # [B, H, L, D]
        if skip_output_reshape:
            return out
        return out.transpose(1, 2).reshape(b, lq, heads * d)

    override.hyvideo_fp8_min_tokens = min_tokens
    return override
