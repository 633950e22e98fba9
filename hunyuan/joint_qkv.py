"""The q, k, v of one block's joint sequence (image tokens, then text): written stream by stream and chunk by chunk
by the q/k prologue, then attended.

Two layouts. SDPA and the eager paths take 16/32-bit q, k, v: a ``[3, B, H, L, D]`` buffer, or the prologue's own
output when one write covers the whole sequence (no copy). Where the kernel plan has a quantizing prologue
(``quant_prologue``: FP8 attention runs as GPU kernels on 16-bit activations), FP8 attention takes int8 queries,
quantized by the prologue itself (``fp8.fused.qk_norm_rope_quant_q``), and a ``[2, B, H, L, D]`` k/v buffer: q is
written once and never read back in 16 bits, and the streams land in place instead of being copied.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..fp8.attention import empty_quantized_q
from ..fp8.kernel_plan import Kernel, KernelPlan
from .attention import attention, attention_quantized_q
from .rope import RopeTables


class JointQKV:
    """Where a block's prologue writes q, k, v (``write``) and what its attention reads (``attend``, once)."""

    def __init__(self, rope: RopeTables, mode: str, plan: KernelPlan, batch: int, heads: int, seq_len: int,
                 head_dim: int, device: torch.device) -> None:  # fmt: skip
        self.rope, self.mode, self.plan, self.heads = rope, mode, plan, heads
        self.shape = (batch, heads, seq_len, head_dim)
        self.device = device
        self.quantized = mode == "fp8" and rope.fused and plan.quant_prologue is not Kernel.NONE
        self._q = self._kv = self._parts = self._buffer = None
        if self.quantized:
            self._q = empty_quantized_q(batch, heads, seq_len, head_dim, head_dim**-0.5, device)
            self._kv = torch.empty((2, *self.shape), dtype=rope.out_dtype, device=device)

    def write(self, qkv: Tensor, q_scale: Tensor, k_scale: Tensor, rope_start: int, rotate: bool, row0: int) -> None:
        """The prologue of ``qkv`` ``[B, n, 3*H*D]`` (tokens ``rope_start ..`` of its stream, ``rotate`` for image
        tokens) into rows ``row0 .. row0 + n`` of the joint sequence."""
        if self.quantized:
            self.rope.qk_prologue_quantized(qkv.to(self._kv.dtype), q_scale, k_scale, rope_start, rotate, self._q,
                                            self._kv, row0, self.plan.quant_prologue)  # fmt: skip
            return
        parts = self.rope.qk_prologue(qkv, self.heads, q_scale, k_scale, rope_start, rotate, self.plan.prologue)
        n = parts[0].shape[2]
        if row0 == 0 and n == self.shape[2]:
            self._parts = parts
            return
        if self._buffer is None:
            self._buffer = torch.empty((3, *self.shape), dtype=parts[0].dtype, device=self.device)
        for i, t in enumerate(parts):
            self._buffer[i, :, :, row0:row0 + n].copy_(t)

    def attend(self, key_padding_mask: Tensor | None) -> Tensor:
        """Attention over the whole written sequence, ``[B, L, H*D]``; the inputs are released."""
        if self.quantized:
            q, k, v = self._q, self._kv[0], self._kv[1]
            self._q = self._kv = None
            return attention_quantized_q(q, k, v, key_padding_mask=key_padding_mask, plan=self.plan)
        q, k, v = self._parts if self._parts is not None else self._buffer.unbind(0)
        self._parts = self._buffer = None
        return attention(q, k, v, key_padding_mask=key_padding_mask, mode=self.mode, plan=self.plan)


__all__ = ["JointQKV"]
