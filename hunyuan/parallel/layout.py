"""The Ulysses all-to-all of one attention call: this rank's tokens of every head <-> every token of its heads.

Image tokens and heads are split into contiguous runs, as even as they come (``split_sizes``): the first
``n % parts`` runs hold one more. Runs may therefore differ in size, so the exchange is one
``torch.distributed.all_to_all_single`` over flattened blocks with explicit split sizes (NCCL and gloo both take
uneven splits); q, k and v travel together in one call, and the attention output goes back in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous runs covering ``n`` items, the first ``n % parts`` one larger."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def run_bounds(sizes: Sequence[int], index: int) -> tuple[int, int]:
    """``[start, stop)`` of run ``index``."""
    start = sum(sizes[:index])
    return start, start + sizes[index]


def exchange(blocks: Sequence[Tensor], shapes: Sequence[tuple[int, ...]], group=None) -> list[Tensor]:
    """All-to-all of tensors of any shapes: ``blocks[j]`` goes to rank ``j``; returns what each rank sent here,
    ``shapes[i]`` being the shape of the block rank ``i`` sends (all in ``blocks[0]``'s dtype and device)."""
    ref = blocks[0]
    send = torch.cat([b.reshape(-1) for b in blocks])
    counts = [int(torch.Size(s).numel()) for s in shapes]
    recv = ref.new_empty(sum(counts))
    dist.all_to_all_single(recv, send, output_split_sizes=counts, input_split_sizes=[b.numel() for b in blocks],
                           group=group)
    return [part.view(shape) for part, shape in zip(recv.split(counts), shapes)]


def tokens_to_heads(x: Tensor, tokens: Sequence[int], heads: Sequence[int], rank: int, group=None) -> Tensor:
    """``x [S, B, H, tokens[rank], D]`` (this rank's tokens, every head; ``S`` stacked tensors such as q, k, v)
    -> ``[S, B, heads[rank], sum(tokens), D]`` (every rank's tokens, in rank order, of this rank's heads)."""
    s, b, _, _, d = x.shape
    blocks = [x[:, :, h0:h1] for h0, h1 in (run_bounds(heads, j) for j in range(len(heads)))]
    shapes = [(s, b, heads[rank], n, d) for n in tokens]
    return torch.cat(exchange(blocks, shapes, group), dim=3)


def heads_to_tokens(out: Tensor, tokens: Sequence[int], heads: Sequence[int], rank: int, extra: int,
                    group=None) -> Tensor:
    """Attention output ``[B, sum(tokens) + extra, heads[rank], D]`` (every rank's tokens, then ``extra`` tokens
    every rank holds, such as the text) -> ``[B, tokens[rank] + extra, H, D]``: this rank's tokens and the extra
    ones, every head."""
    b, _, _, d = out.shape
    n_all = sum(tokens)
    tail = out[:, n_all:]
    blocks = [torch.cat((out[:, t0:t1], tail), dim=1) for t0, t1 in (run_bounds(tokens, j) for j in
                                                                      range(len(tokens)))]
    shapes = [(b, tokens[rank] + extra, h, d) for h in heads]
    return torch.cat(exchange(blocks, shapes, group), dim=2)


__all__ = ["split_sizes", "run_bounds", "exchange", "tokens_to_heads", "heads_to_tokens"]
