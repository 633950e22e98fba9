"""The fused FP8 producers wired into the HunyuanVideo blocks: FP8Linear.forward_quantized, which layers take FP8
input under each policy, fused vs eager outputs, and torch.compile of the blocks (CPU: the producers' torch path)."""

from __future__ import annotations

import shutil

import pytest
import torch

from hyvideo_fp8.fp8.apply import compute_override
from hyvideo_fp8.fp8.linear import FP8Linear
from hyvideo_fp8.fp8.quantize import dequantize, quantize_rowwise
from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import load_transformer, random_state_dict
from hyvideo_fp8.hunyuan.policies import get_preset
from tests.tiny_model import CFG, rel

PRODUCER_FED = ("attn.qkv", "mlp.0", "mlp.2", "linear1", "linear2")  # the layers the fused producers feed


def make_inputs(dtype: torch.dtype, b: int = 2, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, CFG.in_channels, 2, 6, 8, generator=g, dtype=torch.float64)
    ctx = torch.randn(b, 5, CFG.context_in_dim, generator=g, dtype=torch.float64)
    y = torch.randn(b, CFG.vec_in_dim, generator=g, dtype=torch.float64)
    return dict(x=x.to(dtype), timestep=torch.rand(b, generator=g) * 1000, context=ctx.to(dtype), y=y.to(dtype),
                guidance=torch.full((b,), 6.0))


@pytest.fixture(scope="module")
def ref64(sd):
    with torch.no_grad():
        return load_transformer(dict(sd), None, dtype=torch.float64)(**make_inputs(torch.float64))


def run(model, inputs, fused: bool) -> torch.Tensor:
    model.fused_producers = fused
    with torch.inference_mode():
        return model(**inputs)


@pytest.fixture()
def calls(monkeypatch):
    """Names of the FP8Linear layers that ran ``forward_quantized`` / ``forward`` during the test."""
    seen = {"quantized": [], "plain": []}
    forward_quantized, forward = FP8Linear.forward_quantized, FP8Linear.forward

    def record_quantized(self, *a, **kw):
        seen["quantized"].append(self.name)
        return forward_quantized(self, *a, **kw)

    def record_plain(self, *a, **kw):
        seen["plain"].append(self.name)
        return forward(self, *a, **kw)

    monkeypatch.setattr(FP8Linear, "forward_quantized", record_quantized)
    monkeypatch.setattr(FP8Linear, "forward", record_plain)
    return seen


# --- FP8Linear.forward_quantized / accepts_quantized -------------------------------------------------------------

def _layer(mode="fp8", k=64, n=48, scaling="per-token") -> FP8Linear:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.1
    return FP8Linear.from_float(w, torch.randn(n, generator=g), mode, activation_scaling=scaling, name="probe")


def _activation(k=64) -> torch.Tensor:
    x = torch.randn(2, 5, k, generator=torch.Generator().manual_seed(1))
    x[..., 3] *= 40  # an outlier channel: per-token scales must still hold the rest
    return x.to(torch.bfloat16)


def test_forward_quantized_equals_forward_on_the_same_quantized_input():
    layer, x = _layer(), _activation()
    x_q, x_scale = quantize_rowwise(x, torch.float8_e4m3fn)
    out = layer.forward_quantized(x_q, x_scale)
    assert out.shape == (2, 5, 48) and out.dtype == torch.bfloat16
    assert torch.equal(out, layer(x))  # FP8Linear's own fp8 path quantizes exactly like this
    rows = layer.forward_quantized(x_q, x_scale, rows=slice(16, 48))
    assert torch.equal(rows, layer(x, rows=slice(16, 48)))
    exact = x.double() @ dequantize(layer.weight, layer.weight_scale, torch.float64).T + layer.bias.double()
    out32 = layer.forward_quantized(x_q, x_scale, out_dtype=torch.float32)
    assert out32.dtype == torch.float32
    assert rel(out32, exact) < 0.02  # activation quantization only: measured 5.8e-03
    assert rel(out32[..., 16:48], rows) < 1e-2  # the row slice is the same GEMM (bf16 rounding: 1.6e-03)


@pytest.mark.parametrize("make,expected", [
    (lambda: _layer(), True),
    (lambda: _layer("fp8-weight-only"), False),
    (lambda: _layer("bf16"), False),
    (lambda: _layer("fp32"), False),
    (lambda: _layer(scaling="per-tensor"), False),  # the producers emit per-token scales
    (lambda: _layer(k=24), False),  # K not a multiple of 16: the layer computes weight-only
], ids=["fp8", "weight-only", "bf16", "fp32", "per-tensor", "misaligned"])
def test_accepts_quantized(make, expected):
    assert make().accepts_quantized is expected


def test_forward_quantized_rejects_bad_inputs():
    layer, x = _layer(), _activation()
    x_q, x_scale = quantize_rowwise(x, torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="x_q must be torch.float8_e4m3fn"):
        layer.forward_quantized(quantize_rowwise(x, torch.float8_e5m2)[0], x_scale)
    with pytest.raises(ValueError, match="expects 64 input features"):
        layer.forward_quantized(x_q[..., :32], x_scale)
    with pytest.raises(ValueError, match="one scale per token"):
        layer.forward_quantized(x_q, x_scale[:, :4])
    with pytest.raises(ValueError, match="one scale per token"):
        layer.forward_quantized(x_q, x_scale.double())
    with pytest.raises(ValueError, match="non-empty contiguous slice"):
        layer.forward_quantized(x_q, x_scale, rows=slice(0, 48, 2))
    layer.mode = "bf16"
    with pytest.raises(RuntimeError, match="computes bf16, not fp8"):
        layer.forward_quantized(x_q, x_scale)


# --- the model --------------------------------------------------------------------------------------------------

def _fed_layers(model) -> set[str]:
    return {name for name, m in model.named_modules()
            if isinstance(m, FP8Linear) and m.accepts_quantized and name.endswith(PRODUCER_FED)
            and name.startswith(("double_blocks.", "single_blocks."))}  # the token refiner keeps its eager steps


@pytest.mark.parametrize("preset", ["fp8-balanced", "fp8-max"])
def test_fused_producers_feed_exactly_the_w8a8_block_layers(sd, preset, calls):
    model = load_transformer(dict(sd), get_preset(preset))
    run(model, make_inputs(torch.bfloat16), fused=True)
    expected = _fed_layers(model)
    # fp8-balanced keeps the first and last block in bf16 (boundary blocks): only double 1 and single 0 are fed.
    if preset == "fp8-balanced":
        assert expected == {f"double_blocks.1.{s}_{p}" for s in ("img", "txt") for p in PRODUCER_FED[:3]} | \
            {"single_blocks.0.linear1", "single_blocks.0.linear2"}
    assert set(calls["quantized"]) == expected
    assert not expected & set(calls["plain"])  # never also quantized eagerly
    calls["quantized"].clear()
    run(model, make_inputs(torch.bfloat16), fused=False)
    assert calls["quantized"] == []


# Fused keeps LayerNorm+modulation / GELU in fp32 up to the FP8 cast (eager rounds to bf16 first), so the two
# differ by FP8 rounding flips; neither is more accurate. Measured (vs eager; fused / eager vs float64):
# fp8-balanced 2.1e-02; 2.8e-02 / 2.9e-02. fp8-max 4.6e-02; 7.3e-02 / 7.2e-02.
@pytest.mark.parametrize("preset,bound", [("fp8-balanced", 0.05), ("fp8-max", 0.1)])
def test_fused_output_close_to_eager(sd, ref64, preset, bound):
    model = load_transformer(dict(sd), get_preset(preset))
    inputs = make_inputs(torch.bfloat16)
    fused, eager = run(model, inputs, True), run(model, inputs, False)
    assert torch.isfinite(fused).all() and fused.dtype == torch.bfloat16
    assert rel(fused, eager) < bound
    assert rel(fused, ref64) < 1.15 * rel(eager, ref64)


def test_bf16_policy_and_high_precision_steps_do_not_change(sd, calls):
    """No fused producer runs for a layer that is not W8A8; the fused q/k prologue equals the eager norm+RoPE
    bit for bit on this CPU path (same fp32 arithmetic)."""
    inputs = make_inputs(torch.bfloat16)
    bf16 = load_transformer(dict(sd), get_preset("bf16"))
    assert torch.equal(run(bf16, inputs, True), run(bf16, inputs, False))  # measured: identical
    balanced = load_transformer(dict(sd), get_preset("fp8-balanced"))
    with compute_override(balanced, "bf16"):  # a hybrid schedule's high-precision step
        on, off = run(balanced, inputs, True), run(balanced, inputs, False)
    assert torch.equal(on, off)
    assert calls["quantized"] == []


def test_fp32_prologue_matches_eager(sd):
    model = load_transformer(dict(sd), None, dtype=torch.float32)
    inputs = make_inputs(torch.float32)
    assert rel(run(model, inputs, True), run(model, inputs, False)) < 1e-6  # measured 0


def test_float64_model_keeps_the_eager_prologue(sd, ref64):
    """The fused prologue computes in fp32; a float64 reference model must not silently lose precision."""
    model = load_transformer(dict(sd), None, dtype=torch.float64)
    assert rel(run(model, make_inputs(torch.float64), True), ref64) < 1e-12  # measured 0


# --- torch.compile ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("preset", [None, "fp8-max"])
def test_compile_blocks_gives_the_same_output(caplog, preset):
    """Inductor on CPU compiles the blocks (the producers' torch reference is the CPU path, as custom ops under
    compile): 15-18 s on 2 cores with an empty inductor cache, under 1 s cached."""
    cfg = tiny_config(depth=1, depth_single_blocks=1)
    sd = random_state_dict(cfg, seed=2)
    policy = None if preset is None else get_preset(preset).with_overrides(compute_dtype="fp32")
    model = load_transformer(sd, policy, dtype=torch.float32 if policy is None else None)
    g = torch.Generator().manual_seed(4)
    inputs = dict(x=torch.randn(1, cfg.in_channels, 2, 4, 6, generator=g), timestep=torch.tensor([400.0]),
                  context=torch.randn(1, 5, cfg.context_in_dim, generator=g),
                  y=torch.randn(1, cfg.vec_in_dim, generator=g), guidance=torch.tensor([6.0]))
    with torch.inference_mode():
        eager = model(**inputs)
        model.compile_blocks()
        with caplog.at_level("INFO", logger="hyvideo_fp8"):
            compiled = model(**inputs)
        again = model(**inputs)
    assert "first forward with compiled blocks took" in caplog.text
    assert rel(compiled, eager) < 1e-5  # measured 2.5e-07 / 3.7e-08 (fp32 kernels fused differently)
    assert torch.equal(again, compiled)


def test_fp8_attention_takes_its_queries_from_the_prologue(sd, monkeypatch):
    """Where the kernel plan has a quantizing prologue (FP8 attention as GPU kernels), the prologue quantizes the
    queries itself (``JointQKV``'s quantized layout: int8 q, k/v written in place). Planned on the CPU, that path runs
    the torch references and must give exactly the output of the plain path (16-bit q, k, v, then ``fp8_attention``)."""
    from dataclasses import replace

    from hyvideo_fp8.fp8 import fused
    from hyvideo_fp8.fp8.kernel_plan import Kernel
    from hyvideo_fp8.hunyuan import rope

    model = load_transformer(dict(sd), get_preset("fp8-max"), dtype=torch.bfloat16)
    inputs = make_inputs(torch.bfloat16)
    plain = run(model, inputs, fused=True)
    writes = []

    def quantizing_prologue(qkv, *args):
        writes.append(qkv.shape[1])
        return fused.qk_norm_rope_quant_q(qkv, *args)

    (key, plan), = model.kernel_plans.items()
    assert plan.quant_prologue is Kernel.NONE  # on the CPU the attention quantizes its own queries
    model.kernel_plans[key] = replace(plan, quant_prologue=Kernel.TORCH)
    monkeypatch.setattr(rope, "_qk_norm_rope_quant_q", quantizing_prologue)
    quantized = run(model, inputs, fused=True)
    n_img, n_txt = 2 * 3 * 4, 5  # latent 2x6x8, patch (1, 2, 2); 5 text tokens
    assert sorted(writes) == sorted([n_img, n_txt] * CFG.depth + [n_img + n_txt] * CFG.depth_single_blocks)
    assert not quantized.isnan().any() and torch.equal(quantized, plain)
