"""Block swap planning (which blocks stay on the GPU for a weight budget) and releasing a swap on unload; the loader's
block_swap widgets. The streaming itself is in ``tests/test_memory.py``; its use by ComfyUI's memory management on a
GPU in ``tests/host/test_host_gpu_memory.py``."""

from __future__ import annotations

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import build_random
from hyvideo_fp8.hunyuan.offload import BlockSwap, plan_block_swap, tensor_bytes
from hyvideo_fp8.nodes.model_patcher import parse_block_swap

CFG = tiny_config(depth=3, depth_single_blocks=4)


@pytest.fixture(scope="module")
def model():
    return build_random(CFG, None, seed=2)


def sizes(model):
    blocks = [*model.double_blocks, *model.single_blocks]
    return [tensor_bytes(b) for b in blocks], tensor_bytes(model) - sum(tensor_bytes(b) for b in blocks)


def test_no_budget_streams_nothing(model):
    plan = plan_block_swap(model)
    assert not plan.swaps and plan.streamed_bytes == 0 and plan.resident_bytes == tensor_bytes(model)


def test_budget_keeps_the_first_blocks_that_fit_with_the_streaming_buffer(model):
    block, rest = sizes(model)
    for keep in range(len(block) + 1):
        buffer = 2 * max(block[keep:]) if keep < len(block) else 0
        budget = rest + sum(block[:keep]) + buffer
        plan = plan_block_swap(model, budget=budget)
        kept = len(block) - plan.n_double - plan.n_single
        assert kept >= keep, (keep, plan)
        assert plan.resident_bytes <= budget or kept == 0
        assert plan.resident_bytes + plan.streamed_bytes - (2 * max(block[kept:]) if kept < len(block) else 0) \
            == tensor_bytes(model)
        # doubles run first: singles stream before any double does
        assert plan.n_double == 0 or plan.n_single == CFG.depth_single_blocks


def test_too_small_a_budget_streams_every_block(model):
    plan = plan_block_swap(model, budget=1)
    assert (plan.n_double, plan.n_single) == (CFG.depth, CFG.depth_single_blocks)


@pytest.mark.parametrize("resident,expect", [(0, (3, 4)), (2, (1, 4)), (5, (0, 2)), (7, (0, 0)), (99, (0, 0))])
def test_fixed_resident_blocks(model, resident, expect):
    plan = plan_block_swap(model, resident_blocks=resident)
    assert (plan.n_double, plan.n_single) == expect


def test_release_leaves_blocks_on_the_host_and_removes_the_hooks():
    model = build_random(CFG, None, seed=2)
    block = model.single_blocks[-1]
    before = {k: v.clone() for k, v in block.state_dict().items()}
    swap = BlockSwap([block], "cpu", first_trigger=model)
    model.block_swap = swap
    swap.release()
    assert model.block_swap is None and not block._forward_pre_hooks and not block._forward_hooks
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in block.state_dict().items())


def test_loader_widgets_parse():
    assert parse_block_swap("auto", 3) == "auto" and parse_block_swap("off", 0) == "off"
    assert parse_block_swap("fixed", 12) == 12
    with pytest.raises(ValueError, match="block_swap must be one of"):
        parse_block_swap("sometimes", 1)
    with pytest.raises(ValueError, match="resident_blocks must be a whole number"):
        parse_block_swap("fixed", -1)
