"""The kernel plan (fp8/kernel_plan.py): one decision per part, per device and model, for GPUs and installs this
machine does not have (capability, device name and the Triton check are stand-ins), and the plan a model keeps."""

from __future__ import annotations

import logging

import pytest
import torch

from hyvideo_fp8.fp8 import kernel_plan
from hyvideo_fp8.fp8.kernel_plan import PARTS, Kernel, KernelPlan, log_plan, make_plan, record_gluon_failure

K = Kernel
OK = ""  # the Triton check passed


def gpu(capability, dtype=torch.bfloat16, triton_problem=OK, **shapes) -> KernelPlan:
    return make_plan("cuda", dtype, capability=capability, device_name="GPU", triton_problem=triton_problem,
                     fused=True, **shapes)


def parts(plan: KernelPlan) -> tuple[Kernel, ...]:
    return tuple(getattr(plan, name) for name in PARTS)


def gluon_importable() -> bool:
    from hyvideo_fp8.fp8.attention.gluon_kernel import gluon_supported

    return gluon_supported((9, 0), 128)[0]


def test_hopper_runs_every_part_on_its_kernels():
    attention = K.GLUON if gluon_importable() else K.TRITON
    plan = gpu((9, 0), heads=24, head_dim=128, row_channels=3072 + 12288)
    # gemm, producers, prologue, quant_prologue, attention, attention_quantizers
    assert parts(plan) == (K.TORCH, K.TRITON, K.TRITON, K.TRITON, attention, K.TRITON)
    assert not plan.warn


def test_ada_in_fp32_quantizes_attention_inputs_in_torch():
    """fp32 Q/K/V at head dim 128 need more shared memory than Ada's 99 KB per block; the 16-bit-only quantizing
    prologue is not used, so the attention quantizes its own queries."""
    plan = gpu((8, 9), torch.float32)
    assert parts(plan) == (K.TORCH, K.TRITON, K.TRITON, K.NONE, K.TRITON, K.TORCH)
    assert plan.warn and any("do not fit the Triton attention quantizers" in n for n in plan.notes)
    assert parts(gpu((8, 9)))[3:] == (K.TRITON, K.TRITON, K.TRITON)  # bf16 fits


def test_gpu_without_fp8_tensor_cores_is_said_loudly():
    plan = gpu((8, 6))
    assert (plan.gemm, plan.producers, plan.attention, plan.quant_prologue) == (K.NONE, K.NONE, K.EMULATED, K.NONE)
    assert plan.warn
    text = " ".join(plan.notes)
    assert "sm_86" in text and "fp8-weight-only" in text and "attention 'sdpa'" in text


def test_missing_or_old_triton_sends_a_gpu_to_the_references_with_a_warning():
    problem = "Triton 3.0 cannot build the pack's kernels (ImportError()): install the Triton that matches torch"
    plan = gpu((9, 0), triton_problem=problem)
    assert parts(plan) == (K.TORCH, K.TORCH, K.TORCH, K.NONE, K.EMULATED, K.TORCH)
    assert plan.warn and any(problem in n and "very slow" in n for n in plan.notes)


def test_shapes_the_kernels_do_not_take():
    plan = gpu((9, 0), heads=2, head_dim=32)  # the tiny test model's heads
    assert plan.attention is K.EMULATED and any("head dim 32" in n for n in plan.notes)
    assert gpu((9, 0), heads=256, head_dim=128).prologue is K.TORCH  # 256 heads x 128 exceed one register tile
    assert gpu((9, 0), row_channels=40000).producers is K.TORCH


def test_fused_switch_forces_the_references():
    plan = make_plan("cuda", capability=(9, 0), device_name="GPU", triton_problem=OK, fused=False)
    assert (plan.producers, plan.prologue, plan.quant_prologue) == (K.TORCH, K.TORCH, K.TORCH)
    assert any("HYVIDEO_FP8_FUSED=0" in n for n in plan.notes)


def test_cpu_plan_emulates_quietly():
    plan = make_plan("cpu")
    assert parts(plan) == (K.EMULATED, K.TORCH, K.TORCH, K.NONE, K.EMULATED, K.TORCH)
    assert not plan.warn and plan.device == "cpu"


def test_gluon_failure_moves_hopper_to_the_triton_kernel(monkeypatch, caplog):
    if not gluon_importable():
        pytest.skip("Triton's Gluon Hopper dialect is not importable here")
    monkeypatch.setattr(kernel_plan, "_GLUON_FAILED", set())
    with caplog.at_level(logging.WARNING, logger="hyvideo_fp8"):
        record_gluon_failure((9, 0), RuntimeError("ptxas rejected it"))
    assert "Gluon Hopper kernel failed" in caplog.text and "ptxas rejected it" in caplog.text
    plan = gpu((9, 0))
    assert plan.attention is K.TRITON and any("failed to compile" in n for n in plan.notes)


def test_one_line_log_and_loud_warnings(caplog):
    with caplog.at_level(logging.INFO, logger="hyvideo_fp8"):
        log_plan(gpu((9, 0), triton_problem=OK, heads=24, head_dim=128))
        log_plan(gpu((8, 6)))
        log_plan(gpu((8, 6)), warn=False)  # a policy without FP8 compute: nothing to warn about
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    infos = [m for level, m in lines if level == logging.INFO]
    assert len(infos) == 3 and all(m.startswith("[hyvideo_fp8] kernel plan on cuda (GPU, sm_") for m in infos)
    assert infos[0].endswith("gemm=torch producers=triton prologue=triton quant_prologue=triton attention="
                             + ("gluon" if gluon_importable() else "triton") + " attention_quantizers=triton")
    warnings = [m for level, m in lines if level == logging.WARNING]
    assert len(warnings) == len(gpu((8, 6)).notes) and all("sm_86" in m for m in warnings)


def test_the_model_keeps_one_plan_per_device_and_dtype(caplog):
    from hyvideo_fp8.hunyuan.config import tiny_config
    from hyvideo_fp8.hunyuan.loader import build_random
    from hyvideo_fp8.hunyuan.plan import kernel_plan as model_plan
    from hyvideo_fp8.hunyuan.policies import get_preset

    cfg = tiny_config(depth=1, depth_single_blocks=1)
    model = build_random(cfg, get_preset("fp8-max").with_overrides(compute_dtype="fp32"))
    g = torch.Generator().manual_seed(0)
    inputs = dict(x=torch.randn(1, cfg.in_channels, 1, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                  context=torch.randn(1, 3, cfg.context_in_dim, generator=g),
                  y=torch.randn(1, cfg.vec_in_dim, generator=g), guidance=torch.tensor([6.0]))
    with caplog.at_level(logging.INFO, logger="hyvideo_fp8"), torch.inference_mode():
        model(**inputs)
        model(**inputs)
    assert list(model.kernel_plans) == [(torch.device("cpu"), torch.float32)]
    assert [r.getMessage() for r in caplog.records].count(model.kernel_plans[torch.device("cpu"), torch.float32]
                                                          .summary()) == 1
    assert model_plan(model, torch.device("cpu"), torch.float32) is model.kernel_plans[torch.device("cpu"),
                                                                                       torch.float32]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an sm_89+ GPU (FP8 tensor cores)")
def test_on_this_gpu_every_part_runs_a_kernel_and_is_as_accurate_as_the_cpu_emulation(caplog):
    """On a real Ada/Hopper GPU with Triton, a model with HunyuanVideo's head dim plans a GPU kernel for every part
    and warns about nothing; its fp8-max output is at most twice as far from float64 as the CPU's emulation of the
    same arithmetic (plus a small floor for bf16 rounding order)."""
    from hyvideo_fp8.fp8.kernel_plan import FAST
    from hyvideo_fp8.hunyuan.config import tiny_config
    from hyvideo_fp8.hunyuan.loader import load_transformer, random_state_dict
    from hyvideo_fp8.hunyuan.policies import get_preset
    from tests.tiny_model import rel

    cfg = tiny_config(hidden_size=256, num_heads=2, axes_dim=(16, 56, 56), depth=1, depth_single_blocks=1)
    sd = random_state_dict(cfg, seed=1)
    with caplog.at_level(logging.INFO, logger="hyvideo_fp8"):
        gpu = load_transformer(dict(sd), get_preset("fp8-max"), device="cuda")
    (plan,) = gpu.kernel_plans.values()
    assert (plan.gemm, plan.producers, plan.prologue, plan.quant_prologue) == (K.TORCH, K.TRITON, K.TRITON, K.TRITON)
    assert plan.attention in FAST and plan.attention_quantizers is K.TRITON and not plan.warn
    assert plan.summary() in caplog.text
    g = torch.Generator().manual_seed(3)
    inputs = dict(x=torch.randn(1, cfg.in_channels, 2, 16, 16, generator=g), timestep=torch.tensor([500.0]),
                  context=torch.randn(1, 20, cfg.context_in_dim, generator=g),
                  y=torch.randn(1, cfg.vec_in_dim, generator=g), guidance=torch.tensor([6.0]))
    with torch.inference_mode():
        ref = load_transformer(dict(sd), None, dtype=torch.float64)(**{k: v.double() for k, v in inputs.items()})
        cpu = load_transformer(dict(sd), get_preset("fp8-max"))(**{k: v.bfloat16() if k in ("x", "context", "y")
                                                                      else v for k, v in inputs.items()})
        out = gpu(**{k: (v.bfloat16() if k in ("x", "context", "y") else v).cuda() for k, v in inputs.items()})
    assert torch.isfinite(out).all()
    assert rel(out.cpu(), ref) <= 2 * rel(cpu, ref) + 1e-2
