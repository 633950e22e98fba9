"""FP8 quantization primitives and the _scaled_mm wrapper, against float64 references."""

import pytest
import torch

from hyvideo_fp8.fp8 import gemm
from hyvideo_fp8.fp8.formats import SCALE_FLOOR, fp8_dtype, fp8_max
from hyvideo_fp8.fp8.gemm import scaled_gemm
from hyvideo_fp8.fp8.quantize import (
    dequantize,
    quantize_rowwise,
    quantize_static,
    quantize_tensorwise,
    saturating_cast,
)

FORMATS = ["e4m3fn", "e5m2"]


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def heavy_tailed(rows: int, cols: int, outlier_cols: int = 4, factor: float = 50.0) -> torch.Tensor:
    """Gaussian with a few columns (input channels) scaled up, like the outlier channels of DiT activations."""
    x = torch.randn(rows, cols)
    x[:, torch.randperm(cols)[:outlier_cols]] *= factor
    return x


def test_format_table():
    assert fp8_max(torch.float8_e4m3fn) == 448.0
    assert fp8_max(fp8_dtype("e5m2")) == 57344.0
    with pytest.raises(ValueError, match="unknown FP8 format 'e3m4'.*e4m3fn"):
        fp8_dtype("e3m4")
    with pytest.raises(ValueError, match="not an FP8 dtype"):
        fp8_max(torch.bfloat16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_saturating_cast_clamps_instead_of_overflowing(fmt):
    dtype = fp8_dtype(fmt)
    big = fp8_max(dtype) * (1.5 + torch.rand(64))
    x = torch.cat([big, -big])
    q = saturating_cast(x, dtype)
    assert torch.isfinite(q.float()).all()
    assert torch.equal(q.float().abs(), torch.full_like(x, fp8_max(dtype)))
    if fmt == "e5m2":  # why we clamp: a plain cast overflows (inf here; e4m3fn gives NaN on CUDA builds)
        assert not torch.isfinite(x.to(dtype).float()).any()


@pytest.mark.parametrize("fmt, bound_row, bound_tensor", [
    ("e4m3fn", 0.025, 0.035),  # measured 0.016-0.018 / 0.026-0.028
    ("e5m2", 0.045, 0.07),  # measured 0.033-0.036 / 0.052-0.057
])
def test_round_trip_error(fmt, bound_row, bound_tensor):
    x = heavy_tailed(64, 256)
    q, s = quantize_rowwise(x, fmt)
    assert q.dtype == fp8_dtype(fmt) and s.dtype == torch.float32 and s.shape == (64, 1)
    assert rel_l2(dequantize(q, s), x) <= bound_row
    q, s = quantize_tensorwise(x, fmt)
    assert s.shape == ()
    assert rel_l2(dequantize(q, s), x) <= bound_tensor


def test_rowwise_scale_is_amax_over_fp8_max_and_handles_leading_dims():
    x = torch.randn(3, 5, 32)
    q, s = quantize_rowwise(x)
    assert s.shape == (3, 5, 1)
    torch.testing.assert_close(s, x.abs().amax(-1, keepdim=True) / 448.0)
    # the largest element of every row lands exactly on the format's max
    assert torch.equal(q.float().abs().amax(-1), torch.full((3, 5), 448.0))


def test_zero_rows_and_tiny_values_give_zeros_not_nan():
    x = torch.randn(6, 48)
    x[1] = 0.0
    x[4] = 1e-30  # far below the scale floor
    q, s = quantize_rowwise(x)
    assert torch.isfinite(s).all() and (s >= SCALE_FLOOR / 448.0).all()
    out = dequantize(q, s)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(48))
    assert out[4].abs().max() <= 1e-12
    qt, st = quantize_tensorwise(torch.zeros(4, 16))
    assert torch.equal(dequantize(qt, st), torch.zeros(4, 16))


def test_static_scale_saturates_and_floors():
    x = torch.randn(8, 32) * 4
    scale = torch.tensor(0.01)  # calibrated for |x| <= 4.48: larger values saturate
    q = quantize_static(x, scale)
    out = dequantize(q, scale)
    assert torch.isfinite(out).all()
    inside = x.abs() <= 4.48
    assert rel_l2(out[inside], x[inside]) <= 0.05  # measured 0.02
    assert torch.equal(out[~inside].abs(), torch.full_like(out[~inside], 448.0 * 0.01))
    zero_scaled = dequantize(quantize_static(x, torch.tensor(0.0)), torch.tensor(0.0))
    assert torch.isfinite(zero_scaled).all()


def test_dequantize_per_output_channel_scale_layouts():
    w = torch.randn(24, 40)
    q, s = quantize_rowwise(w)
    ref = dequantize(q, s)
    torch.testing.assert_close(dequantize(q, s.reshape(24)), ref)  # canonical state-dict layout [N]
    assert dequantize(q, s, torch.bfloat16).dtype == torch.bfloat16


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least one dimension"):
        quantize_rowwise(torch.tensor(1.0))
    with pytest.raises(ValueError, match="unknown FP8 format"):
        quantize_tensorwise(torch.randn(4), "int8")


# --- scaled_gemm ----------------------------------------------------------------------------------------------------


def _operands(m=37, k=96, n=80):
    a = heavy_tailed(m, k)
    w = torch.randn(n, k) / k**0.5
    a_q, a_s = quantize_rowwise(a)
    w_q, w_s = quantize_rowwise(w)
    return a_q, a_s, w_q, w_s


def _reference(a_q, a_s, w_q, w_s, bias=None):
    out = (a_q.double() * a_s.double().reshape(-1, 1)) @ (w_q.double() * w_s.double().reshape(-1, 1)).t()
    return out if bias is None else out + bias.double()


@pytest.mark.parametrize("out_dtype, bound", [
    (torch.float32, 1e-5),  # exact products, fp32 accumulation: measured ~1e-7
    (torch.bfloat16, 0.006),  # bf16 output rounding: measured ~0.003
    (torch.float16, 0.002),  # measured ~4e-4
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scaled_gemm_rowwise_matches_dequantized_reference(out_dtype, bound, with_bias):
    a_q, a_s, w_q, w_s = _operands()
    bias = torch.randn(80).to(out_dtype if out_dtype != torch.float32 else torch.bfloat16) if with_bias else None
    out = scaled_gemm(a_q, a_s, w_q, w_s.reshape(80), bias, out_dtype=out_dtype)
    assert out.dtype == out_dtype and out.shape == (37, 80)
    assert torch.isfinite(out).all()
    ref = _reference(a_q, a_s, w_q, w_s, bias)
    assert rel_l2(out, ref) <= bound
    # every row written: the worst row is as good as the whole
    row_err = (out.double() - ref).norm(dim=1) / ref.norm(dim=1)
    assert row_err.max() <= 4 * bound


@pytest.mark.parametrize("a_rowwise, w_rowwise", [(False, False), (True, False), (False, True)])
def test_scaled_gemm_per_tensor_and_mixed_scales(a_rowwise, w_rowwise):
    a = torch.randn(21, 64)
    w = torch.randn(32, 64)
    a_q, a_s = quantize_rowwise(a) if a_rowwise else quantize_tensorwise(a)
    w_q, w_s = quantize_rowwise(w) if w_rowwise else quantize_tensorwise(w)
    out = scaled_gemm(a_q, a_s, w_q, w_s, out_dtype=torch.float32)
    assert rel_l2(out, _reference(a_q, a_s, w_q, w_s)) <= 1e-5  # measured ~1e-7


def test_scaled_gemm_without_rowwise_kernel_scales_afterwards(monkeypatch):
    """Builds without a row-wise kernel get a unit-scale GEMM plus an fp32 epilogue: same numbers."""
    a_q, a_s, w_q, w_s = _operands()
    bias = torch.randn(80, dtype=torch.bfloat16)
    native = scaled_gemm(a_q, a_s, w_q, w_s, bias, out_dtype=torch.float32)
    monkeypatch.setattr(gemm, "_ROWWISE_SUPPORT", {("cpu", None, torch.float32): False})
    emulated = scaled_gemm(a_q, a_s, w_q, w_s, bias, out_dtype=torch.float32)
    assert rel_l2(emulated, native) <= 1e-6


def test_scaled_gemm_rejects_bad_operands():
    a_q, a_s, w_q, w_s = _operands()
    with pytest.raises(ValueError, match="2-D"):
        scaled_gemm(a_q.unsqueeze(0), a_s, w_q, w_s)
    with pytest.raises(ValueError, match="FP8 operands"):
        scaled_gemm(a_q.float(), a_s, w_q, w_s)
    with pytest.raises(ValueError, match="inner dims"):
        scaled_gemm(a_q[:, :80], a_s, w_q, w_s)
    q24, s24 = quantize_rowwise(torch.randn(32, 24))
    with pytest.raises(ValueError, match="multiples of 16.*fp8-weight-only"):
        scaled_gemm(q24, s24, q24, s24)
    with pytest.raises(ValueError, match="a_scale"):
        scaled_gemm(a_q, a_s[:5], w_q, w_s)
    with pytest.raises(ValueError, match="w_scale"):
        scaled_gemm(a_q, a_s, w_q, w_s[:7])
