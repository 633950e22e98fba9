"""FP8Linear (W8A8, activation quantization included) vs a bf16 nn.Linear at HunyuanVideo's GEMM shapes (issue #2).

Per shape: the bf16 linear, the full FP8Linear forward (eager per-token quantization + row-wise ``_scaled_mm``),
the bare ``scaled_gemm`` on a pre-quantized input (with and without fast accumulation) and the quantization
alone; median of several runs after warm-up (CUDA events), TFLOP/s = 2*M*K*N / time, speed-ups over bf16, and
the relative L2 difference of the FP8 output from the bf16 one.

    python bench/bench_linear.py                 # GPU (sm_89+): 3 token counts x 6 (K, N) shapes
    python bench/bench_linear.py --tiny          # CPU smoke test with tiny shapes
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.nn.functional as F
from common import environment, load_pack, markdown_table, median, time_cuda, write_result

# Image tokens per sample: 480x848x61f, 544x960x129f, 720x1280x129f.
TOKENS = (25_440, 67_320, 118_800)
# (K, N): qkv, attn proj, MLP fc1, MLP fc2, single-block linear1, single-block linear2.
SHAPES = ((3072, 9216), (3072, 3072), (3072, 12288), (12288, 3072), (3072, 21504), (15360, 3072))
TINY_TOKENS = (37, 64)
TINY_SHAPES = tuple((k // 48, n // 48) for k, n in SHAPES)


def bench_shape(m: int, k: int, n: int, device: str, warmup: int, runs: int) -> dict:
    from hyvideo_fp8.fp8.gemm import scaled_gemm
    from hyvideo_fp8.fp8.linear import FP8Linear
    from hyvideo_fp8.fp8.quantize import quantize_rowwise

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, generator=g, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device=device, generator=g) / k**0.5).to(torch.bfloat16)
    b = (0.02 * torch.randn(n, device=device, generator=g)).to(torch.bfloat16)
    layer = FP8Linear.from_float(w, b, "fp8")
    x_q, x_s = quantize_rowwise(x)

    with torch.inference_mode():
        ref = F.linear(x, w, b)
        err = ((layer(x).float() - ref.float()).norm() / ref.float().norm()).item()
        del ref
        variants = {
            "bf16": lambda: F.linear(x, w, b),
            "fp8_linear": lambda: layer(x),
            "scaled_gemm": lambda: scaled_gemm(x_q, x_s, layer.weight, layer.weight_scale, layer.bias),
            "scaled_gemm_fast_accum": lambda: scaled_gemm(x_q, x_s, layer.weight, layer.weight_scale, layer.bias,
                                                          use_fast_accum=True),
            "quantize": lambda: quantize_rowwise(x),
        }
        ms = {name: median(time_cuda(fn, warmup=warmup, runs=runs)) * 1e3 for name, fn in variants.items()}
    flop = 2.0 * m * k * n
    return {
        "M": m, "K": k, "N": n, "ms": ms,
        "tflops": {name: flop / (t * 1e-3) / 1e12 for name, t in ms.items() if name != "quantize"},
        "speedup_fp8_linear": ms["bf16"] / ms["fp8_linear"],
        "speedup_scaled_gemm": ms["bf16"] / ms["scaled_gemm"],
        "quantize_share_of_gemm": ms["quantize"] / ms["scaled_gemm"],
        "rel_l2_vs_bf16": err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test of the harness)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts M")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()

    load_pack()
    from hyvideo_fp8.fp8.hardware import fp8_compute_support

    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    ok, reason = fp8_compute_support(device)
    if not ok:
        raise SystemExit(f"[hyvideo_fp8] cannot benchmark FP8 linears: {reason}")
    if device == "cpu" and not args.tiny:
        raise SystemExit("[hyvideo_fp8] full-size shapes need a GPU; use --tiny for a CPU smoke test")
    tokens = args.tokens or (TINY_TOKENS if args.tiny else TOKENS)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    runs = args.runs if args.runs is not None else (3 if args.tiny else 20)

    env = environment()
    env["device"] = device
    results = []
    for m in tokens:
        for k, n in shapes:
            results.append(bench_shape(m, k, n, device, warmup, runs))
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()

    header = ["M x K x N", "bf16 ms (TF/s)", "FP8Linear ms (TF/s)", "speed-up", "scaled_gemm ms (TF/s)",
              "gemm speed-up", "fast-accum gemm ms (TF/s)", "quantize ms (÷ gemm)", "rel L2 vs bf16"]
    def tf(v: float) -> str:
        return f"{v:.0f}" if v >= 10 else f"{v:.2g}"

    rows = []
    for r in results:
        ms, t = r["ms"], r["tflops"]
        rows.append([
            f"{r['M']} x {r['K']} x {r['N']}",
            f"{ms['bf16']:.3f} ({tf(t['bf16'])})",
            f"{ms['fp8_linear']:.3f} ({tf(t['fp8_linear'])})",
            f"{r['speedup_fp8_linear']:.2f}x",
            f"{ms['scaled_gemm']:.3f} ({tf(t['scaled_gemm'])})",
            f"{r['speedup_scaled_gemm']:.2f}x",
            f"{ms['scaled_gemm_fast_accum']:.3f} ({tf(t['scaled_gemm_fast_accum'])})",
            f"{ms['quantize']:.3f} ({r['quantize_share_of_gemm']:.0%})",
            f"{r['rel_l2_vs_bf16']:.4f}",
        ])
    table = markdown_table(header, rows)
    notes = (f"Median of {runs} runs after {warmup} warm-ups. FP8Linear = eager per-token e4m3fn quantization of "
             "the bf16 input + row-wise `_scaled_mm` (per-output-channel weight scales, bf16 output, fused bias, "
             "no fast accumulation). scaled_gemm = the same GEMM on a pre-quantized input. quantize = the eager "
             "per-token quantization alone (the part fused producer kernels remove).")
    if not args.tiny:  # a smoke test records nothing
        path = write_result("linear", env, table, {"results": results}, notes)
        print(f"wrote {path} and {path.with_suffix('.json')}")
    print(table)


if __name__ == "__main__":
    main()
