"""Sequence parallelism on the CPU: gloo ranks in Ray actors against the single-process model, and the all-to-all
layout on its own. Skipped without Ray (``pip install ray``)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (the multi-GPU extra: pip install 'ray>=2.9')")

from hyvideo_fp8.hunyuan.config import tiny_config, tiny_variant_config  # noqa: E402
from hyvideo_fp8.hunyuan.loader import load_transformer  # noqa: E402
from hyvideo_fp8.hunyuan.parallel import ParallelTransformer, WorkerError  # noqa: E402
from hyvideo_fp8.hunyuan.parallel.layout import split_sizes  # noqa: E402
from hyvideo_fp8.hunyuan.policies import get_preset  # noqa: E402
from hyvideo_fp8.hunyuan.sampler import default_high_precision  # noqa: E402
from tests.tiny_model import FAMILY_NORMS, family_inputs, rel, strong_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# 4 heads of 32 (FP8 attention takes head dims from 32): 2 + 2 on two ranks, 2 + 1 + 1 on three
CFG = tiny_config(hidden_size=128, num_heads=4, axes_dim=(8, 12, 12))
# The ranks compute the same float32 operations as one process, but over other token counts per GEMM and in
# other buffers: the outputs differ by float32 rounding only, a few float32 epsilons (1.2e-7) of the output's norm.
FP32_BOUND = 2e-6
# In bf16 compute the CPU's bf16 GEMMs over other token counts round differently: one bf16 unit roundoff (2**-8).
BF16_BOUND = 4e-3


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # the layout tasks import this module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sd():
    return strong_state_dict(seed=3, cfg=CFG)


@pytest.fixture(scope="module")
def single(sd):
    return load_transformer(dict(sd), None, dtype=torch.float32)


def inputs(batch=1, frames=1, height=6, width=10, n_txt=7, pad=None, seed=0):
    """15 image tokens at the default size (a 1x3x5 patch grid): 8 + 7 on two ranks, 5 each on three. ``pad``:
    padded text tokens per sample (0/1 mask)."""
    g = torch.Generator().manual_seed(seed)
    out = dict(x=torch.randn(batch, CFG.in_channels, frames, height, width, generator=g),
               timestep=torch.rand(batch, generator=g) * 1000,
               context=torch.randn(batch, n_txt, CFG.context_in_dim, generator=g),
               y=torch.randn(batch, CFG.vec_in_dim, generator=g), guidance=torch.full((batch,), 6.0))
    if pad is not None:
        mask = torch.ones(batch, n_txt, dtype=torch.long)
        for i, p in enumerate(pad):
            if p:
                mask[i, -p:] = 0
        out["attention_mask"] = mask
    return out


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def parallel(request, single):
    model = ParallelTransformer(single, request.param, device="cpu", grace_s=5.0, timeout_s=60.0)
    model.start()
    yield model
    model.shutdown()


CASES = {"no-padding": dict(), "padding-dropped": dict(pad=[3]),
         "padding-masked": dict(batch=2, pad=[3, 0]), "uneven-frames": dict(frames=3, height=4, width=6, pad=[1])}


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_equal_the_single_process_model(parallel, single, case):
    args = inputs(**CASES[case])
    with torch.no_grad():
        want = single(**args)
    got = parallel(**args)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel(got, want) < FP32_BOUND, rel(got, want)


def test_fp8_i2v_model_token_replace_and_hybrid_steps_on_three_ranks():
    """An FP8 image-to-video model (its weights FP8 with their scales, as they travel to the ranks) with token
    replace, in bf16 compute. FP8 attention (its CPU emulation) sees the full sequence of its heads, so its per-block
    key scales are the single process's. The hybrid schedule's high-precision context reaches the ranks."""
    cfg = tiny_variant_config("v1-i2v", hidden_size=128, num_heads=4, axes_dim=(8, 12, 12))
    one = load_transformer(strong_state_dict(7, cfg, FAMILY_NORMS), get_preset("fp8-max"))
    model = ParallelTransformer(one, 3, device="cpu", grace_s=5.0, timeout_s=60.0)
    # 4 x 2 x 3 image tokens, 8 a rank: the guiding frame's 6 are rank 0's first ones
    args = family_inputs(cfg, frames=4, height=4, width=6, batch=2, pad=[2, 0])
    # 2 x 3 x 3 image tokens, 6 a rank: the guiding frame's 9 are all of rank 0's and the first 3 of rank 1's
    split = family_inputs(cfg, frames=2, height=6, width=6, pad=[1])
    try:
        with torch.no_grad():
            want, got = one(**args), model(**args)
            assert rel(got, want) < BF16_BOUND, rel(got, want)
            plain = {k: v for k, v in args.items() if k != "guiding_frame_index"}
            assert rel(model(**plain), got) > 10 * BF16_BOUND  # token replace did change the output
            with default_high_precision(one):
                want_hp, want_split = one(**args), one(**split)
            with default_high_precision(model):
                got_hp, got_split = model(**args), model(**split)
            assert rel(got_hp, want_hp) < BF16_BOUND, rel(got_hp, want_hp)
            assert rel(got_split, want_split) < BF16_BOUND, rel(got_split, want_split)
            assert rel(got_hp, got) > 5 * BF16_BOUND  # the high-precision step did run differently
            assert rel(model(**args), want) < BF16_BOUND  # and the override ended with the context
    finally:
        model.shutdown()


def test_hunyuanvideo_15_and_a_dead_rank_on_two_ranks():
    """1.5 (patch 1x1x1, byT5 and vision tokens after the text, the step-distilled time_r from the sampler's sigmas)
    with and without text padding. A rank that dies is a clear error, and the next call starts the ranks again."""
    cfg = tiny_variant_config("1.5", meanflow=True, hidden_size=128, num_heads=4, axes_dim=(8, 12, 12))
    one = load_transformer(strong_state_dict(8, cfg, FAMILY_NORMS), None, dtype=torch.float32)
    model = ParallelTransformer(one, 2, device="cpu", grace_s=5.0, timeout_s=60.0)
    try:
        for case in (dict(), dict(pad=[3]), dict(batch=2, pad=[3, 0])):
            args = family_inputs(cfg, frames=2, height=4, width=6, **case)  # 48 image tokens
            with torch.no_grad():
                want = one(**args)
            got = model(**args)
            assert rel(got, want) < FP32_BOUND, (case, rel(got, want))
        args = family_inputs(cfg, frames=2, height=4, width=6)
        args["transformer_options"] = {"sigmas": torch.tensor([0.7]), "sample_sigmas": torch.tensor([1.0, 0.7, 0.0])}
        assert rel(model(**args), got) > 100 * FP32_BOUND  # the sigmas reach the ranks: another time_r target
        ray.kill(model.workers.actors[-1])
        with pytest.raises(WorkerError, match="died"):
            model(**args)
        assert not model.workers.running
        with torch.no_grad():
            assert rel(model(**args), one(**args)) < FP32_BOUND
    finally:
        model.shutdown()


def test_bad_input_raises_the_model_error_and_the_group_stays_up(parallel, single):
    args = inputs()
    args["context"] = args["context"][:, :, :5]
    with pytest.raises(ValueError, match="context must be"):
        parallel(**args)
    good = inputs()
    with torch.no_grad():
        assert rel(parallel(**good), single(**good)) < FP32_BOUND


def test_more_gpus_than_patches_is_refused_by_every_rank(parallel):
    args = inputs(height=2, width=2)  # one image patch
    with pytest.raises(ValueError, match="fewer than the"):
        parallel(**args)


def test_interrupt_stops_waiting_and_the_next_call_is_right(parallel, single):
    class Interrupted(Exception):
        pass

    def interrupt() -> None:
        raise Interrupted()

    args = inputs(frames=9, pad=[2])
    parallel.interrupt_check = interrupt
    try:
        with pytest.raises(Interrupted):
            parallel(**args)
    finally:
        parallel.interrupt_check = None
    with torch.no_grad():
        assert rel(parallel(**args), single(**args)) < FP32_BOUND


def test_gpu_counts_beyond_the_heads_are_refused(single):
    with pytest.raises(ValueError, match="use 1 to 4 GPUs; counts that divide 4 \\(2, 4\\)"):
        ParallelTransformer(single, 5, device="cpu")


def test_a_missing_cluster_gpu_is_a_clear_error(single):
    model = ParallelTransformer(single, 2, device="cuda")  # the test's Ray has no GPUs
    with pytest.raises(WorkerError, match="2 GPUs asked for, but the Ray cluster has 0"):
        model.start()


# --- the all-to-all on its own ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(n_tokens: int, heads: int, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every value names its place: q/k/v slot, batch, head, token, channel."""
    qkv = torch.arange(3 * 2 * heads * n_tokens * 4, dtype=torch.float64).view(3, 2, heads, n_tokens, 4)
    out = -torch.arange(2 * (n_tokens + extra) * heads * 4, dtype=torch.float64).view(2, n_tokens + extra, heads, 4)
    return qkv, out


LAYOUTS = [(6, 4), (7, 5)]  # (image tokens, heads) on two ranks: even runs, then uneven runs of both


@ray.remote(num_cpus=1)
def _layout_rank(rank: int, world: int, port: int, extra: int):
    """One gloo rank (a Ray task; it travels by value, so it imports the pack itself)."""
    import torch.distributed as dist

    from pack_path import load_pack

    load_pack()
    from hyvideo_fp8.hunyuan.parallel.layout import heads_to_tokens, split_sizes, tokens_to_heads

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = []
    try:
        for n_tokens, heads in LAYOUTS:
            tokens, head_sizes = split_sizes(n_tokens, world), split_sizes(heads, world)
            t0, h0 = sum(tokens[:rank]), sum(head_sizes[:rank])
            qkv, out = _reference(n_tokens, heads, extra)
            results.append((tokens_to_heads(qkv[:, :, :, t0:t0 + tokens[rank]], tokens, head_sizes, rank),
                            heads_to_tokens(out[:, :, h0:h0 + head_sizes[rank]], tokens, head_sizes, rank, extra)))
    finally:
        dist.destroy_process_group()
    return results


def test_all_to_all_layout():
    """tokens_to_heads gives each rank every token of its heads, heads_to_tokens each rank its tokens (and the
    tokens every rank holds) of every head, for even and uneven runs of tokens and heads."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tasks' workers cannot import tests/
    world, extra = 2, 2
    port = _free_port()
    per_rank = ray.get([_layout_rank.remote(r, world, port, extra) for r in range(world)], timeout=120)
    for i, (n_tokens, heads) in enumerate(LAYOUTS):
        qkv, out = _reference(n_tokens, heads, extra)
        tokens, head_sizes = split_sizes(n_tokens, world), split_sizes(heads, world)
        for rank in range(world):
            by_heads, by_tokens = per_rank[rank][i]
            t0, h0 = sum(tokens[:rank]), sum(head_sizes[:rank])
            assert torch.equal(by_heads, qkv[:, :, h0:h0 + head_sizes[rank]])
            rows = torch.cat((torch.arange(t0, t0 + tokens[rank]), torch.arange(n_tokens, n_tokens + extra)))
            assert torch.equal(by_tokens, out[:, rows])


def test_split_sizes():
    assert split_sizes(15, 2) == [8, 7]
    assert split_sizes(24, 5) == [5, 5, 5, 5, 4]
    assert split_sizes(16, 8) == [2] * 8
