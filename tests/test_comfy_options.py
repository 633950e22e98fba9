"""ComfyUI's per-call ``transformer_options`` on our transformer: the host hook around forward, block replacements,
the per-block fields, and a loud warning (once) for what the model cannot honour. The same contract against a real
ComfyUI (EasyCache, SkipLayerGuidance) is in ``tests/host/test_host_model_features.py``."""

from __future__ import annotations

import logging

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import load_transformer, random_state_dict

CFG = tiny_config()


@pytest.fixture(scope="module")
def model():
    return load_transformer(random_state_dict(CFG, seed=3), None, dtype=torch.float32)


def inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(1, CFG.in_channels, 2, 4, 6, generator=g), timestep=torch.tensor([500.0]),
                context=torch.randn(1, 5, CFG.context_in_dim, generator=g),
                y=torch.randn(1, CFG.vec_in_dim, generator=g), guidance=torch.tensor([6.0]))


def test_forward_wrapper_sees_every_argument_and_can_replace_the_result(model):
    seen = []

    def wrapper(forward, x, timestep, context, y, guidance, attention_mask, transformer_options, **kwargs):
        seen.append((x.shape, transformer_options, kwargs))
        return forward(x, timestep, context, y, guidance, attention_mask, transformer_options, **kwargs) * 0 - 1

    with torch.no_grad():
        plain = model(**inputs())
        model.forward_wrapper = wrapper
        try:
            options = {"sigmas": torch.tensor([0.5])}
            wrapped = model(**inputs(), transformer_options=options, control=None)
        finally:
            model.forward_wrapper = None
    assert torch.isfinite(plain).all() and torch.equal(wrapped, torch.full_like(plain, -1.0))
    assert len(seen) == 1 and seen[0][1] is options and seen[0][2] == {"control": None}


def test_block_replacements_are_called_with_comfyui_fields(model):
    calls = []

    def passthrough(args, extra):
        calls.append((args["transformer_options"]["block_type"], args["transformer_options"]["block_index"],
                      args["transformer_options"]["total_blocks"], args["transformer_options"].get("img_slice")))
        return extra["original_block"](args)

    replace = {("double_block", i): passthrough for i in range(CFG.depth)}
    replace.update({("single_block", i): passthrough for i in range(CFG.depth_single_blocks)})
    options = {"patches_replace": {"dit": replace}}
    with torch.no_grad():
        plain = model(**inputs())
        patched = model(**inputs(), transformer_options=options)
    assert torch.equal(patched, plain)  # calling the original block is exact
    n_img = 2 * (4 // 2) * (6 // 2)
    assert calls == ([("double", i, CFG.depth, None) for i in range(CFG.depth)]
                     + [("single", i, CFG.depth_single_blocks, [0, n_img]) for i in range(CFG.depth_single_blocks)])
    assert "block_index" not in options  # the caller's dict is not written to


def test_skip_replacement_skips_the_block(model):
    """SkipLayerGuidance's patch returns its args: the block must really be skipped."""
    skip = {"patches_replace": {"dit": {("single_block", 0): lambda args, extra: args}}}
    original = model.single_blocks[0].forward
    with torch.no_grad():
        skipped = model(**inputs(), transformer_options=skip)
        model.single_blocks[0].forward = lambda joint, vec, ctx, mode: joint
        try:
            identity = model(**inputs())
        finally:
            model.single_blocks[0].forward = original
        plain = model(**inputs())
    assert torch.equal(skipped, identity)
    assert ((skipped - plain).norm() / plain.norm()).item() > 1e-3


@pytest.mark.parametrize("options,named", [
    ({"patches": {"attn1_patch": [lambda q, k, v, extra_options: (q, k, v)]}}, "['patches']['attn1_patch']"),
    ({"optimized_attention_override": lambda *a, **k: None}, "['optimized_attention_override']"),
    ({"patches_replace": {"dit": {("txt_block", 0): lambda a, b: a}}}, "['patches_replace']['dit'][('txt_block', 0)]"),
])
def test_what_cannot_be_honoured_is_named_once(options, named, caplog):
    model = load_transformer(random_state_dict(CFG, seed=3), None, dtype=torch.float32)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="hyvideo_fp8"):
        model(**inputs(), transformer_options=options)
        model(**inputs(), transformer_options=options)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and named in warnings[0] and "not supported" in warnings[0], warnings
