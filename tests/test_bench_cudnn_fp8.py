"""The bench's cuDNN FP8 route (bench/cudnn_fp8.py): its per-tensor quantization on the CPU, and the message it gives
when the optional GPU-only package is missing. The graph itself needs a GPU and is exercised by bench_attention."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import cudnn_fp8  # noqa: E402


def _qkv(outliers: bool, L: int = 600, heads: int = 3, d: int = 64) -> tuple[torch.Tensor, ...]:
    q, k, v = (torch.randn(1, heads, L, d, dtype=torch.float64) for _ in range(3))
    k = k + 4 * torch.randn(d, dtype=torch.float64)  # shared offset: what smoothing removes
    if outliers:
        k[..., :2] *= 10
        v[..., 5] *= 20
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("outliers", [False, True])
def test_per_tensor_operands_dequantize_to_the_inputs(outliers):
    q, k, v = _qkv(outliers)
    ops = cudnn_fp8.quantize_per_tensor(q, k, v)
    assert ops.q.dtype == ops.k.dtype == ops.v.dtype == torch.float8_e4m3fn
    deq = {n: getattr(ops, n).double() * getattr(ops, f"descale_{n}").double() for n in "qkv"}
    for n in "qkv":
        assert torch.isfinite(deq[n]).all()
        assert getattr(ops, n).float().abs().max() == cudnn_fp8.E4M3_MAX  # amax maps onto the top of e4m3
    k_smooth = k.double() - k.double().mean(dim=2, keepdim=True)
    for n, ref in (("q", q.double()), ("k", k_smooth), ("v", v.double())):
        err = ((deq[n] - ref).norm() / ref.norm()).item()
        assert err < 0.04, (n, err)  # e4m3: 3 mantissa bits, ~2-3 % relative L2 on these inputs
    assert (ops.scale_s * ops.descale_s).item() == pytest.approx(1.0)
    assert (ops.scale_o * ops.descale_o).item() == pytest.approx(1.0)
    out = _attention(deq["q"], deq["k"], deq["v"])
    assert ops.descale_o.item() * cudnn_fp8.E4M3_MAX >= out.abs().max().item()  # the FP8 output cannot overflow


def test_smoothing_keeps_attention_without_outliers():
    """K's mean leaves the logits' row offsets only: attention on the FP8 operands stays within FP8's error. (With
    outlier channels it does not: ~0.15 here, the failure mode the bench's sharp case shows on the GPU.)"""
    q, k, v = _qkv(outliers=False)
    ops = cudnn_fp8.quantize_per_tensor(q, k, v)
    deq = [getattr(ops, n).double() * getattr(ops, f"descale_{n}").double() for n in "qkv"]
    ref = _attention(q.double(), k.double(), v.double())
    err = ((_attention(*deq) - ref).norm() / ref.norm()).item()
    assert err < 0.07, err  # 0.03-0.05 measured over 40 draws


@pytest.mark.skipif(importlib.util.find_spec("cudnn") is not None, reason="nvidia-cudnn-frontend is installed here")
def test_missing_frontend_names_the_package():
    ok, msg = cudnn_fp8.available()
    assert not ok and "pip install nvidia-cudnn-frontend" in msg
