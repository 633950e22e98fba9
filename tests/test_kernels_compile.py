"""Offline compiles of the shipped Triton kernels for Ada (sm_89) and Hopper (sm_90): no GPU needed, only Triton's
nvidia backend and its ptxas.

The launchers themselves run on small CPU tensors with each kernel's launch intercepted, so every kernel is
compiled with the arguments, specialisation and launch options (config by capability included) that a real launch
on that GPU would use. This catches what only shows on the GPU otherwise: a kernel that does not compile for an
architecture, needs more shared memory than a block may have there (99 KB on Ada), or spills.

The compiles run in a subprocess: other test modules put Triton into interpreter mode on machines without a GPU,
and an interpreted kernel cannot be compiled.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPABILITIES = ((8, 9), (9, 0))
HEAD_DIM = 128
WIDTHS = {"layernorm": 3072, "gelu": 12288, "concat": (3072, 12288), "heads": 24}  # HunyuanVideo (13B)


# ---------------------------------------------------------------- worker (runs in the subprocess)

def _launches(run, kernels):
    """Call ``run()`` with each kernel's launch replaced by a recorder; returns ``[(kernel, args, kwargs)]``."""
    calls = []
    for kernel in kernels:
        kernel.run = lambda *args, kernel=kernel, grid, warmup, **kwargs: calls.append((kernel, args, kwargs))
    try:
        run()
    finally:
        for kernel in kernels:
            del kernel.run
    return calls


def _compile(kernel, args, kwargs, capability):
    """Compile one recorded launch for ``capability`` the way ``kernel[grid](*args, **kwargs)`` would on that GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
    backend = CUDABackend(target)
    bound, specialization, options = create_function_from_signature(kernel.signature, kernel.params, backend)(
        *args, **kwargs
    )
    options, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, options)
    source = ASTSource
    if type(kernel).__name__ == "GluonJITFunction":
        from triton.experimental.gluon._runtime import GluonASTSource as source
    return triton.compile(source(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def _resources(compiled) -> dict:
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    finally:
        os.unlink(f.name)
    return {"shared": compiled.metadata.shared, "regs": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack": int(re.search(r"STACK:(\d+)", usage).group(1))}  # fmt: skip


def _attention_launches(capability, dtype):
    import torch

    from hyvideo_fp8.fp8.attention import triton_kernel as tk
    from hyvideo_fp8.fp8.attention.quantize_qkv import quantize_qkv_torch

    q = torch.randn(1, 2, 200, HEAD_DIM, dtype=dtype)
    qkv = quantize_qkv_torch(q, q, q, None, 0.1)
    run = lambda: tk.attention_triton(qkv, torch.empty_like(q), tk.config_for(capability))
    return _launches(run, [tk._fp8_attention_kernel])


def _gluon_launches(capability, dtype):
    import torch

    from hyvideo_fp8.fp8.attention import gluon_kernel as gk
    from hyvideo_fp8.fp8.attention.quantize_qkv import quantize_qkv_torch

    if not gk.gluon_supported(capability, HEAD_DIM)[0] or dtype != torch.bfloat16:
        return []  # Hopper only; the kernel reads quantized buffers, so the input dtype changes nothing
    q = torch.randn(1, 2, 200, HEAD_DIM, dtype=dtype)
    qkv = quantize_qkv_torch(q, q, q, None, 0.1, interleave_k=True)
    return _launches(lambda: gk.attention_gluon(qkv, torch.empty_like(q)), [gk._fp8_attention_gluon_kernel])


def _quantize_launches(capability, dtype):
    import torch

    from hyvideo_fp8.fp8.attention import quantize_qkv as qq

    if not qq.triton_quantize_fits(dtype, HEAD_DIM, capability):
        return []  # fp8_attention quantizes in torch there (checked in test_quantizer_routing)
    x = torch.randn(1, 200, 3, HEAD_DIM, dtype=dtype).transpose(1, 2)  # [B, H, L, D] view of [B, L, H, D]
    mask = torch.ones(1, 200, dtype=torch.bool)
    mask[:, -7:] = False
    kernels = [qq._kv_stats_kernel, qq._kv_finalize_kernel, qq._quantize_q_kernel, qq._quantize_kv_kernel]
    run = lambda: [qq.quantize_qkv_triton(x, x, x, mask, 0.1, interleave_k=i) for i in (False, True)]
    return _launches(run, kernels)


def _fused_launches(capability, dtype):
    import torch

    from hyvideo_fp8.fp8.attention.quantize_qkv import empty_quantized_q
    from hyvideo_fp8.fp8.triton import gelu_quant as gq
    from hyvideo_fp8.fp8.triton import norm_modulate_quant as nm
    from hyvideo_fp8.fp8.triton import qk_norm_rope as qr

    hidden, (c1, c2), heads = WIDTHS["layernorm"], WIDTHS["concat"], WIDTHS["heads"]
    linear1 = torch.randn(1, 4, 3 * hidden + c2, dtype=dtype)  # the single block's [qkv | mlp] output
    x, mod = torch.randn(1, 4, hidden, dtype=dtype), torch.randn(1, 1, hidden, dtype=dtype)
    w, table = torch.ones(HEAD_DIM, dtype=dtype), torch.ones(2, HEAD_DIM // 2)

    def run():
        nm.layernorm_modulate_quant_triton(x, mod, mod)
        gq.gelu_tanh_quant_triton(torch.randn(1, 4, WIDTHS["gelu"], dtype=dtype))
        gq.concat_gelu_quant_triton(linear1[..., :c1], linear1[..., 3 * hidden:])
        qr.qk_norm_rope_triton(linear1[..., : 3 * heads * HEAD_DIM], w, w, table, table, 2)
        if dtype != torch.float32:  # the quantizing prologue takes 16-bit inputs only
            q_out = empty_quantized_q(1, heads, 4, HEAD_DIM, HEAD_DIM**-0.5, torch.device("cpu"))
            kv_out = torch.empty(2, 1, heads, 4, HEAD_DIM, dtype=dtype)
            qr.qk_norm_rope_quant_q_triton(linear1[..., : 3 * heads * HEAD_DIM], w, w, table, table, 2, 1e-6, q_out,
                                           kv_out, 0)  # fmt: skip

    kernels = [nm._layernorm_modulate_quant_kernel, gq._gelu_tanh_quant_kernel, gq._concat_gelu_quant_kernel,
               qr._qk_norm_rope_kernel, qr._qk_norm_rope_quant_q_kernel]  # fmt: skip
    return _launches(run, kernels)


def _worker() -> dict:
    """Compile everything; ``{"skip": reason}`` where this Triton cannot compile for NVIDIA GPUs offline."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas_version

        get_ptxas_version(90)
    except Exception as e:  # noqa: BLE001 - any failure here means "no offline NVIDIA compiler"
        return {"skip": f"Triton's NVIDIA backend or ptxas is not usable ({type(e).__name__}: {e})"}
    sys.path.insert(0, str(ROOT))
    from pack_path import load_pack

    load_pack()
    import torch

    results = {}
    for capability in CAPABILITIES:
        for dtype in (torch.bfloat16, torch.float32):
            for launches in (_attention_launches, _gluon_launches, _quantize_launches, _fused_launches):
                for kernel, args, kwargs in launches(capability, dtype):
                    key = f"{kernel.fn.__name__}/sm_{capability[0]}{capability[1]}/{str(dtype)[6:]}"
                    while key in results:  # the same kernel with other constexprs
                        key += "#"
                    try:
                        results[key] = _resources(_compile(kernel, args, kwargs, capability))
                    except Exception as e:  # noqa: BLE001 - reported per kernel by the tests
                        results[key] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
    return results


# ---------------------------------------------------------------- tests

@functools.cache
def _results() -> dict:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode:
        pytest.fail(f"the compile worker failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    return _results()


def _limit(key: str) -> int:
    from hyvideo_fp8.fp8.hardware import max_shared_memory_per_block

    sm = re.search(r"/sm_(\d)(\d)/", key)
    return max_shared_memory_per_block((int(sm.group(1)), int(sm.group(2))))


def test_every_kernel_was_compiled(results):
    from hyvideo_fp8.fp8.attention.gluon_kernel import gluon_supported

    names = {key.split("/")[0] for key in results}
    gluon = {"_fp8_attention_gluon_kernel"} if gluon_supported((9, 0), HEAD_DIM)[0] else set()
    assert names == {"_fp8_attention_kernel", "_kv_stats_kernel", "_kv_finalize_kernel", "_quantize_q_kernel",
                     "_quantize_kv_kernel",
                     "_layernorm_modulate_quant_kernel", "_gelu_tanh_quant_kernel", "_concat_gelu_quant_kernel",
                     "_qk_norm_rope_kernel", "_qk_norm_rope_quant_q_kernel"} | gluon  # fmt: skip
    assert {key.split("/")[1] for key in results} == {"sm_89", "sm_90"}


def test_kernels_compile_and_fit_shared_memory(results):
    failed = {key: r["error"] for key, r in results.items() if "error" in r}
    assert not failed, f"kernels that do not compile: {failed}"
    over = {key: (r["shared"], _limit(key)) for key, r in results.items() if r["shared"] > _limit(key)}
    assert not over, f"(shared bytes, per-block limit) over the architecture's limit: {over}"


def test_gluon_kernel_fits_three_warpgroups_per_sm(results):
    """Its speed rests on three 168-register warpgroups sharing an SM without spills."""
    gluon = results.get("_fp8_attention_gluon_kernel/sm_90/bfloat16")
    if gluon is None:
        pytest.skip("Triton's Gluon Hopper dialect is not importable")
    assert gluon["regs"] <= 168 and gluon["stack"] == 0, gluon
    assert gluon["shared"] <= _limit("x/sm_90/"), gluon


def test_quantizing_prologue_does_not_spill(results):
    """A [4 x 32 heads, 128] query tile, its rotation dot and the k/v tiles of 4 tokens in 8 warps."""
    keys = [key for key in results if key.startswith("_qk_norm_rope_quant_q_kernel/")]
    assert {key.split("/")[1] for key in keys} == {"sm_89", "sm_90"}
    assert all(results[key]["stack"] == 0 for key in keys), {key: results[key] for key in keys}


def test_attention_kernel_does_not_spill(results):
    attention = {key: r for key, r in results.items() if key.startswith("_fp8_attention_kernel/")}
    assert "_fp8_attention_kernel/sm_90/bfloat16" in attention and "_fp8_attention_kernel/sm_89/bfloat16" in attention
    spills = {key: r["stack"] for key, r in attention.items() if r["stack"]}
    assert not spills, f"attention kernel variants with a stack frame (register spills), in bytes: {spills}"


def test_quantizer_shared_memory_estimate(results):
    """``rotation_shared_bytes`` decides where fp8_attention quantizes in torch; it must cover the compiled kernels."""
    import torch

    from hyvideo_fp8.fp8.attention.quantize_qkv import rotation_shared_bytes

    for key, r in results.items():
        name, _, dtype = key.rstrip("#").split("/")
        if name in ("_quantize_q_kernel", "_quantize_kv_kernel"):
            assert r["shared"] <= rotation_shared_bytes(getattr(torch, dtype), HEAD_DIM), key


def test_quantizer_routing():
    import torch

    from hyvideo_fp8.fp8.attention.quantize_qkv import triton_quantize_fits

    assert triton_quantize_fits(torch.bfloat16, HEAD_DIM, (8, 9)) and triton_quantize_fits(torch.float16, 128, (8, 9))
    assert not triton_quantize_fits(torch.float32, HEAD_DIM, (8, 9))  # 128 KB > 99 KB: torch quantizer on Ada
    assert triton_quantize_fits(torch.float32, HEAD_DIM, (9, 0))


def test_attention_config_by_capability():
    pytest.importorskip("triton")
    from hyvideo_fp8.fp8.attention.triton_kernel import ADA_CONFIG, DEFAULT_CONFIG, config_for

    assert config_for((9, 0)) is DEFAULT_CONFIG and DEFAULT_CONFIG.tma
    assert config_for((8, 9)) is ADA_CONFIG and not ADA_CONFIG.tma


if __name__ == "__main__":
    print(json.dumps(_worker()))
