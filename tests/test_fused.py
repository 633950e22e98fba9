"""Fused FP8 producers (fp8/fused.py): the torch references against float64 math, and, when triton is installed,
the Triton kernels run by Triton's CPU interpreter against the references.

Every FP8 check dequantizes (``q.float() * s``) and measures ``||out - ref|| / ||ref||`` against a float64 result.
e4m3fn keeps 3 mantissa bits, so the dequantized error is FP8 rounding: ~0.02-0.03 relative L2.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hyvideo_fp8.fp8 import fused
from hyvideo_fp8.fp8.attention.quantize_qkv import empty_quantized_q
from hyvideo_fp8.fp8.formats import SCALE_FLOOR
from hyvideo_fp8.fp8.kernel_plan import FUSED_ENV, Kernel, device_plan

if importlib.util.find_spec("triton") and "triton" not in sys.modules and not torch.cuda.is_available():
    # Without a GPU, Triton can only interpret; the switch must be set before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

E4M3 = torch.float8_e4m3fn
FP8_MAX = 448.0
EPS = 1e-6


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def dequant(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.double() * s.double()


def activations(B: int, L: int, C: int, dtype: torch.dtype, outliers: int = 4) -> torch.Tensor:
    """Fresh random tokens with a few outlier channels (x40), as real DiT activations have."""
    x = torch.randn(B, L, C, dtype=torch.float64) * (0.5 + torch.rand(B, L, 1, dtype=torch.float64) * 3)
    x[..., torch.randperm(C)[:outliers]] *= 40
    return x.to(dtype)


def ln_modulate_f64(x, shift, scale):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * (1 + scale.double()) + shift.double()


def gelu_tanh_f64(x):
    x = x.double()
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def check_fp8_rows(q, s, ref64, bound):
    """Shapes and dtypes, no NaN, scale = amax / 448 per token, and the dequantized relative L2 error."""
    assert q.dtype == E4M3 and q.shape == ref64.shape and q.is_contiguous()
    assert s.dtype == torch.float32 and s.shape == (*ref64.shape[:-1], 1)
    assert not torch.isnan(q.float()).any() and not torch.isnan(s).any()
    amax = ref64.abs().amax(-1, keepdim=True)
    torch.testing.assert_close(s.double(), amax.clamp_min(SCALE_FLOOR) / FP8_MAX, rtol=2e-5, atol=0)
    assert q.float().abs().amax(-1).eq(FP8_MAX).all()  # each token's largest value lands on the top code
    err = rel_l2(dequant(q, s), ref64)
    assert err < bound, err
    return err


# ---------------------------------------------------------------- references vs float64

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_layernorm_modulate_quant_reference_matches_float64(dtype):
    B, L, C = 2, 48, 3072
    x = activations(B, L, C, dtype)
    shift = (torch.randn(B, 1, C) * 0.5).to(dtype)
    scale = (torch.randn(B, 1, C) * 0.5).to(dtype)
    q, s = fused.layernorm_modulate_quant(x, shift, scale)
    check_fp8_rows(q, s, ln_modulate_f64(x, shift, scale), bound=0.03)  # measured 0.021-0.023 (bf16 and fp32)


def test_layernorm_modulate_quant_zero_and_constant_rows():
    B, L, C = 2, 8, 256
    x = activations(B, L, C, torch.bfloat16)
    x[0, 3] = 0.0  # zero row, zero shift: LayerNorm gives 0, the floored scale keeps 0 / scale finite
    x[1, 5] = 7.0  # constant row: variance 0, normalises to 0, the output is the shift
    shift = torch.randn(B, 1, C, dtype=torch.bfloat16)
    shift[0] = 0.0
    scale = torch.randn(B, 1, C, dtype=torch.bfloat16)
    q, s = fused.layernorm_modulate_quant(x, shift, scale)
    assert not torch.isnan(q.float()).any() and torch.isfinite(s).all()
    assert q[0, 3].float().eq(0).all() and s[0, 3].item() == pytest.approx(SCALE_FLOOR / FP8_MAX)
    check_fp8_rows(q[1:, 5:6], s[1:, 5:6], shift[1:].double(), bound=0.035)  # one row: measured 0.024-0.028


def test_gelu_tanh_quant_reference_matches_float64():
    x = activations(2, 16, 2048, torch.bfloat16)
    q, s = fused.gelu_tanh_quant(x)
    check_fp8_rows(q, s, gelu_tanh_f64(x), bound=0.025)  # measured 0.016-0.018


def test_concat_gelu_quant_reference_one_scale_per_concatenated_row():
    B, L, C1, C2 = 2, 12, 384, 1536
    attn = activations(B, L, C1, torch.bfloat16)
    attn[0, :4] *= 100  # attention half dominates some tokens' scale...
    mlp = activations(B, L, C2, torch.bfloat16)
    mlp[1, :4] *= 100  # ...the GELU half others'
    q, s = fused.concat_gelu_quant(attn, mlp)
    ref = torch.cat([attn.double(), gelu_tanh_f64(mlp)], dim=-1)
    check_fp8_rows(q, s, ref, bound=0.03)  # measured 0.012-0.021


def test_zero_rows_quantize_to_zeros():
    x = activations(1, 6, 512, torch.bfloat16)
    x[0, 2] = 0.0
    for q, s in (fused.gelu_tanh_quant(x), fused.concat_gelu_quant(x[..., :128], x[..., 128:])):
        assert q[0, 2].float().eq(0).all() and s[0, 2].item() == pytest.approx(SCALE_FLOOR / FP8_MAX)
        assert not torch.isnan(q.float()).any()


def _rounding_overflow_values(n: int) -> torch.Tensor:
    """fp32 values v whose ``v / (v / 448)`` rounds above 448: unclamped, the e4m3fn cast would make NaN."""
    v = torch.rand(200_000, dtype=torch.float64).mul(1e4).add(1).float()
    hits = v[v / (v / FP8_MAX) > FP8_MAX]
    assert hits.numel() >= n
    return hits[:n]


def test_rounding_overflow_and_huge_values_saturate():
    C = 64
    x = torch.randn(1, 8, C) * 0.01
    x[0, :4, 5] = _rounding_overflow_values(4)  # the row's max divides to 448.00003: must clamp to 448
    x[0, 4:, 9] = torch.tensor([1e30, -1e30, 3e38, -3e38])  # beyond any bf16 activation: tiny values flush to 0
    q, s = fused.concat_gelu_quant(x, x.neg())
    assert not torch.isnan(q.float()).any() and torch.isfinite(s).all()
    assert q.float().abs().amax(-1).eq(FP8_MAX).all()
    q, s = fused.gelu_tanh_quant(x[:, :4])
    assert not torch.isnan(q.float()).any() and q.float()[0, :, 5].eq(FP8_MAX).all()


def rope_f64(x, cos, sin, n):
    """Interleaved pairs as complex numbers: (x_2i + i x_2i+1) * e^{i theta_i} on the first n tokens."""
    x = x.double().clone()
    pairs = torch.view_as_complex(x[:, :, :n].reshape(*x.shape[:2], n, x.shape[-1] // 2, 2).contiguous())
    rotated = pairs * torch.polar(torch.ones_like(cos.double()), torch.atan2(sin.double(), cos.double()))
    x[:, :, :n] = torch.view_as_real(rotated).flatten(-2)
    return x


def qkv_inputs(B, L, H, D, n_rope, dtype=torch.bfloat16):
    qkv = activations(B, L, 3 * H * D, dtype)
    q_w = (torch.rand(D) * 1.5 + 0.25).to(dtype)
    k_w = (torch.rand(D) * 1.5 + 0.25).to(dtype)
    angles = torch.rand(n_rope, D // 2, dtype=torch.float64) * 50
    return qkv, q_w, k_w, angles.cos().float(), angles.sin().float()


def qk_norm_rope_f64(qkv, q_w, k_w, cos, sin, n):
    B, L, _ = qkv.shape
    D = q_w.shape[0]
    q, k, v = qkv.double().view(B, L, 3, -1, D).permute(2, 0, 3, 1, 4)

    def norm(x, w):
        return x / torch.sqrt(x.square().mean(-1, keepdim=True) + EPS) * w.double()

    return rope_f64(norm(q, q_w), cos, sin, n), rope_f64(norm(k, k_w), cos, sin, n), v


@pytest.mark.parametrize("n_rope", [0, 10, 16])
def test_qk_norm_rope_reference_matches_float64(n_rope):
    B, L, H, D = 2, 16, 3, 64
    inputs = qkv_inputs(B, L, H, D, n_rope)
    outs = fused.qk_norm_rope(*inputs, n_rope)
    for out, ref in zip(outs, qk_norm_rope_f64(*inputs, n_rope)):
        assert out.shape == (B, H, L, D) and out.dtype == torch.bfloat16 and out.is_contiguous()
        assert rel_l2(out, ref) < 3e-3, rel_l2(out, ref)  # bf16 output rounding: measured 0.0015-0.0017
    assert torch.equal(outs[2], inputs[0].view(B, L, 3, H, D)[:, :, 2].transpose(1, 2))


def test_qk_norm_rope_matches_comfyui_rotation_matrix():
    """ComfyUI applies ``pe = [[cos, -sin], [sin, cos]]`` per pair: ``out_r = pe[r, 0] x_2i + pe[r, 1] x_2i+1``."""
    B, L, H, D, n = 1, 6, 2, 32, 6
    qkv, q_w, k_w, cos, sin = qkv_inputs(B, L, H, D, n, dtype=torch.float32)
    ones = torch.ones(D)
    q, _, _ = fused.qk_norm_rope(qkv, ones, ones, cos, sin, n)
    x = qkv.view(B, L, 3, H, D)[:, :, 0].transpose(1, 2)
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS)
    pe = torch.stack([cos, -sin, sin, cos], dim=-1).view(n, D // 2, 2, 2)
    pairs = x.reshape(B, H, L, D // 2, 1, 2)
    expected = (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).reshape(B, H, L, D)
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad inputs

def _bad_calls():
    x = torch.randn(1, 4, 32, dtype=torch.bfloat16)
    m = torch.randn(1, 1, 32, dtype=torch.bfloat16)
    qkv, q_w, k_w, cos, sin = qkv_inputs(1, 4, 2, 8, 2)
    lnq, gq, cgq = fused.layernorm_modulate_quant, fused.gelu_tanh_quant, fused.concat_gelu_quant
    qkr = fused.qk_norm_rope
    return [
        (lambda: lnq(x[0], m, m), "must be \\[B, L, C\\]"),
        (lambda: lnq(x.int(), m, m), "bfloat16, float16 or float32"),
        (lambda: lnq(x.transpose(1, 2), m[..., :4], m[..., :4]), "contiguous channels"),
        (lambda: lnq(x, m[..., :16], m), "shift must be \\[B, 1, C\\]"),
        (lambda: lnq(x, m, m.expand(1, 4, 32)), "scale must be \\[B, 1, C\\]"),
        (lambda: lnq(x, m, m.to("meta")), "one device"),
        (lambda: gq(x.float().numpy()), "x must be a torch.Tensor"),
        (lambda: cgq(x, x[:, :3]), "must share B and L"),
        (lambda: qkr(qkv[..., :40], q_w, k_w, cos, sin, 2), "multiple of 3 \\* head_dim"),
        (lambda: qkr(qkv, q_w, k_w[:4], cos, sin, 2), "same length"),
        (lambda: qkr(qkv, q_w[:7], k_w[:7], cos, sin, 2), "must be even"),
        (lambda: qkr(qkv, q_w, k_w, cos, sin, 5), "n_rope_tokens must be an int in \\[0, L=4\\]"),
        (lambda: qkr(qkv, q_w, k_w, cos.double(), sin, 2), "cos must be float32"),
        (lambda: qkr(qkv, q_w, k_w, cos, sin[:1], 2), "sin must be float32 \\[n_rope_tokens"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_inputs_raise_clear_errors(case):
    call, message = _bad_calls()[case]
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_env_var_forces_reference():
    """HYVIDEO_FP8_FUSED=0 makes the kernel plan of an sm_90 GPU run the producers' and prologue's references."""
    root = Path(__file__).resolve().parent.parent
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pack_path import load_pack; load_pack(); "
            "from hyvideo_fp8.fp8.kernel_plan import make_plan; "
            "p = make_plan('cuda', capability=(9, 0), device_name='H100', triton_problem=''); "
            "print(p.producers.value, p.prologue.value)")
    for value, expected in (("0", "torch torch"), ("1", "triton triton")):
        env = {**os.environ, FUSED_ENV: value}
        done = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True,
                              check=True)
        assert done.stdout.strip() == expected


def test_cpu_tensors_use_the_reference(monkeypatch):
    """Without a kernel named, the plan of the input's device decides: the reference on the CPU (no launch)."""
    try:
        from hyvideo_fp8.fp8.triton import gelu_quant
    except ImportError:  # no Triton here: no kernel can launch anyway
        pass
    else:
        monkeypatch.setattr(gelu_quant, "gelu_tanh_quant_triton", lambda x: pytest.fail("launched a Triton kernel"))
    assert device_plan("cpu").producers is Kernel.TORCH
    x = activations(1, 3, 64, torch.float32)
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(fused.gelu_tanh_quant(x),
                                                                 fused.gelu_tanh_quant_reference(x)))


# ---------------------------------------------------------------- Triton kernels under the CPU interpreter

def _exact_downcasts(original):
    """Triton 3.6's interpreter emulates fp32 -> e4m3 rounding without carrying into the exponent (31.05 becomes
    16, not 32) and truncates fp32 -> bf16; the GPU rounds to nearest even in hardware. Replace the emulation of
    these downcasts with torch's exact casts so the tests judge the kernels, not the emulator."""
    import triton.language as tl

    exact = {tl.float8e4nv: (E4M3, torch.uint8), tl.bfloat16: (torch.bfloat16, torch.int16),
             tl.float16: (torch.float16, torch.int16)}

    def convert(data, src, dst, rounding_mode):
        if src == tl.float32 and dst in exact:
            dtype, bits = exact[dst]
            return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(dtype).view(bits).numpy()
        return original(data, src, dst, rounding_mode)

    return convert


def _triton_imported_without_interpreter() -> bool:
    """True when triton was imported (by another test module) before TRITON_INTERPRET=1 could be set: its library
    functions (tl.max, tl.sum) are then compiled-only and the interpreter cannot run our kernels in this process."""
    if "triton" not in sys.modules:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return not isinstance(sys.modules["triton"].language.standard.max, InterpretedFunction)


@pytest.fixture(scope="module")
def kernels():
    """The Triton launchers and the device they run on: the GPU when there is one, else Triton's CPU interpreter."""
    pytest.importorskip("triton")
    with pytest.MonkeyPatch.context() as mp:
        if torch.cuda.is_available():
            if torch.cuda.get_device_capability() < (8, 9):
                pytest.skip("Triton converts to e4m3fn only on sm_89+")
            device = "cuda"
        else:
            if _triton_imported_without_interpreter():
                pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: "
                            "test_kernels_in_a_fresh_interpreter_process runs these tests instead")
            from triton.runtime import interpreter

            mp.setattr(interpreter, "_convert_float", _exact_downcasts(interpreter._convert_float))
            device = "cpu"
        from hyvideo_fp8.fp8.triton import gelu_quant, norm_modulate_quant, qk_norm_rope

        yield SimpleNamespace(device=device, ln=norm_modulate_quant.layernorm_modulate_quant_triton,
                              gelu=gelu_quant.gelu_tanh_quant_triton, concat=gelu_quant.concat_gelu_quant_triton,
                              qk=qk_norm_rope.qk_norm_rope_triton)


def test_kernels_in_a_fresh_interpreter_process():
    """In a whole-suite run another test module may import triton first; the kernel tests above then skip here and
    run in a fresh process, where this file sets TRITON_INTERPRET=1 before triton is imported."""
    if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
        pytest.skip("no triton, or a GPU runs the kernel tests directly")
    if not _triton_imported_without_interpreter():
        pytest.skip("the kernel tests ran in this process")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__,
                           "-k", "triton_ or route_to_the_kernels"], cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0 and "skipped" not in summary, done.stdout[-4000:]


def poisoned_fp8(shape, device):
    """NaN-filled buffers (e4m3fn NaN is 0x7F): any element the kernel leaves unwritten shows up."""
    return (torch.full(shape, 0x7F, dtype=torch.uint8, device=device).view(E4M3),
            torch.full((*shape[:-1], 1), float("nan"), device=device))


def check_against_reference(q, s, q_ref, s_ref, ref64):
    q, s = q.cpu(), s.cpu()
    assert not torch.isnan(q.float()).any() and not torch.isnan(s).any()  # every element written
    torch.testing.assert_close(s, s_ref, rtol=2e-6, atol=0)  # measured 2.2e-7 (interpreter)
    codes_differ = q.float() != q_ref.float()
    assert codes_differ.float().mean().item() <= 1e-3  # summation order moves rare values across a rounding: 0-3e-5
    err_kernel, err_ref = rel_l2(dequant(q, s), ref64), rel_l2(dequant(q_ref, s_ref), ref64)
    assert err_kernel < err_ref * 1.01 + 1e-6, (err_kernel, err_ref)


def test_triton_layernorm_modulate_quant(kernels):
    B, L, C = 2, 6, 3072
    wide = activations(B, L + 1, C + 64, torch.bfloat16)
    x = wide[:, 1:, 32:32 + C]  # strided view: batch and token strides of the wider tensor
    x[1, 2] = 0.0
    shift = (torch.randn(B, 1, C) * 0.5).to(torch.bfloat16)
    scale = (torch.randn(B, 1, C) * 0.5).to(torch.bfloat16)
    out = poisoned_fp8((B, L, C), kernels.device)
    dev = kernels.device
    q, s = kernels.ln(wide.to(dev)[:, 1:, 32:32 + C], shift.to(dev), scale.to(dev), out=out)
    assert q is out[0] and s is out[1]
    q_ref, s_ref = fused.layernorm_modulate_quant_reference(x, shift, scale)
    check_against_reference(q, s, q_ref, s_ref, ln_modulate_f64(x, shift, scale))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy exp in the interpreter
def test_triton_gelu_tanh_quant(kernels):
    x = activations(2, 3, 12288, torch.bfloat16)
    x[0, 1] = 0.0
    x[1, 2, :8] = torch.tensor([-1e30, 1e30, -30.0, 30.0, -6.0, 6.0, 1e-30, -1e-30])  # exp over/underflow in GELU
    out = poisoned_fp8(x.shape, kernels.device)
    q, s = kernels.gelu(x.to(kernels.device), out=out)
    check_against_reference(q, s, *fused.gelu_tanh_quant_reference(x), gelu_tanh_f64(x))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy exp in the interpreter
def test_triton_concat_gelu_quant(kernels):
    B, L, C1, C2 = 1, 5, 3072, 12288
    linear1_out = activations(B, L, 3 * C1 + C2, torch.bfloat16)
    attn = activations(B, L, C1, torch.bfloat16)
    attn[0, 0] *= 300
    out = poisoned_fp8((B, L, C1 + C2), kernels.device)
    dev = kernels.device
    q, s = kernels.concat(attn.to(dev), linear1_out.to(dev)[..., 3 * C1:], out=out)  # the MLP half is a view
    mlp = linear1_out[..., 3 * C1:]
    ref64 = torch.cat([attn.double(), gelu_tanh_f64(mlp)], dim=-1)
    check_against_reference(q, s, *fused.concat_gelu_quant_reference(attn, mlp), ref64)


@pytest.mark.parametrize("n_rope", [0, 7, 9])
def test_triton_qk_norm_rope(kernels, n_rope):
    B, L, H, D = 2, 9, 24, 128
    qkv, q_w, k_w, cos, sin = qkv_inputs(B, L, H, D, n_rope)
    dev = kernels.device
    out = torch.full((3, B, H, L, D), float("nan"), dtype=torch.bfloat16, device=dev)
    outs = kernels.qk(*(t.to(dev) for t in (qkv, q_w, k_w, cos, sin)), n_rope, out=out)
    refs = fused.qk_norm_rope_reference(qkv, q_w, k_w, cos, sin, n_rope)
    for got, ref, ref64 in zip(outs, refs, qk_norm_rope_f64(qkv, q_w, k_w, cos, sin, n_rope)):
        got = got.cpu()
        assert got.shape == (B, H, L, D) and not torch.isnan(got).any()
        assert rel_l2(got, ref) < 1e-3, rel_l2(got, ref)  # rare one-ulp bf16 flips: measured 0-6e-5 (interpreter)
        assert rel_l2(got, ref64) < 3e-3, rel_l2(got, ref64)  # measured 0.0016-0.0017, as the reference
    assert torch.equal(outs[2].cpu(), refs[2])


def _quant_q_buffers(B, H, L_total, D, device, dtype=torch.bfloat16):
    """Poisoned destinations of the quantizing prologue: int8 127 and NaN scales / NaN k, v in the real rows."""
    q_out = empty_quantized_q(B, H, L_total, D, D**-0.5, device)
    q_out.q[:, :L_total] = 127
    q_out.q_scale[:, :L_total] = float("nan")
    return q_out, torch.full((2, B, H, L_total, D), float("nan"), dtype=dtype, device=device)


@pytest.mark.parametrize("n_rope", [0, 7, 9])
def test_triton_qk_norm_rope_quant_q(kernels, n_rope):
    """Rows 3..12 of a 14-row joint sequence: int8 queries as the attention quantizer makes them from the plain
    prologue's 16-bit output, k and v as the plain prologue writes them; other rows and the padding untouched.
    fp16 in Triton's CPU interpreter, whose bf16 dot is wrong (Triton 3.6: it multiplies the raw bits)."""
    B, L, H, D, L_total, row0 = 2, 9, 24, 128, 14, 3
    dtype = torch.bfloat16 if kernels.device == "cuda" else torch.float16
    qkv, q_w, k_w, cos, sin = qkv_inputs(B, L, H, D, n_rope, dtype)
    dev = kernels.device
    from hyvideo_fp8.fp8.triton.qk_norm_rope import qk_norm_rope_quant_q_triton

    q_out, kv_out = _quant_q_buffers(B, H, L_total, D, dev, dtype)
    qk_norm_rope_quant_q_triton(*(t.to(dev) for t in (qkv, q_w, k_w, cos, sin)), n_rope, EPS, q_out, kv_out, row0)
    q_ref, kv_ref = _quant_q_buffers(B, H, L_total, D, "cpu", dtype)
    fused.qk_norm_rope_quant_q_reference(qkv, q_w, k_w, cos, sin, n_rope, EPS, q_ref, kv_ref, row0)
    rows = slice(row0, row0 + L)
    q8, s = q_out.q.cpu().view(B, H, -1, D), q_out.q_scale.cpu().view(B, H, -1)
    q8_ref, s_ref = q_ref.q.view(B, H, -1, D), q_ref.q_scale.view(B, H, -1)
    # the prologues' rare one-ulp flips of a 16-bit q value (bf16: 2**-8) move that row's scale and some codes by 1
    torch.testing.assert_close(s[:, :, rows], s_ref[:, :, rows], rtol=2e-3, atol=0)
    codes_differ = (q8[:, :, rows] != q8_ref[:, :, rows]).float().mean().item()
    assert codes_differ <= 0.02 and (q8[:, :, rows].int() - q8_ref[:, :, rows].int()).abs().max() <= 1
    pad = slice(L_total, None)
    assert torch.equal(q8[:, :, pad], q8_ref[:, :, pad]) and torch.equal(s[:, :, pad], s_ref[:, :, pad])
    untouched = [slice(0, row0), slice(row0 + L, L_total)]
    for r in untouched:
        assert (q8[:, :, r] == 127).all() and s[:, :, r].isnan().all() and kv_out.cpu()[:, :, :, r].isnan().all()
    kv = kv_out.cpu()[:, :, :, rows]
    assert not kv.isnan().any() and rel_l2(kv[0], kv_ref[0, :, :, rows]) < 1e-3  # rare one-ulp flips
    assert torch.equal(kv[1], kv_ref[1, :, :, rows])


def test_qk_norm_rope_quant_q_rejects_bad_destinations_untouched():
    qkv, q_w, k_w, cos, sin = qkv_inputs(1, 4, 2, 64, 2)
    q_out, kv_out = _quant_q_buffers(1, 2, 6, 64, "cpu")
    call = fused.qk_norm_rope_quant_q
    for bad, match in [
        (lambda: call(qkv, q_w, k_w, cos, sin, 2, EPS, q_out, kv_out, 3), "do not fit"),
        (lambda: call(qkv, q_w, k_w, cos, sin, 2, EPS, q_out, kv_out[:, :, :, :5], 0), "kv_out must be"),
        (lambda: call(qkv, q_w, k_w, cos, sin, 2, EPS, q_out, kv_out.float(), 0), "kv_out must be"),
        (lambda: call(qkv[..., :192], q_w, k_w, cos, sin, 2, EPS, q_out, kv_out, 0), "does not match"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad()
        assert (q_out.q[:, :6] == 127).all() and q_out.q_scale[:, :6].isnan().all() and kv_out.isnan().all()


def test_triton_kv_finalize(kernels):
    """FP8 attention's K/V statistics finalize (``fp8.attention.quantize_qkv``): the rotated K mean over the valid keys
    and V's per-channel scale from the per-chunk partials, against float64."""
    from hyvideo_fp8.fp8.attention import quantize_qkv as qq

    dev = kernels.device
    for B, H, D, n_chunks in ((2, 3, 128, 37), (1, 2, 64, 5)):
        ksum = torch.randn(B * H, n_chunks, D) * 50
        vmax = torch.rand(B * H, n_chunks, D) * 4
        vmax[0, :, 5] = 0.0  # an all-zero V channel: the scale floor
        kv_len = torch.tensor([1000, 777][:B], dtype=torch.int32)
        k_mean = torch.full((B * H, D), float("nan"), device=dev)
        v_scale = torch.full((B * H, D), float("nan"), device=dev)
        qq._kv_finalize_kernel[(B * H,)](
            ksum.to(dev), vmax.to(dev), kv_len.to(dev), qq.hadamard(D, device=torch.device(dev)), k_mean, v_scale, H,
            n_chunks, D**-0.5, D=D, CHUNKS=32, MAX_CHUNKS=64, FLOOR=SCALE_FLOOR, FP8_MAX=448.0,
        )  # fmt: skip
        mean64 = ksum.double().sum(1) / kv_len.double().repeat_interleave(H)[:, None]
        ref = mean64 @ (qq.hadamard(D).double() * D**-0.5)
        assert rel_l2(k_mean.cpu(), ref) < 1e-6  # fp32 sums of 37 chunks: measured 2e-7 (interpreter)
        assert torch.equal(v_scale.cpu(), vmax.amax(1).clamp_min(SCALE_FLOOR) / 448.0)


def test_triton_bad_out_buffer_is_rejected_untouched(kernels):
    x = activations(1, 4, 64, torch.bfloat16).to(kernels.device)
    q_buf, s_buf = poisoned_fp8((1, 4, 64), kernels.device)
    with pytest.raises(ValueError, match="out s must be a contiguous torch.float32"):
        kernels.gelu(x, out=(q_buf, s_buf[:, :3]))
    assert q_buf.view(torch.uint8).eq(0x7F).all()
    with pytest.raises(ValueError, match="one-row-in-registers limit"):
        kernels.gelu(torch.zeros(1, 1, 40000, device=kernels.device))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_public_entry_points_route_to_the_kernels(kernels, monkeypatch):
    """With the Triton kernels named (as an sm_89+ GPU's plan does) every public function reaches its launcher and
    agrees with the reference; HYVIDEO_FP8_FUSED=0 is covered by test_env_var_forces_reference."""
    from hyvideo_fp8.fp8.triton import gelu_quant, norm_modulate_quant, qk_norm_rope

    launched = []
    for module in (gelu_quant, norm_modulate_quant, qk_norm_rope):
        for name in [n for n in vars(module) if n.endswith("_triton")]:
            launcher = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *a, _f=launcher, **kw: launched.append(_f) or _f(*a, **kw))
    dev = kernels.device
    x = activations(1, 3, 256, torch.bfloat16)
    m = torch.randn(1, 1, 256, dtype=torch.bfloat16)
    qkv, q_w, k_w, cos, sin = qkv_inputs(1, 4, 2, 64, 3)
    cases = [
        (fused.layernorm_modulate_quant, (x, m, m), fused.layernorm_modulate_quant_reference),
        (fused.gelu_tanh_quant, (x,), fused.gelu_tanh_quant_reference),
        (fused.concat_gelu_quant, (x[..., :64], x[..., 64:]), fused.concat_gelu_quant_reference),
        (fused.qk_norm_rope, (qkv, q_w, k_w, cos, sin, 3), fused.qk_norm_rope_reference),
    ]
    for public, args, reference in cases:
        got = public(*(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args), kernel=Kernel.TRITON)
        for g, r in zip(got, reference(*args)):
            fp8 = g.dtype == E4M3
            g, r = g.cpu().float(), r.float()
            if fp8:  # a different summation order can move a rare value across an e4m3 rounding boundary: one code
                # in these 768 one step (6-12 %) apart is ~5e-3 of rel. L2. So: few codes differ, and only by that.
                assert (g != r).float().mean().item() <= 0.01 and rel_l2(g, r) < 2e-2  # measured 0 to 1.1e-3
            else:
                assert rel_l2(g, r) < 1e-3
    assert len(launched) == len(cases)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_quantizing_producers_compile_without_graph_breaks():
    """Under torch.compile the producers are custom ops: a graph around them compiles in one piece (fullgraph) and
    computes what the eager call does."""
    from hyvideo_fp8.hunyuan.layers import _concat_gelu_quant, _gelu_tanh_quant, _layernorm_modulate_quant

    x, a = torch.randn(1, 24, 64), torch.randn(1, 24, 32)
    shift, scale = torch.randn(1, 1, 64) * 0.1, torch.randn(1, 1, 64) * 0.1

    def chain(x, a, shift, scale):
        q1, s1 = _layernorm_modulate_quant(x * 2, shift, scale, 1e-6, "torch")
        q2, s2 = _gelu_tanh_quant(x + 1, "torch")
        q3, s3 = _concat_gelu_quant(a, x, "torch")
        return q1.float() * s1, q2.float() * s2, q3.float() * s3

    compiled = torch.compile(chain, fullgraph=True)(x, a, shift, scale)
    eager = chain(x, a, shift, scale)
    for c, e in zip(compiled, eager):
        assert torch.equal(c, e)
