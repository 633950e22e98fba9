"""scaled_gemm where cuBLASLt has no kernel for a shape (padded rows, then the dequantized matmul) and where a view
leaves an operand or a scale vector off the 16-byte alignment cuBLASLt reads: same result as the normal path."""

from __future__ import annotations

import logging

import pytest
import torch

from hyvideo_fp8.fp8 import gemm
from hyvideo_fp8.fp8.quantize import quantize_rowwise

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def operands(m: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, 3] *= 40  # an outlier channel
    w = torch.randn(n, k, generator=g) / k**0.5
    (a_q, a_s), (w_q, w_s) = quantize_rowwise(x, torch.float8_e4m3fn), quantize_rowwise(w, torch.float8_e4m3fn)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    return tuple(t.to(DEVICE) for t in (a_q, a_s, w_q, w_s, bias))


def test_fallback_equals_the_normal_path(caplog):
    if not gemm.rowwise_supported(DEVICE):
        pytest.skip(f"this torch build has no row-wise _scaled_mm on {DEVICE.type}: the fallback is never reached")
    a_q, a_s, w_q, w_s, bias = operands(16, 48, 96, seed=1)
    want = gemm.scaled_gemm(a_q, a_s, w_q, w_s, bias).float()
    w_t = w_q.t()
    with caplog.at_level(logging.WARNING, logger="hyvideo_fp8"):
        got = gemm._without_kernel_for_shape(a_q, w_t, a_s, w_s.reshape(1, -1), bias, torch.bfloat16, True).float()
        gemm._without_kernel_for_shape(a_q, w_t, a_s, w_s.reshape(1, -1), bias, torch.bfloat16, True)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert ((got - want).norm() / want.norm()).item() < 1e-2  # bf16 output rounding only
    assert len([r for r in caplog.records if "no FP8 kernel" in r.getMessage()]) == 1  # once per shape


def test_misaligned_views_give_the_same_result():
    a_q, a_s, w_q, w_s, bias = operands(20, 32, 64, seed=2)
    want = gemm.scaled_gemm(a_q[1:], a_s[1:].clone(), w_q, w_s, bias)
    assert a_s[1:].data_ptr() % 16 != 0  # a row offset of one fp32 scale
    got = gemm.scaled_gemm(a_q[1:], a_s[1:], w_q, w_s, bias)
    assert torch.equal(got, want)


def test_scaled_gemm_traces_whole_under_torch_compile():
    """The alignment check reads an address only in eager mode: torch.compile traces scaled_gemm in one graph."""
    a_q, a_s, w_q, w_s, bias = operands(16, 32, 64, seed=3)
    compiled = torch.compile(gemm.scaled_gemm, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(a_q, a_s, w_q, w_s, bias), gemm.scaled_gemm(a_q, a_s, w_q, w_s, bias))
