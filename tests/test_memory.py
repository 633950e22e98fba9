"""Memory of a forward: token chunking is exact and bounds the peak; block swap leaves the output unchanged.

The peak is measured on CPU with torch's profiler memory events (every allocation and free of the forward, in
order), in units of one full-length activation ``U = batch x tokens x hidden x itemsize``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from hyvideo_fp8.hunyuan.blocks import token_ranges
from hyvideo_fp8.hunyuan.config import RELEASED, RELEASED_15, tiny_config
from hyvideo_fp8.hunyuan.loader import build_random
from hyvideo_fp8.hunyuan.model import DEFAULT_TOKEN_CHUNK
from hyvideo_fp8.hunyuan.offload import BlockSwap, enable_block_swap, estimate_activation_bytes
from hyvideo_fp8.hunyuan.policies import get_preset

# hidden 128 with 2 heads: full-length activations outweigh the tiny model's [L, L] attention scores.
CFG = tiny_config(hidden_size=128, num_heads=2, axes_dim=(16, 24, 24))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_inputs(t: int, h: int, w: int, dtype=torch.float32, n_txt: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(1, CFG.in_channels, t, h, w, generator=g).to(dtype), timestep=torch.tensor([500.0]),
                context=torch.randn(1, n_txt, CFG.context_in_dim, generator=g).to(dtype),
                y=torch.randn(1, CFG.vec_in_dim, generator=g).to(dtype), guidance=torch.tensor([6.0]))


def forward(model, inputs, chunk: int) -> torch.Tensor:
    model.token_chunk = chunk
    with torch.inference_mode():
        return model(**inputs)


def memory_profile(fn) -> tuple[int, int]:
    """``(peak live bytes, largest single allocation)`` of what ``fn`` allocates on the CPU."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = largest = 0
    for e in events:
        live += e.nbytes()
        peak, largest = max(peak, live), max(largest, e.nbytes())
    return peak, largest


def test_token_ranges():
    assert token_ranges(10, 0) == [(0, 10)]
    assert token_ranges(10, 10) == [(0, 10)]
    assert token_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("preset,dtype", [(None, torch.float32), ("fp8-balanced", torch.bfloat16),
                                          ("fp8-max", torch.bfloat16)])
def test_chunked_forward_equals_unchunked(preset, dtype):
    """Chunks of 7 tokens split the image stream (96 tokens), the joint stream (104) and the text (8) unevenly."""
    model = build_random(CFG, get_preset(preset) if preset else None, seed=1)
    if preset is None:
        model = model.float()
    inputs = make_inputs(2, 8, 12, dtype)
    whole, chunked = forward(model, inputs, 0), forward(model, inputs, 7)
    assert torch.isfinite(chunked).all()
    assert rel(chunked, whole) < 1e-6  # measured 0 (fp32 and both FP8 presets: per-token work, same GEMMs)


def test_chunking_bounds_the_peak():
    """Chunked, the largest allocation is the joint q/k/v buffer (3U) and the peak about 7U: x, q/k/v, the attention
    output and its [B, L, H*D] copy. Unchunked, linear1's MLP rows (4U) and linear2's input (5U) appear in full."""
    model = build_random(CFG, None, seed=2).float()
    inputs = make_inputs(8, 16, 16)  # 512 image + 8 text tokens
    unit = 1 * (8 * 16 * 16 // 4 + 8) * CFG.hidden_size * 4
    peak_whole, largest_whole = memory_profile(lambda: forward(model, inputs, 0))
    peak_chunked, largest_chunked = memory_profile(lambda: forward(model, inputs, 64))
    assert largest_chunked <= 3 * unit + 4096  # measured 3.0 U
    assert peak_chunked <= 7.5 * unit  # measured 6.6 U
    assert largest_whole >= 5 * unit and peak_whole >= 2 * peak_chunked  # measured 5.0 U and 15.5 U


# --- block swap -------------------------------------------------------------------------------------------------

def _pointers(block) -> list[int]:
    return [t.data_ptr() for t in block.state_dict().values()]


def test_block_swap_moves_weights_around_each_block_and_keeps_the_output():
    model = build_random(CFG, get_preset("fp8-balanced"), seed=3)
    inputs = make_inputs(2, 4, 6, torch.bfloat16)
    want = forward(model, inputs, 0)
    blocks = [model.double_blocks[1], model.single_blocks[0], model.single_blocks[1]]
    originals = [list(b.state_dict().values()) for b in blocks]  # held, so no later copy can reuse their memory
    block = model.single_blocks[0]
    before, during = [], []
    probes = [block.register_forward_pre_hook(lambda m, a: before.append(_pointers(m)))]
    swap = BlockSwap(blocks, "cpu", first_trigger=model)
    probes.append(block.register_forward_pre_hook(lambda m, a: during.append(_pointers(m))))
    stored = [_pointers(b) for b in blocks]
    assert all(set(p).isdisjoint(t.data_ptr() for t in o) for p, o in zip(stored, originals))  # own host copies
    got = forward(model, inputs, 0)
    for probe in probes:
        probe.remove()
    assert torch.equal(got, want)
    assert swap.uploads == 3
    # Before the swapper's hook the block holds its host copies, after it fresh uploads; after the forward the
    # host copies are its storage again.
    assert before == [stored[1]] and set(during[0]).isdisjoint(stored[1])
    assert [_pointers(b) for b in blocks] == stored
    swap.remove()
    assert torch.equal(forward(model, inputs, 0), want)


def test_enable_block_swap_is_a_logged_no_op_without_cuda(caplog):
    model = build_random(CFG, None, seed=4)
    with caplog.at_level(logging.INFO, logger="hyvideo_fp8"):
        assert enable_block_swap(model, 1, 1, device="cpu") is None
    assert "block swap is a no-op on cpu" in caplog.text
    assert model.block_swap is None


@pytest.mark.parametrize("n_double,n_single,match", [(3, 0, r"n_double must be an int in \[0, 2\]"),
                                                     (0, -1, r"n_single must be an int in \[0, 2\]"),
                                                     (True, 0, "n_double must be an int")])
def test_enable_block_swap_rejects_bad_counts(n_double, n_single, match):
    model = build_random(CFG, None, seed=4)
    with pytest.raises(ValueError, match=match):
        enable_block_swap(model, n_double, n_single, device="cpu")


def _measured_activations() -> list[tuple[str, str, int, int, float]]:
    """(file, size, latent tokens' config family, token chunk, activation GiB) for every clean step peak recorded in
    bench/results: step peaks less the weights, and bench_memory's uncapped rows (also at other token chunks)."""
    results = Path(__file__).resolve().parent.parent / "bench" / "results"
    spec = importlib.util.spec_from_file_location("readme_tables", results.parent / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    out = []
    for path in sorted(results.glob("step-*.json")):
        for r in json.loads(path.read_text())["data"]["results"]:
            clean = (path.name, r["size"]) not in tables.INFLATED_PEAKS and r.get("peak_gib")
            if clean and not r["variant"].startswith("native") and "+" not in r["variant"]:
                family = "1.5" if path.name.startswith("step-15-") else "v1"
                out.append((path.name, r["size"], family, DEFAULT_TOKEN_CHUNK, r["peak_gib"] - r["weight_gib"]))
    for path in sorted(results.glob("memory-*.json")):
        rows = json.loads(path.read_text())["data"]["rows"]
        for r in rows:
            if r.get("cap_gib") is None:
                weights = next(b["weights"] for b in rows if b["size"] == r["size"] and "weights" in b)
                out.append((path.name, r["size"], "v1", r.get("token_chunk") or DEFAULT_TOKEN_CHUNK,
                            (r["peak"] - weights) / 2**30))
    return out


def test_activation_estimate_sits_above_every_measured_step_peak():
    """The estimate ComfyUI plans partial loads from must not be below what a step really takes (the card would run
    out of memory), nor far above it (blocks would stream that could stay): at least every clean peak measured at full
    size, at most 1.7x the largest one of each size (presets differ: fp8-max holds less than bf16)."""
    measured = _measured_activations()
    assert len(measured) >= 20
    configs = {"v1": RELEASED, "1.5": RELEASED_15}
    largest: dict[tuple, float] = {}
    for file, size, family, chunk, gib in measured:
        cfg = configs[family]
        h, w, f = (int(x) for x in size.rstrip("f").split("x"))
        latent = cfg.latent_shape(1, w, h, f)
        estimate = estimate_activation_bytes(cfg.hidden_size, cfg.patch_size, latent, chunk) / 2**30
        assert gib <= estimate, (file, size, chunk, gib, estimate)
        key = (family, size, chunk, estimate)
        largest[key] = max(largest.get(key, 0.0), gib)
    for (family, size, chunk, estimate), gib in largest.items():
        assert estimate <= 1.7 * gib, (family, size, chunk, gib, estimate)


def test_activation_estimate_scales_with_batch_and_chunk():
    latent = RELEASED.latent_shape(1, 1280, 720, 129)
    one = estimate_activation_bytes(RELEASED.hidden_size, RELEASED.patch_size, latent, DEFAULT_TOKEN_CHUNK)
    two = estimate_activation_bytes(RELEASED.hidden_size, RELEASED.patch_size, (2, *latent[1:]), DEFAULT_TOKEN_CHUNK)
    unchunked = estimate_activation_bytes(RELEASED.hidden_size, RELEASED.patch_size, latent, 0)
    assert two == 2 * one and unchunked > one
