"""The Triton FP8 GEMM (fp8/triton/scaled_gemm.py): import safety without a GPU, argument checks, and the kernel's
numerics under Triton's CPU interpreter (or on the GPU when there is one) against a float64 GEMM of the dequantized
FP8 operands.

Bounds (relative L2): the interpreter multiplies exactly and accumulates in fp32, so the fp32 output is within 1e-5
of float64 (measured 4e-8); a bf16 output adds output rounding, bound 5e-3 (measured 3.3e-3: the interpreter
truncates fp32 -> bf16; a GPU rounds to nearest, ~1.6e-3). On a GPU the fp32 bound is 2e-3, as the fast configs
also carry the tensor core's reduced-precision accumulation.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") and "triton" not in sys.modules and not torch.cuda.is_available():
    # Without a GPU, Triton can only interpret; the switch must be set before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hyvideo_fp8.fp8.triton import scaled_gemm as sg  # noqa: E402  (must follow the TRITON_INTERPRET switch)

E4M3 = torch.float8_e4m3fn


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


def quantized_operands(m: int, k: int, n: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    b = 0.1 * torch.randn(n, generator=g)
    xs = x.abs().amax(1, keepdim=True) / 448
    ws = w.abs().amax(1) / 448
    xq, wq = (x / xs).to(E4M3), (w / ws[:, None]).to(E4M3)
    ref = (xq.double() * xs.double()) @ (wq.double() * ws.double()[:, None]).T
    b = b.to(torch.bfloat16)
    return [t.to(device) for t in (xq, xs, wq, ws, b)], ref, b.double()


# ---------------------------------------------------------------- no GPU needed


def test_module_imports_and_lists_configs():
    assert sg.CONFIGS and sg.DEFAULT_FAST.name in sg.CONFIGS and sg.DEFAULT_PRECISE.name in sg.CONFIGS
    assert not sg.DEFAULT_FAST.precise and sg.DEFAULT_PRECISE.precise
    for name, cfg in sg.CONFIGS.items():
        assert cfg.name == name and not cfg.warp_specialize  # ignored on sm_90 by Triton 3.6: not swept
    if importlib.util.find_spec("triton") is not None:
        assert sg.TRITON_IMPORT_ERROR is None


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="promote"):
        sg.GemmConfig(promote="sometimes")
    with pytest.raises(ValueError, match="power of two"):
        sg.GemmConfig(block_n=96)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cpu_tensors_are_refused_with_a_reason():
    ok, reason = sg.triton_gemm_support("cpu")
    assert not ok and "cpu" in reason
    (xq, xs, wq, ws, b), _, _ = quantized_operands(16, 32, 16, "cpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        sg.triton_scaled_gemm(xq, xs, wq, ws, b)


@pytest.mark.parametrize("change,match", [
    (lambda a: {**a, "w_q": a["w_q"][:, :16]}, "inner dims"),
    (lambda a: {**a, "x_q": a["x_q"].float()}, "FP8"),
    (lambda a: {**a, "x_scale": a["x_scale"][:3]}, "x_scale"),
    (lambda a: {**a, "w_scale": a["w_scale"][:3]}, "w_scale"),
    (lambda a: {**a, "bias": a["bias"][:3]}, "bias"),
])
def test_argument_checks(change, match):
    (xq, xs, wq, ws, b), _, _ = quantized_operands(16, 32, 16, "cpu")
    args = change({"x_q": xq, "x_scale": xs, "w_q": wq, "w_scale": ws, "bias": b, "out_dtype": torch.bfloat16})
    with pytest.raises(ValueError, match=match):
        sg._check(*args.values())


# ---------------------------------------------------------------- the kernel (interpreter on CPU, or the GPU)


def _triton_imported_without_interpreter() -> bool:
    if "triton" not in sys.modules:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return not isinstance(sys.modules["triton"].language.standard.max, InterpretedFunction)


def _index_of_one_element_arrays(original):
    """Triton 3.6's interpreter turns a scalar tensor (e.g. ``tl.program_id``, a 1-element array) into a Python int
    with ``int(array)``, which NumPy >= 2.4 refuses for 1-D arrays; ``range(start_pid, ...)`` then fails."""

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    return patch


@pytest.fixture(scope="module")
def device():
    if sg.TRITON_IMPORT_ERROR is not None:
        pytest.skip(f"Triton not importable: {sg.TRITON_IMPORT_ERROR}")
    if torch.cuda.is_available():
        ok, reason = sg.triton_gemm_support("cuda")
        if not ok:
            pytest.skip(reason)
        yield "cuda"
        return
    if _triton_imported_without_interpreter():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: "
                    "test_kernel_in_a_fresh_interpreter_process runs these tests instead")
    from triton.runtime import interpreter

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpreter, "_patch_lang_tensor", _index_of_one_element_arrays(interpreter._patch_lang_tensor))
        yield "cpu"


SMALL = {p: sg.GemmConfig(block_m=64, block_n=64, block_k=64, group_m=2, num_stages=2, num_warps=4, promote=p)
         for p in sg.PROMOTE_MODES}


@pytest.mark.parametrize("promote", sg.PROMOTE_MODES)
@pytest.mark.parametrize("out_dtype,with_bias,subtile", [
    (torch.float32, True, True), (torch.bfloat16, True, False), (torch.bfloat16, False, True),
])
def test_triton_gemm_matches_float64(device, promote, out_dtype, with_bias, subtile):
    """M = 150 leaves a partial last row tile (TMA zero-fills the loads and clips the store); 3 programs walk
    3 x 3 tiles (persistent loop, grouped order) and 6 K tiles."""
    m, k, n = 150, 384, 192
    (xq, xs, wq, ws, b), ref, b64 = quantized_operands(m, k, n, device)
    cfg = sg.GemmConfig(**{**SMALL[promote].__dict__, "epilogue_subtile": subtile})
    out = torch.full((m, n), float("nan"), dtype=out_dtype, device=device)
    sg._launch(xq, xs.reshape(-1).contiguous(), wq, ws.contiguous(), b if with_bias else None, out, cfg, 3)
    assert not out.isnan().any()  # every element written
    ref = ref + b64 if with_bias else ref
    bound = (1e-5 if device == "cpu" else 2e-3) if out_dtype == torch.float32 else 5e-3
    assert rel_l2(out, ref) < bound


def test_triton_gemm_real_config_and_public_entry(device):
    """The benchmark's default config (128x256x128, 8 warps), through the public function on a GPU."""
    m, k, n = 130, 256, 256
    (xq, xs, wq, ws, b), ref, b64 = quantized_operands(m, k, n, device, seed=1)
    if device == "cuda":
        out = sg.triton_scaled_gemm(xq, xs, wq, ws.reshape(1, -1), b, out_dtype=torch.float32)
    else:
        out = torch.empty((m, n), dtype=torch.float32)
        sg._launch(xq, xs.reshape(-1).contiguous(), wq, ws.contiguous(), b, out, sg.DEFAULT_FAST, 2)
    assert rel_l2(out, ref + b64) < (1e-5 if device == "cpu" else 2e-3)


def test_kernel_in_a_fresh_interpreter_process():
    """In a whole-suite run another test module may import triton first; the kernel tests above then skip here and
    run in a fresh process, where this file sets TRITON_INTERPRET=1 before triton is imported."""
    if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
        pytest.skip("no triton, or a GPU runs the kernel tests directly")
    if not _triton_imported_without_interpreter():
        pytest.skip("the kernel tests ran in this process")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__,
                           "-k", "triton_gemm"], cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0 and "skipped" not in summary, done.stdout[-4000:]
