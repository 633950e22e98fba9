"""Block swapping: chosen transformer blocks live in pinned CPU memory and are copied to the GPU just before they run.

Trades PCIe traffic for GPU memory: a 13 B double block is ~0.35-0.6 GB (FP8 block linears, bf16 modulation), a
single block ~0.15-0.3 GB. Each swapped block is copied on a side CUDA stream while the block before it computes
(the compute stream waits on an event, never the host), so the copy is hidden when a block computes longer than
its copy takes. After a block has run its GPU copy is dropped; the caching allocator reuses that memory for the next
block once the compute stream is done with it (``record_stream``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["BlockSwap", "SwapPlan", "enable_block_swap", "estimate_activation_bytes", "plan_block_swap",
           "tensor_bytes"]

logger = logging.getLogger("hyvideo_fp8")

_Slot = tuple[nn.Module, str, bool]  # (owner module, tensor name, is a parameter)

# Activation bytes per token and hidden unit: the whole-sequence tensors a block holds at its peak (residual stream,
# q/k/v, attention output), and the token-chunked temporaries (MLP hidden, linear1/linear2 outputs over one chunk).
# Chosen to sit above every clean step peak bench_step and bench_memory record, for both families and every preset
# (tests/test_memory.py checks it against bench/results).
_BYTES_PER_TOKEN = 12
_BYTES_PER_CHUNK_TOKEN = 22
_TEXT_TOKENS = 512  # text, byT5 and vision tokens beside the video's (an upper bound for the released encoders)


def _slots(block: nn.Module) -> list[_Slot]:
    out: list[_Slot] = []
    for module in block.modules():
        out += [(module, name, True) for name, p in module._parameters.items() if p is not None]
        out += [(module, name, False) for name, b in module._buffers.items() if b is not None]
    return out


def _read(slot: _Slot) -> Tensor:
    module, name, is_param = slot
    return (module._parameters if is_param else module._buffers)[name].data


def _write(slot: _Slot, t: Tensor) -> None:
    module, name, is_param = slot
    if is_param:
        module._parameters[name].data = t  # keeps the Parameter object (and its name) while moving its storage
    else:
        module._buffers[name] = t


class BlockSwap:
    """Keeps ``blocks`` (in execution order) in host memory and streams each one to ``device`` around its forward.

    On CUDA the host copies are pinned and the uploads run on a side stream, one block ahead; on any other device the
    uploads are plain copies (the same bookkeeping, no overlap), which is how CPU tests check it.
    """

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device | str,
                 first_trigger: nn.Module | None = None) -> None:
        self.blocks = list(blocks)
        self._owner = first_trigger
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._slots = [_slots(b) for b in self.blocks]
        self._host: list[list[Tensor]] = []
        for slots in self._slots:
            host = []
            for slot in slots:
                t = _read(slot).detach().to("cpu")
                if self.cuda:  # a block streamed before keeps its pinned copy
                    t = t if t.is_pinned() else t.pin_memory()
                else:
                    t = t.clone()  # own storage: the caller's tensor is released
                _write(slot, t)
                host.append(t)
            self._host.append(host)
        self._uploads: dict[int, tuple[list[Tensor], torch.cuda.Event | None]] = {}
        self.uploads = 0  # how many block uploads were issued (for tests and logs)
        self._handles = []
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._make_post_hook(i)))
        if first_trigger is not None and self.blocks:
            # Start uploading the first swapped block when the model's forward starts (overlaps the embedders).
            self._handles.append(first_trigger.register_forward_pre_hook(lambda module, args: self._upload(0)))

    @property
    def host_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for host in self._host for t in host)

    def _upload(self, i: int) -> None:
        if i in self._uploads or i >= len(self.blocks):
            return
        self.uploads += 1
        if self.cuda:
            with torch.cuda.stream(self.stream):
                tensors = [t.to(self.device, non_blocking=True) for t in self._host[i]]
                event = torch.cuda.Event()
                event.record(self.stream)
            self._uploads[i] = (tensors, event)
        else:
            self._uploads[i] = ([t.to(self.device, copy=True) for t in self._host[i]], None)

    def _make_pre_hook(self, i: int):
        @torch.compiler.disable
        def pre_hook(module: nn.Module, args) -> None:
            self._upload(i)
            tensors, event = self._uploads.pop(i)
            if event is not None:
                compute = torch.cuda.current_stream(self.device)
                compute.wait_event(event)  # device-side wait: the host never blocks
                for t in tensors:
                    t.record_stream(compute)  # allocated on the side stream, freed after the compute stream used it
            for slot, t in zip(self._slots[i], tensors):
                _write(slot, t)
            self._upload(i + 1)  # copy the next swapped block while this one computes

        return pre_hook

    def _make_post_hook(self, i: int):
        @torch.compiler.disable
        def post_hook(module: nn.Module, args, output) -> None:
            for slot, t in zip(self._slots[i], self._host[i]):
                _write(slot, t)  # drop the device copy; the host copy stays the block's storage

        return post_hook

    def remove(self) -> None:
        """Stop swapping: remove the hooks and put the blocks on the device for good."""
        self._stop(self.device)

    def release(self) -> None:
        """Stop swapping and leave the blocks in (pinned) host memory: the model is being unloaded."""
        self._stop(None)

    def _stop(self, device: torch.device | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._uploads.clear()
        for slots, host in zip(self._slots, self._host):
            for slot, t in zip(slots, host):
                _write(slot, t if device is None else t.to(device))
        self._host.clear()
        if getattr(self._owner, "block_swap", None) is self:
            self._owner.block_swap = None


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@dataclass(frozen=True)
class SwapPlan:
    """Which blocks stream: the last ``n_double`` double and ``n_single`` single blocks (execution order ends there).

    ``resident_bytes``: weights kept on the GPU (the blocks that stay, embedders, final layer) plus the buffer that two
    streamed blocks in flight need; ``streamed_bytes``: weights left in pinned host memory.
    """

    n_double: int
    n_single: int
    resident_bytes: int
    streamed_bytes: int

    @property
    def swaps(self) -> bool:
        return self.n_double + self.n_single > 0


def estimate_activation_bytes(hidden_size: int, patch_size: Sequence[int], latent_shape: Sequence[int],
                              token_chunk: int) -> int:
    """GPU memory one forward needs beyond the weights for a latent of ``latent_shape`` (batch, channels, frames,
    height, width), from above: what a partial load must leave free beside the model. ComfyUI's model management is
    given it in place of its generic per-pixel estimate (several times the real need for this transformer) and sizes
    the weight budget that block swap ``auto`` plans from."""
    batch, _, *dims = latent_shape
    tokens = math.prod(math.ceil(d / p) for d, p in zip(dims, patch_size)) + _TEXT_TOKENS
    chunked = min(tokens, token_chunk) if token_chunk > 0 else tokens
    return int(batch) * hidden_size * (_BYTES_PER_TOKEN * tokens + _BYTES_PER_CHUNK_TOKEN * chunked)


def plan_block_swap(model: nn.Module, *, budget: int | None = None, resident_blocks: int | None = None) -> SwapPlan:
    """Keep the first blocks (in execution order: double, then single) on the GPU and stream the rest.

    ``budget``: bytes of GPU memory the weights may take; as many blocks stay as fit beside the rest of the model and
    the two-block streaming buffer. ``resident_blocks``: keep exactly that many (clamped to the model). With neither,
    nothing streams. A budget too small for the non-block weights and the buffer still streams every block: the run
    then needs that much, and fails with the allocator's out-of-memory error if even that does not fit.
    """
    blocks = [*model.double_blocks, *model.single_blocks]
    sizes = [tensor_bytes(b) for b in blocks]
    rest = tensor_bytes(model) - sum(sizes)
    if resident_blocks is not None:
        keep = max(0, min(int(resident_blocks), len(blocks)))
    elif budget is not None:
        keep = len(blocks)
        while keep > 0 and rest + sum(sizes[:keep]) + (2 * max(sizes[keep:]) if keep < len(blocks) else 0) > budget:
            keep -= 1
    else:
        keep = len(blocks)
    buffer = 2 * max(sizes[keep:]) if keep < len(blocks) else 0
    n_double_kept = min(keep, len(model.double_blocks))
    return SwapPlan(n_double=len(model.double_blocks) - n_double_kept,
                    n_single=len(model.single_blocks) - (keep - n_double_kept),
                    resident_bytes=rest + sum(sizes[:keep]) + buffer, streamed_bytes=sum(sizes[keep:]))


def enable_block_swap(model: nn.Module, n_double: int, n_single: int,
                      device: torch.device | str | None = None) -> BlockSwap | None:
    """Swap the last ``n_double`` double-stream and the last ``n_single`` single-stream blocks of a
    ``HunyuanVideoTransformer`` between pinned CPU memory and ``device`` (default: where the model's parameters are).

    The rest of the model stays where it is. Returns the ``BlockSwap`` (``.remove()`` undoes it), or None on a
    machine without a CUDA device, where there is no GPU memory to save.
    """
    doubles, singles = model.double_blocks, model.single_blocks
    for name, n, blocks in (("n_double", n_double, doubles), ("n_single", n_single, singles)):
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(blocks):
            raise ValueError(f"{name} must be an int in [0, {len(blocks)}] (this model has {len(blocks)} such "
                             f"blocks), got {n!r}")
    if getattr(model, "block_swap", None) is not None:
        raise RuntimeError("block swap is already enabled on this model: call model.block_swap.remove() first")
    if any(getattr(b, "_compiled_call_impl", None) is not None for b in (*doubles, *singles)):
        raise RuntimeError("block swap cannot be combined with compile_blocks (the compiled graphs would recompile "
                           "for every upload): load the model again without compiling")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if device.type != "cuda":
        logger.info("[hyvideo_fp8] block swap is a no-op on %s: it moves blocks between CPU and GPU memory", device)
        return None
    chosen = [*doubles[len(doubles) - n_double:], *singles[len(singles) - n_single:]]
    swap = BlockSwap(chosen, device, first_trigger=model)
    model.block_swap = swap
    logger.debug("[hyvideo_fp8] block swap: %d double + %d single blocks (%.2f GiB) live in pinned CPU memory",
                n_double, n_single, swap.host_bytes / 2**30)
    return swap
