"""On a CUDA GPU: HunyuanVideo 1.5's real widths (hidden 2048, 16 heads of 128, Qwen 3584-d text, the byT5 mapper
and the SigLIP projection) through the kernels the kernel plan picks there: the fused FP8 producers, the JointQKV
prologue and the FP8 attention, over 1.5's token layout [vision, byT5, text, image] with padded text. Four blocks,
so the FP8 middle blocks sit between the presets' high-precision first and last. Compared with the float64 model on
the same weights by relative L2 error. Skipped without CUDA (CI)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hyvideo_fp8.fp8.kernel_plan import Kernel
from hyvideo_fp8.fp8.linear import FP8Linear
from hyvideo_fp8.hunyuan.config import RELEASED_15
from hyvideo_fp8.hunyuan.loader import load_transformer, random_state_dict
from hyvideo_fp8.hunyuan.policies import get_preset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CFG = dataclasses.replace(RELEASED_15, depth=4)
BOUNDS = {"bf16": 0.02, "fp8-balanced": 0.05, "fp8-max": 0.1}  # the tiny family tests' FP8 bounds


def _weights(seed: int) -> dict[str, torch.Tensor]:
    """Random weights with 1 +- 0.2 norm weights and an outlier input channel in every block linear."""
    sd = random_state_dict(CFG, seed)
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith((".scale", "norm1.weight", "norm2.weight", "layernorm.weight")):
            sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        elif k.startswith("double_blocks.") and k.endswith(".weight") and v.dim() == 2:
            sd[k] = v.clone()
            sd[k][:, 7] *= 20
    return sd


def _inputs(device, dtype, vision: bool, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(2, CFG.in_channels, 3, 16, 24)
    x[:, :32] = torch.randn(2, 32, 3, 16, 24, generator=g)
    context = torch.randn(2, 40, CFG.context_in_dim, generator=g)
    context[:, :, 11] *= 30  # an outlier channel
    mask = torch.ones(2, 40)
    mask[1, 28:] = 0  # the second prompt is 12 tokens shorter
    r = dict(x=x, timestep=torch.tensor([700.0, 300.0]), context=context, attention_mask=mask,
             txt_byt5=torch.randn(2, 8, CFG.byt5_dims[0], generator=g))
    if vision:
        r["clip_fea"] = torch.randn(2, 16, CFG.vision_in_dim, generator=g)
    return {k: v.to(device=device, dtype=dtype) if k in ("x", "context", "txt_byt5", "clip_fea") else v.to(device)
            for k, v in r.items()}


@pytest.fixture(scope="module")
def weights():
    return _weights(seed=11)


@pytest.fixture(scope="module", params=[False, True], ids=["t2v", "i2v-vision"])
def reference(request, weights):
    model = load_transformer(dict(weights), None, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        out = model(**_inputs("cuda", torch.float64, request.param))
    del model
    torch.cuda.empty_cache()
    return request.param, out


@pytest.mark.parametrize("preset", list(BOUNDS))
def test_15_widths_on_the_planned_kernels(weights, reference, preset):
    vision, want = reference
    model = load_transformer(dict(weights), get_preset(preset), device="cuda")
    with torch.inference_mode():
        got = model(**_inputs("cuda", torch.bfloat16, vision))
    plan = next(iter(model.kernel_plans.values()))
    err = ((got.double() - want).norm() / want.norm()).item()
    print(f"\n{preset} vision={vision}: rel L2 {err:.4f} vs float64; {plan.summary()}")
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert err < BOUNDS[preset]
    if preset != "bf16":
        assert any(isinstance(m, FP8Linear) for m in model.double_blocks[1].modules())
        assert plan.producers == Kernel.TRITON and plan.prologue == Kernel.TRITON
        if torch.cuda.get_device_capability() >= (9, 0):
            assert plan.attention in (Kernel.GLUON, Kernel.TRITON)
