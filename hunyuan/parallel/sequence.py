"""One rank's part of a sequence-parallel forward (Ulysses): the hook the transformer and its attention consult.

Every rank runs the whole model on the same inputs, except that after the patch embedding it keeps one contiguous
run of the image tokens (``shard``), with their RoPE rotations. Token-wise work (modulation, linears, MLPs, norms)
then costs 1/N per rank. The text stream (a few hundred tokens beside 10^4-10^5 image tokens) stays whole on every
rank, so the token refiner and the double blocks' text side are computed identically everywhere.

Attention (``__call__``, installed with ``hunyuan.attention.sequence_parallel``): one all-to-all turns this rank's
image tokens of every head into every image token of this rank's heads; the text's q, k, v of the same heads are
already here, appended after the image tokens as in the single-GPU joint sequence (image first, then text). The
rank's own attention (SDPA or FP8, unchanged) runs on its heads over the full sequence, the key padding mask
extended to the full image length. One all-to-all sends each rank its image tokens and the text of every head back.

Heads that N does not divide: the head groups are uneven (``layout.split_sizes``: 24 heads on 5 GPUs are 5, 5, 5,
5, 4). The result is exact and needs nothing from the attention kernel; the attention time follows the largest
group (``ceil(H/N)`` heads instead of ``H/N``). Ring attention would instead need the kernel's per-row
log-sum-exp to merge partial results, which our FP8 kernels do not return; more GPUs than heads is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from ..attention import sequence_parallel
from .layout import heads_to_tokens, run_bounds, split_sizes, tokens_to_heads


def check_world_size(world_size: int, heads: int) -> None:
    """Refuse a GPU count that cannot give every GPU at least one attention head."""
    if not 1 <= world_size <= heads:
        raise ValueError(f"{world_size} GPUs cannot share this model's {heads} attention heads (every GPU computes "
                         f"at least one head): use 1 to {heads} GPUs; counts that divide {heads} "
                         f"({', '.join(str(n) for n in range(2, heads + 1) if heads % n == 0)}) balance best")


class SequenceParallel:
    """``HunyuanVideoTransformer.sequence_parallel`` on one rank of ``group`` (default: the default process group).

    ``shard`` and ``gather`` are called by the model's forward; attention is taken over only inside ``active()``.
    """

    def __init__(self, heads: int, group=None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        check_world_size(self.world_size, heads)
        self.heads = split_sizes(heads, self.world_size)
        self._tokens: list[int] | None = None  # image tokens per rank in the forward under way

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The model's attention calls go through this rank's exchange while inside (one forward)."""
        with sequence_parallel(self):
            try:
                yield
            finally:
                self._tokens = None

    def shard(self, img: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's run of the image tokens ``img [B, N, hidden]`` and of their rotations ``freqs [N, D/2]``."""
        n = img.shape[1]
        if n < self.world_size:
            raise ValueError(f"this latent has {n} image patches, fewer than the {self.world_size} GPUs sharing it: "
                             f"use at most {n} GPUs or a larger video")
        self._tokens = split_sizes(n, self.world_size)
        start, stop = run_bounds(self._tokens, self.rank)
        return img[:, start:stop].clone(), freqs[start:stop]  # a copy: the full-length input is freed

    def local_prefix(self, n: int) -> int:
        """How many of the first ``n`` image tokens (e.g. a guiding frame's) lie in this rank's run: they are its
        first ones."""
        start, stop = run_bounds(self._tokens, self.rank)
        return min(max(n - start, 0), stop - start)

    def gather(self, out: Tensor) -> Tensor:
        """The final layer's ``[B, tokens here, F]`` of every rank joined in token order, on every rank."""
        tokens, self._tokens = self._tokens, None
        b, n, f = out.shape
        padded = out.new_zeros(b, max(tokens), f)  # all_gather takes equal sizes
        padded[:, :n] = out
        parts = [torch.empty_like(padded) for _ in tokens]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:, :m] for p, m in zip(parts, tokens)], dim=1)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                 attend: Callable[..., Tensor]) -> Tensor:
        """Joint attention of ``q, k, v [B, H, tokens here + text, D]`` over every rank's tokens -> ``[B, L, H*D]``.

        Before ``shard`` (the token refiner: text only, the same on every rank) it is this rank's own attention."""
        if self._tokens is None:
            return attend(q, k, v, key_padding_mask)
        tokens, heads, rank = self._tokens, self.heads, self.rank
        here = tokens[rank]
        h0, h1 = run_bounds(heads, rank)
        img = tokens_to_heads(torch.stack((q[:, :, :here], k[:, :, :here], v[:, :, :here])), tokens, heads, rank,
                              self.group)
        q, k, v = (torch.cat((img[i], t[:, h0:h1, here:]), dim=2) for i, t in enumerate((q, k, v)))
        del img
        mask = None
        if key_padding_mask is not None:
            text = key_padding_mask[:, here:]
            mask = torch.cat((text.new_ones(text.shape[0], sum(tokens)), text), dim=1)
        out = attend(q, k, v, mask)  # [B, all tokens + text, heads here * D]
        b, length, _ = out.shape
        out = heads_to_tokens(out.view(b, length, heads[rank], -1), tokens, heads, rank, length - sum(tokens),
                              self.group)
        return out.reshape(b, out.shape[1], -1)


__all__ = ["SequenceParallel", "check_world_size"]
