"""FP8Linear in every compute mode, the hardware gate, and model conversion (apply.py), against float64 references."""

import logging

import pytest
import torch
from torch import nn

from hyvideo_fp8.fp8 import kernel_plan
from hyvideo_fp8.fp8.apply import QuantizationReport, compute_override, make_linear, quantization_report
from hyvideo_fp8.fp8.hardware import fp8_compute_support
from hyvideo_fp8.fp8.kernel_plan import Kernel, make_plan
from hyvideo_fp8.fp8.linear import ComputeMode, FP8Linear
from hyvideo_fp8.fp8.policy import PrecisionPolicy
from hyvideo_fp8.fp8.quantize import dequantize, quantize_rowwise, quantize_tensorwise, saturating_cast


def dequantized(layer: FP8Linear, dtype: torch.dtype) -> torch.Tensor:
    return dequantize(layer.weight, layer.weight_scale, dtype)


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def outlier_input(*shape: int, factor: float = 50.0) -> torch.Tensor:
    """Random activations whose last dim has 4 input channels scaled by ``factor`` (DiT-style outlier channels)."""
    x = torch.randn(*shape)
    x[..., torch.randperm(shape[-1])[:4]] *= factor
    return x


def layer_data(k: int = 256, n: int = 192, bias: bool = True):
    w = torch.randn(n, k) / k**0.5
    b = torch.randn(n) if bias else None
    return w, b


def reference(x, w, b):
    out = x.double() @ w.double().t()
    return out if b is None else out + b.double()


@pytest.mark.parametrize("mode, fmt, scaling, bound", [
    ("fp8", "e4m3fn", "per-token", 0.05),  # measured 0.031-0.033
    ("fp8", "e4m3fn", "per-tensor", 0.06),  # measured 0.037-0.039
    ("fp8-weight-only", "e4m3fn", "per-token", 0.04),  # measured 0.026-0.029 (weight rounding only)
    ("fp8", "e5m2", "per-token", 0.08),  # measured 0.055-0.056 (e4m3fn activations x e5m2 weights)
    ("fp8-weight-only", "e5m2", "per-token", 0.08),  # measured 0.052-0.054
])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_error_vs_float64(mode, fmt, scaling, bound, with_bias):
    w, b = layer_data(bias=with_bias)
    x = outlier_input(2, 37, 256)  # 3-D, odd token count
    layer = FP8Linear.from_float(w, b, mode, fp8_format=fmt, activation_scaling=scaling)
    out = layer(x)
    assert out.shape == (2, 37, 192) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    ref = reference(x, w, b)
    assert rel_l2(out, ref) <= bound
    token_err = (out.double() - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert token_err.max() <= 2 * bound  # every token written and accurate, not just on average


def test_per_token_scaling_protects_small_tokens():
    """Token magnitudes spanning 1e-4..1e2 (as around DiT attention sinks): one shared scale flushes small tokens."""
    w, _ = layer_data()
    x = torch.randn(40, 256) * torch.logspace(-4, 2, 40).unsqueeze(1)
    ref = reference(x, w, None)
    errs = {}
    for scaling in ("per-token", "per-tensor"):
        out = FP8Linear.from_float(w, None, "fp8", compute_dtype=torch.float32, activation_scaling=scaling)(x)
        errs[scaling] = ((out.double() - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    assert errs["per-token"] <= 0.06  # measured 0.042-0.045
    assert errs["per-tensor"] >= 0.5  # measured 1.0: the smallest tokens quantize to zero


@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_high_precision_modes_use_the_same_fp8_weights(mode, dtype):
    w, b = layer_data()
    layer = FP8Linear.from_float(w, b, mode)
    x = torch.randn(37, 256, dtype=torch.float16)  # any float input dtype
    out = layer(x)
    assert out.dtype == dtype
    exact = reference(x, dequantized(layer, torch.float32), b)  # the FP8 weight, dequantized, in float64
    assert rel_l2(out, exact) <= (0.006 if dtype == torch.bfloat16 else 1e-6)  # measured 0.003 / 1e-7


def test_unit_scale_cast_is_much_worse_than_scaled_on_small_weights():
    """Why weights get scales: ~1e-3 weights sit in e4m3fn's subnormal range (step 2^-9) when cast unscaled."""
    w = torch.randn(192, 256) * 1e-3
    x = torch.randn(37, 256)
    ref = reference(x, w, None)
    one = torch.ones(())
    unit = torch._scaled_mm(saturating_cast(x), saturating_cast(w).t(), scale_a=one, scale_b=one,
                            out_dtype=torch.float32)
    scaled = FP8Linear.from_float(w, None, "fp8", compute_dtype=torch.float32)(x)
    assert rel_l2(scaled, ref) <= 0.05  # measured 0.037
    assert rel_l2(unit, ref) >= 0.3  # measured 0.56


def test_saturation_and_zero_rows():
    w, b = layer_data()
    layer = FP8Linear.from_float(w, None, "fp8", compute_dtype=torch.float32)
    x = torch.randn(5, 256)
    x[0] *= 1e4  # far beyond 448 before scaling
    x[2] = 0.0
    out = layer(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(192))
    assert rel_l2(out[0], reference(x[0:1], w, None)[0]) <= 0.06  # measured 0.035-0.041
    w_big = w * 1e3  # weights beyond 448 quantize with a scale, nothing saturates to garbage
    out_big = FP8Linear.from_float(w_big, b, "fp8")(x[1:2])
    assert rel_l2(out_big, reference(x[1:2], w_big, b)) <= 0.05  # measured ~0.03


def test_odd_shapes_fall_back_and_report(caplog):
    w, b = layer_data(k=24, n=48)
    x = torch.randn(3, 24)
    with caplog.at_level(logging.WARNING, logger="hyvideo_fp8"):
        layer = FP8Linear.from_float(w, b, "fp8", name="blocks.0.odd")
    assert layer.fallback_reason is not None and "K=24" in layer.fallback_reason
    assert layer.mode is ComputeMode.FP8 and layer.effective_mode is ComputeMode.FP8_WEIGHT_ONLY
    assert any(r.getMessage().startswith("[hyvideo_fp8] blocks.0.odd falls back") for r in caplog.records)
    assert "fallback=weight-only" in repr(layer)
    out = layer(x)
    layer.mode = "fp8-weight-only"
    torch.testing.assert_close(out, layer(x), rtol=0, atol=0)
    assert rel_l2(out, reference(x, w, b)) <= 0.04  # measured 0.015-0.018


def test_unsupported_gpu_gets_a_clear_message_and_weight_only():
    ok, reason = fp8_compute_support("cuda", capability=(8, 6), device_name="NVIDIA RTX A6000")
    assert not ok
    assert "sm_86" in reason and "NVIDIA RTX A6000" in reason and "fp8-weight-only" in reason
    for capability, gemm in (((8, 0), Kernel.NONE), ((8, 9), Kernel.TORCH), ((9, 0), Kernel.TORCH)):
        plan = make_plan("cuda", capability=capability, device_name="GPU", triton_problem="")
        assert plan.gemm is gemm
    assert any("sm_80" in note and "fp8-weight-only" in note
               for note in make_plan("cuda", capability=(8, 0), device_name="GPU", triton_problem="").notes)
    assert fp8_compute_support("cpu")[0]
    ok, reason = fp8_compute_support("mps")
    assert not ok and "fp8-weight-only" in reason


def test_layers_on_a_gpu_without_fp8_fall_back_at_run_time(monkeypatch, caplog):
    """Simulated on the meta device: the kernel plan's GEMM check reports once per device, and every fp8 layer there
    computes weight-only."""
    reason = "this GPU (sm_86, NVIDIA RTX A6000) has no FP8 tensor cores: use the fp8-weight-only policy"
    monkeypatch.setattr(kernel_plan, "fp8_compute_support", lambda device: (False, reason))
    monkeypatch.setattr(kernel_plan, "_GEMM_KERNELS", {})
    layers = [FP8Linear.from_float(*layer_data(k=64, n=48), "fp8").to("meta") for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="hyvideo_fp8"):
        for layer in layers:
            out = layer(torch.empty(5, 64, device="meta"))
            assert out.shape == (5, 48) and not layer.accepts_quantized
            assert layer.effective_mode is ComputeMode.FP8_WEIGHT_ONLY
    assert [r.getMessage() for r in caplog.records] == [f"[hyvideo_fp8] {reason}; FP8 layers compute weight-only"]


@pytest.mark.parametrize("scale_shape", [(), (1,), (48,), (48, 1)])
def test_from_quantized_accepts_scale_layouts(scale_shape):
    w, b = layer_data(k=64, n=48)
    if scale_shape in ((), (1,)):
        q, s = quantize_tensorwise(w)
    else:
        q, s = quantize_rowwise(w)
    layer = FP8Linear.from_quantized(q, s.reshape(scale_shape), b, "fp8-weight-only", compute_dtype=torch.float32)
    assert layer.weight_scale.shape == (48,) and layer.weight_scale.dtype == torch.float32
    assert not layer.weight.requires_grad
    exact = q.float() * s.reshape(-1, 1)  # a per-tensor scale expands exactly
    assert torch.equal(dequantized(layer, torch.float32), exact)


def test_constructor_errors():
    w, b = layer_data(k=64, n=48)
    q, s = quantize_rowwise(w)
    with pytest.raises(ValueError, match=r"weight_scale must have shape \[\], \[1\], \[48\]"):
        FP8Linear.from_quantized(q, s[:5], b, "fp8")
    with pytest.raises(ValueError, match="from_float"):
        FP8Linear.from_quantized(w, s, b, "fp8")
    with pytest.raises(ValueError, match="from_quantized"):
        FP8Linear.from_float(q, b, "fp8")
    with pytest.raises(ValueError, match="unknown compute mode 'int8'"):
        FP8Linear.from_float(w, b, "int8")
    with pytest.raises(ValueError, match="activation_scaling"):
        FP8Linear.from_float(w, b, "fp8", activation_scaling="per-block")
    with pytest.raises(ValueError, match="bias"):
        FP8Linear.from_quantized(q, s, torch.randn(7), "fp8")
    layer = FP8Linear.from_quantized(q, s, b, "fp8")
    with pytest.raises(ValueError, match="expects 64 input features"):
        layer(torch.randn(4, 32))


def test_to_moves_tensors_but_never_casts_fp8_storage():
    w, b = layer_data(k=64, n=48)
    layer = FP8Linear.from_float(w, b, "fp8")
    layer.to(torch.float16)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert layer.bias.dtype == torch.float16
    layer.to("meta")
    assert {t.device.type for t in (layer.weight, layer.weight_scale, layer.bias)} == {"meta"}
    assert layer.weight.dtype == torch.float8_e4m3fn


def test_state_dict_round_trip_and_canonical_layouts():
    w, b = layer_data(k=64, n=48)
    src = FP8Linear.from_float(w, b, "fp8")
    x = torch.randn(9, 64)
    dst = FP8Linear(64, 48, bias=True, mode="fp8")
    dst.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    q, s = quantize_tensorwise(w)  # per-tensor scale [] as written by other tools
    dst.load_state_dict({"weight": q, "weight_scale": s, "bias": b})
    assert torch.equal(dst.weight_scale, s.expand(48))
    dst.load_state_dict({"weight": w, "bias": b})  # high-precision weight: quantized on load
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    e5 = FP8Linear.from_float(w, b, "fp8", fp8_format="e5m2")
    with pytest.raises(RuntimeError, match="float8_e5m2.*fp8_format='e5m2'"):
        dst.load_state_dict(e5.state_dict())


# --- apply.py -------------------------------------------------------------------------------------------------------


class TinyBlock(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.odd = nn.Linear(d, 24)  # K/N not multiples of 16: must fall back
        self.back = nn.Linear(24, d)

    def forward(self, x):
        h = self.norm(x)
        return self.fc2(nn.functional.gelu(self.fc1(h))) + self.back(self.odd(h))  # no residual: errors show


def tiny_model() -> nn.ModuleDict:
    return nn.ModuleDict({"blocks": nn.Sequential(TinyBlock(), TinyBlock()), "head": nn.Linear(64, 16)}).double()


def run(model: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    return model["head"](model["blocks"](x))


def quantize(model: nn.Module, policy: PrecisionPolicy) -> QuantizationReport:
    """Every nn.Linear of ``model`` rebuilt by ``make_linear`` (what the loader does layer by layer), then reported."""
    for name, layer in [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make_linear(name, layer.weight, layer.bias, policy))
    return quantization_report(model)


def test_policy_built_layers_reproduce_float_output_and_are_reported():
    model = tiny_model()
    x = outlier_input(2, 37, 64).double()
    with torch.no_grad():
        ref = run(model, x)
    policy = PrecisionPolicy(rules=(("blocks.*", "fp8"),), default_mode="fp32", compute_dtype="fp32")
    report = quantize(model, policy)
    assert isinstance(model["blocks"][0].fc1, FP8Linear)
    assert type(model["head"]) is nn.Linear and model["head"].weight.dtype == torch.float32
    assert report.counts == {"fp8": 4, "fp8-weight-only": 4, "fp32": 1}
    assert [name for name, _ in report.fallbacks] == ["blocks.0.odd", "blocks.0.back", "blocks.1.odd", "blocks.1.back"]
    assert "fell back" in report.summary()
    model["blocks"].float()  # norms in fp32 like the policy says; FP8 storage survives the cast
    assert model["blocks"][1].fc2.weight.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        out = run(model, x.float())
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= 0.1  # measured 0.040-0.063 (30 draws): four chained FP8 GEMMs, no residual


def test_make_linear_follows_policy_and_checkpoint_format():
    w, b = layer_data(k=64, n=48)
    q, s = quantize_rowwise(w)
    policy = PrecisionPolicy(rules=(("a.*", "fp8"), ("b.*", "fp8-weight-only")), default_mode="bf16")
    fp8 = make_linear("a.x", q, b, policy, weight_scale=s.reshape(48))
    assert isinstance(fp8, FP8Linear) and fp8.mode is ComputeMode.FP8
    assert torch.equal(fp8.weight.view(torch.uint8), q.view(torch.uint8))  # kept as is, not re-quantized
    hp = make_linear("c.x", q, b, policy, weight_scale=s.reshape(48))  # FP8 checkpoint, bf16 layer: dequantized
    assert type(hp) is nn.Linear and hp.weight.dtype == torch.bfloat16 and not hp.weight.requires_grad
    torch.testing.assert_close(hp.weight, dequantized(fp8, torch.bfloat16))
    q5, s5 = quantize_rowwise(w, "e5m2")  # other format than the policy's: re-quantized to e4m3fn
    re = make_linear("b.x", q5, b, policy, weight_scale=s5)
    assert re.weight.dtype == torch.float8_e4m3fn and re.mode is ComputeMode.FP8_WEIGHT_ONLY
    assert rel_l2(dequantized(re, torch.float32), w) <= 0.07  # measured 0.048-0.050 (e5m2, then e4m3fn)
    unscaled = make_linear("a.y", saturating_cast(w), None, policy)  # unscaled FP8 file: scale 1
    assert torch.equal(unscaled.weight_scale, torch.ones(48))
    with pytest.raises(ValueError, match="weight_scale was given but the weight is torch.float32"):
        make_linear("a.z", w, b, policy, weight_scale=s)


def test_fast_accumulation_follows_the_policy_into_every_fp8_gemm(monkeypatch):
    """``fast_accum_max_k`` picks the layers by K; the flag reaches ``_scaled_mm`` in forward and forward_quantized."""
    policy = PrecisionPolicy(rules=(("*", "fp8"),), default_mode="bf16", fast_accum_max_k=64)
    w, b = layer_data(k=64, n=48)
    short = make_linear("a.short", w, b, policy)
    long = make_linear("a.long", *layer_data(k=80, n=48), policy)
    assert short.fast_accum and not long.fast_accum and "fast_accum=True" in repr(short)
    seen = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **kw: seen.append(kw.get("use_fast_accum")) or real(*a, **kw))
    x = outlier_input(5, 64)
    out = short(x)
    short.forward_quantized(*quantize_rowwise(x))
    long(outlier_input(5, 80))
    assert [f for f in seen if f is not None] == [True, True, False]  # None: the one-off row-wise support probe
    # The CPU kernel accumulates in fp32 either way (GPU figures: bench_linear.py); the W8A8 bound of the main test.
    assert rel_l2(out, reference(x, w, b)) <= 0.05 and not out.isnan().any()


def test_compute_override_restores_modes_even_on_error():
    model = tiny_model().float()
    quantize(model, PrecisionPolicy(rules=(("blocks.0.*", "fp8"), ("*", "fp8-weight-only"))))
    before = {n: m.mode for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert set(before.values()) == {ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY}
    with compute_override(model, "bf16"):
        assert {m.mode for m in model.modules() if isinstance(m, FP8Linear)} == {ComputeMode.BF16}
    assert {n: m.mode for n, m in model.named_modules() if isinstance(m, FP8Linear)} == before
    with pytest.raises(RuntimeError, match="boom"), compute_override(model, "fp32"):
        raise RuntimeError("boom")
    assert {n: m.mode for n, m in model.named_modules() if isinstance(m, FP8Linear)} == before
    with pytest.raises(ValueError, match="unknown compute mode"), compute_override(model, "fp16"):
        pass


def test_weight_patch_hooks_merge_a_lora_into_the_real_weight_and_restore_exactly():
    """ComfyUI's ModelPatcher upcasts the FP8 codes, calls convert_weight, adds the patch, then set_weight."""
    w = torch.randn(48, 64) * 0.02
    w[3] *= 30  # an outlier channel with its own scale
    layer = FP8Linear.from_float(w, torch.randn(48) * 0.01, "fp8", compute_dtype=torch.float32)
    codes = layer.weight.detach().clone()
    real = layer.convert_weight(layer.weight.float(), inplace=True)
    # the real weight, not the codes: e4m3 rounds every normal value to within 2**-4 of itself, so no draw can pass
    # 1/16 (measured 0.018-0.031 over 300 draws; a fixed 0.03 failed about one draw in 60)
    assert ((real - w).norm() / w.norm()).item() < 2**-4
    delta = (torch.randn(48, 4) @ torch.randn(4, 64)) * 1e-3  # a rank-4 LoRA
    layer.set_weight(real + delta)
    merged = dequantized(layer, torch.float32)
    assert ((merged - (w + delta)).norm() / (w + delta).norm()).item() < 2**-4  # as above
    assert torch.isfinite(merged).all()
    layer.set_weight(layer.convert_weight(codes.float()), inplace_update=True)  # unpatch from the FP8 backup
    assert torch.equal(layer.weight.view(torch.uint8), codes.view(torch.uint8))
    assert layer.set_weight(real, return_weight=True).dtype == layer.weight.dtype
