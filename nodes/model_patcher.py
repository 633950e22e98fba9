"""Our ``ModelPatcher``: ComfyUI's memory management with layers that hold their FP8 weights whole.

ComfyUI makes a model fit a card by loading it partially ("lowvram"): each of its ops fetches its weight from host
memory when it runs. Our FP8 layers and fused kernels have no such per-op fetch, so a partial load here streams whole
transformer blocks instead (``hunyuan.offload``: pinned host memory, uploads on a side stream one block ahead):

- ``load`` with a budget (ComfyUI's partial load, sized from the free VRAM and the memory this video's activations
  need): as many blocks as fit stay on the GPU, the rest stream (block swap ``auto``); a fixed number of resident
  blocks streams the rest whatever the budget; ``off`` loads everything (the old behaviour, which may run out of
  memory on a small card). ComfyUI is told what really sits on the GPU: the resident weights plus the two-block
  streaming buffer, so it unloads the text encoder and VAE around us as needed.
- ``partially_unload`` (ComfyUI needs memory back while we stay loaded) streams more blocks, or unloads us whole
  when block swap is off: a module moved to the CPU behind our back would fail the next forward.
- ``unpatch_model`` stops streaming first, so an unloaded model holds no GPU memory and no hooks.

The streamed blocks' LoRA patches are applied on the host before their pinned copies are made; unpatching restores
them as ComfyUI restores every other weight.
"""

from __future__ import annotations

import functools
import logging
from typing import Union

import torch

logger = logging.getLogger("hyvideo_fp8")

BLOCK_SWAP_MODES = ("off", "auto", "fixed")
_NO_BUDGET = 1e32  # what ComfyUI passes for "load everything that is listed"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@functools.cache
def patcher_class():
    """The ModelPatcher subclass (made once, on first use, because it needs ComfyUI)."""
    import comfy.model_patcher

    from ..hunyuan.offload import enable_block_swap, plan_block_swap

    class HyVideoFP8ModelPatcher(comfy.model_patcher.ModelPatcher):
        """See the module docstring. ``block_swap``: "off", "auto", or an int (blocks kept resident)."""

        block_swap: Union[str, int] = "off"
        _streamed: tuple[str, ...] = ()

        def clone(self, *args, **kwargs):
            n = super().clone(*args, **kwargs)
            n.block_swap = self.block_swap
            return n

        @property
        def transformer(self):
            return self.model.diffusion_model

        def _is_streamed(self, name: str) -> bool:
            return any(name == p or name.startswith(p + ".") for p in self._streamed)

        def _load_list(self, *args, **kwargs):
            # streamed blocks are ours to move: ComfyUI's load and unload never see them
            entries = super()._load_list(*args, **kwargs)
            return [e for e in entries if not self._is_streamed(next(x for x in e if isinstance(x, str)))]

        def _stop_streaming(self) -> None:
            swap = getattr(self.transformer, "block_swap", None)
            if swap is not None:
                swap.release()
            self._streamed = ()

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            self._stop_streaming()
            budget = None if full_load or not lowvram_model_memory or lowvram_model_memory >= _NO_BUDGET \
                else int(lowvram_model_memory)
            plan = None
            if device_to is not None and torch.device(device_to).type == "cuda":
                if isinstance(self.block_swap, int):
                    plan = plan_block_swap(self.transformer, resident_blocks=self.block_swap)
                elif self.block_swap == "auto" and budget is not None:
                    plan = plan_block_swap(self.transformer, budget=budget)
            if plan is None or not plan.swaps:
                if budget is not None and self.block_swap == "off":
                    logger.warning("[hyvideo_fp8] ComfyUI can give this model %s of GPU memory, it needs %s: loading "
                                   "it whole anyway (block_swap is off; set block_swap to auto on the loader to "
                                   "stream the blocks that do not fit)", _gib(budget), _gib(self.model_size()))
                try:
                    super().load(device_to, 0, force_patch_weights, full_load=True)
                except torch.OutOfMemoryError as e:
                    raise torch.OutOfMemoryError(
                        f"the HunyuanVideo FP8 model ({_gib(self.model_size())}) does not fit in GPU memory with "
                        f"block_swap {self.block_swap!r}: set block_swap to auto on the HunyuanVideo FP8 Loader to "
                        "stream the blocks that do not fit from host memory") from e
                return
            self._load_streaming(plan, device_to, budget, force_patch_weights)

        def _load_streaming(self, plan, device_to, budget, force_patch_weights) -> None:
            blocks = self.transformer
            prefix = "diffusion_model."
            streamed = [f"{prefix}double_blocks.{i}" for i in range(len(blocks.double_blocks) - plan.n_double,
                                                                     len(blocks.double_blocks))]
            streamed += [f"{prefix}single_blocks.{i}" for i in range(len(blocks.single_blocks) - plan.n_single,
                                                                     len(blocks.single_blocks))]
            self._streamed = tuple(streamed)
            for key in [k for k in self.patches if self._is_streamed(k)]:
                self.patch_weight_to_device(key, device_to=self.offload_device)
            enable_block_swap(blocks, plan.n_double, plan.n_single, device=device_to)
            super().load(device_to, _NO_BUDGET, force_patch_weights, full_load=False)
            for name, module in self.model.named_children():  # modules without parameters ComfyUI does not list
                if name != "diffusion_model":
                    module.to(device_to)
            self.model.model_lowvram = True  # partially loaded: ComfyUI may offer more memory later
            self.model.model_loaded_weight_memory = plan.resident_bytes
            why = (f"ComfyUI can give it {_gib(budget)} for weights beside this video's activations"
                   if budget is not None else f"{self.block_swap} blocks kept resident as set on the loader")
            logger.info("[hyvideo_fp8] block swap: %d double + %d single blocks stream from pinned host memory "
                        "(%s), %s stay on the GPU with the streaming buffer; %s", plan.n_double, plan.n_single,
                        _gib(plan.streamed_bytes), _gib(plan.resident_bytes), why)

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            loaded = self.model.model_loaded_weight_memory
            if self.block_swap == "off" or memory_to_free >= loaded:
                self.unpatch_model(device_to)
                return loaded
            setting, self.block_swap = self.block_swap, "auto"  # stream as many more blocks as frees what is asked
            try:
                self.unpatch_model(self.offload_device)
                self.load(self.load_device, lowvram_model_memory=max(1, loaded - memory_to_free),
                          force_patch_weights=force_patch_weights)
            finally:
                self.block_swap = setting
            return loaded - self.model.model_loaded_weight_memory

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            if unpatch_weights:
                self._stop_streaming()
            return super().unpatch_model(device_to, unpatch_weights)

    return HyVideoFP8ModelPatcher


def parse_block_swap(mode: str, resident_blocks: int) -> Union[str, int]:
    """The loader widgets as the patcher's ``block_swap`` setting ("off", "auto" or resident blocks)."""
    if mode not in BLOCK_SWAP_MODES:
        raise ValueError(f"block_swap must be one of {list(BLOCK_SWAP_MODES)}, got {mode!r}")
    if mode == "fixed":
        if isinstance(resident_blocks, bool) or not isinstance(resident_blocks, int) or resident_blocks < 0:
            raise ValueError(f"resident_blocks must be a whole number >= 0, got {resident_blocks!r}")
        return resident_blocks
    return mode
