"""Running out of GPU memory inside our step reaches ComfyUI as the same error type (its executor frees memory on it)
with what to change: block swap when it is off, fewer resident blocks when some stream, a smaller video when all do.

The error is raised by a DIFFUSION_MODEL wrapper registered the way ComfyUI's own model features register theirs (the
CPU cannot run out of GPU memory); in-process, on the CPU, through ``comfy.sample.sample``.
"""

from __future__ import annotations

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import build_random
from hyvideo_fp8.hunyuan.offload import BlockSwap
from tests.host.native import comfy_on_cpu

CFG = tiny_config(hidden_size=128, num_heads=1, axes_dim=(16, 56, 56), vec_in_dim=768, depth=2,
                  depth_single_blocks=2)


def _model():
    comfy_on_cpu()
    import comfy.patcher_extension as ext

    from hyvideo_fp8.nodes.comfy_model import wrap_transformer

    transformer = build_random(CFG, None, seed=0)
    model = wrap_transformer(transformer, CFG, "fp32")

    def out_of_memory(executor, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_oom", out_of_memory)
    return model, transformer


def _sample(model):
    import comfy.sample

    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 8, CFG.context_in_dim, generator=g),
                 {"pooled_output": torch.randn(1, CFG.vec_in_dim, generator=g), "guidance": 6.0}]]
    latent = torch.zeros(1, 16, 2, 8, 8)
    return comfy.sample.sample(model, torch.randn(latent.shape, generator=g), 2, 1.0, "euler", "simple", positive,
                               positive, latent)


@pytest.mark.parametrize("streamed,advice", [
    (0, "set block_swap to auto on the HunyuanVideo FP8 Loader"),
    (2, "2 of 4 blocks streamed from host memory): set block_swap to fixed on the HunyuanVideo FP8 Loader with "
        "fewer resident_blocks"),
    (4, "every block already streamed from host memory): lower the resolution, frame count or batch"),
])
def test_out_of_memory_in_the_step_names_what_to_change(streamed, advice):
    model, transformer = _model()
    blocks = [*transformer.double_blocks, *transformer.single_blocks]
    swap = BlockSwap(blocks[len(blocks) - streamed:], "cpu") if streamed else None
    transformer.block_swap = swap
    try:
        with pytest.raises(torch.OutOfMemoryError) as info:
            _sample(model)
    finally:
        if swap is not None:
            swap.remove()
            transformer.block_swap = None
    message = str(info.value)
    assert message.startswith("the GPU ran out of memory in a HunyuanVideo FP8 step (latent 1x16x2x8x8"), message
    assert advice in message, message
    assert "Tried to allocate 2.00 GiB" in str(info.value.__cause__)  # the allocator's own message is kept
