"""Ray is optional: without it the multi-GPU model says how to install it, and nothing else needs it."""

from __future__ import annotations

import sys

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import build_random
from hyvideo_fp8.hunyuan.parallel import ParallelTransformer, RayMissingError, check_world_size, require_ray


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives: ImportError


def test_missing_ray_names_the_install_command(no_ray):
    with pytest.raises(RayMissingError, match=r"pip install 'ray>=2\.9'"):
        require_ray()


def test_missing_ray_stops_the_multi_gpu_model_before_anything_runs(no_ray):
    model = build_random(tiny_config(), seed=0)
    parallel = ParallelTransformer(model, 2, device="cpu")  # the stand-in is built: Ray is needed to start
    with pytest.raises(RayMissingError, match="Single-GPU use needs nothing more"):
        parallel.start()
    assert not parallel.workers.running
    with pytest.raises(RayMissingError):
        parallel(torch.zeros(1, 16, 1, 4, 4), torch.zeros(1), torch.zeros(1, 3, 32), torch.zeros(1, 24))


@pytest.mark.parametrize("heads, gpus, counts", [(24, 25, "2, 3, 4, 6, 8, 12, 24"), (16, 17, "2, 4, 8, 16")])
def test_more_gpus_than_heads_names_the_counts_that_work(heads, gpus, counts):
    with pytest.raises(ValueError, match=f"use 1 to {heads} GPUs; counts that divide {heads} \\({counts}\\)"):
        check_world_size(gpus, heads)
    check_world_size(5, heads)  # uneven head groups are allowed


def test_the_stand_in_holds_no_weights():
    model = build_random(tiny_config(), seed=0)
    parallel = ParallelTransformer(model, 2, device="cpu")
    assert sum(p.numel() for p in parallel.parameters()) == 16 * 16  # the precision probe only
    assert parallel.dtype == model.dtype and parallel.config is model.config
    with pytest.raises(ValueError, match="already runs on several GPUs"):
        ParallelTransformer(parallel, 2, device="cpu")
