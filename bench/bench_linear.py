"""FP8 GEMMs (row-wise ``torch._scaled_mm``) vs a bf16 nn.Linear at HunyuanVideo's GEMM shapes.

Per shape, the variants are timed **interleaved**: every round calls each variant once (the order rotates from round
to round), so clock and thermal drift hit all of them alike; median over the timed rounds after warm-up rounds, CUDA
events. Variants: bf16 ``F.linear``; ``scaled_gemm`` (row-wise ``_scaled_mm``) precise and with fast accumulation
(``use_fast_accum=True``); ``--linear`` adds the full FP8Linear forward and the eager quantization. The faster of the
two FP8 GEMMs is marked best per shape. TFLOP/s = 2*M*K*N / time; speed-up = bf16 time / variant time.

Accuracy, on 2048 rows (the first and last 1024, so the partial last M tile is included):
    acc err: rel. L2 of the variant run with fp32 output against a float64 GEMM of the dequantized FP8 operands
             (isolates accumulation error: the operands are identical); for bf16, against float64 of the bf16 operands
    out err: the same with the bf16 output that the model uses (adds bf16 output rounding, ~1e-3)
    vs bf16: rel. L2 of the bf16 output against bf16 F.linear on the unquantized operands (FP8 quantization error)

A Triton persistent TMA GEMM was tried on 2026-11-29 and removed: it lost to ``_scaled_mm`` fast-accum on all 18
shapes (1.60-2.00x vs 1.93-2.10x bf16; see bench/results/linear-2026-11-29-h200-interleaved.md).

    python3 bench/bench_linear.py                 # GPU (sm_89+): 3 token counts x 6 shapes
    python3 bench/bench_linear.py --tiny          # CPU smoke test with tiny shapes
"""

from __future__ import annotations

import argparse
import functools
import gc
import time

import torch
import torch.nn.functional as F
from common import environment, load_pack, markdown_table, median, write_result

# Image tokens per sample: 480x848x61f, 544x960x129f, 720x1280x129f.
TOKENS = (25_440, 67_320, 118_800)
# (K, N): qkv, attn proj, MLP fc1, MLP fc2, single-block linear1, single-block linear2.
SHAPES = ((3072, 9216), (3072, 3072), (3072, 12288), (12288, 3072), (3072, 21504), (15360, 3072))
TINY_TOKENS = (37, 64)
TINY_SHAPES = tuple((k // 48, n // 48) for k, n in SHAPES)
ACC_ROWS = 2048
# FP8 GEMM variant -> use_fast_accum.
GEMMS = {"scaled_gemm": False, "scaled_gemm_fast_accum": True}


def interleaved_times(fns: dict, warmup: int, runs: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, the variants alternating within every round (rotating order)."""
    names = list(fns)
    cuda = torch.cuda.is_available()
    times = {n: [] for n in names}
    for r in range(warmup + runs):
        order = names[r % len(names):] + names[:r % len(names)]
        pending = []
        for n in order:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[n]()
                end.record()
                pending.append((n, start, end))
            else:
                t0 = time.perf_counter()
                fns[n]()
                if r >= warmup:
                    times[n].append(time.perf_counter() - t0)
        if cuda:
            torch.cuda.synchronize()
            if r >= warmup:
                for n, start, end in pending:
                    times[n].append(start.elapsed_time(end) / 1e3)
    return times


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def bench_shape(m: int, k: int, n: int, device: str, warmup: int, runs: int, with_linear: bool) -> dict:
    from hyvideo_fp8.fp8.gemm import scaled_gemm
    from hyvideo_fp8.fp8.linear import FP8Linear
    from hyvideo_fp8.fp8.quantize import quantize_rowwise

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, generator=g, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device=device, generator=g) / k**0.5).to(torch.bfloat16)
    b = (0.02 * torch.randn(n, device=device, generator=g)).to(torch.bfloat16)
    layer = FP8Linear.from_float(w, b, "fp8")
    x_q, x_s = quantize_rowwise(x)
    w_q, w_s, bias = layer.weight, layer.weight_scale, layer.bias

    def gemm(fast: bool, rows=None, out_dtype=torch.bfloat16) -> torch.Tensor:
        xq, xs = (x_q, x_s) if rows is None else (x_q[rows], x_s[rows])
        return scaled_gemm(xq, xs, w_q, w_s, bias, out_dtype=out_dtype, use_fast_accum=fast)

    head = min(m, ACC_ROWS // 2)
    rows = torch.cat([torch.arange(head), torch.arange(max(m - ACC_ROWS // 2, head), m)]).to(device)

    with torch.inference_mode():
        ref_bf16 = F.linear(x[rows], w, b)
        ref64_q = (x_q[rows].double() * x_s[rows].double()) @ (w_q.double() * w_s.double()[:, None]).T + b.double()
        ref64_bf16 = x[rows].double() @ w.double().T + b.double()
        acc = {"bf16": {"acc_err": rel_l2(ref_bf16, ref64_bf16), "out_err": rel_l2(ref_bf16, ref64_bf16),
                        "vs_bf16": 0.0}}
        del ref64_bf16
        fns = {"bf16": lambda: F.linear(x, w, b)}
        for name, fast in GEMMS.items():
            out = gemm(fast)[rows]  # the full-size call that is timed, so the same kernel choice
            acc[name] = {"acc_err": rel_l2(gemm(fast, rows, torch.float32), ref64_q),
                         "out_err": rel_l2(out, ref64_q), "vs_bf16": rel_l2(out, ref_bf16)}
            del out
            fns[name] = functools.partial(gemm, fast)
        if with_linear:
            fns["fp8_linear"] = lambda: layer(x)
            fns["quantize"] = lambda: quantize_rowwise(x)
            out = layer(x[rows])
            acc["fp8_linear"] = {"acc_err": float("nan"), "out_err": rel_l2(out, ref64_q),
                                 "vs_bf16": rel_l2(out, ref_bf16)}
        times = interleaved_times(fns, warmup, runs)
    ms = {name: median(ts) * 1e3 for name, ts in times.items()}
    flop = 2.0 * m * k * n
    return {
        "M": m, "K": k, "N": n, "ms": ms,
        "tflops": {name: flop / (t * 1e-3) / 1e12 for name, t in ms.items() if name != "quantize"},
        "speedup": {name: ms["bf16"] / t for name, t in ms.items() if name != "quantize"},
        "accuracy": acc,
        "best": min(GEMMS, key=ms.get),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test of the harness)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts M")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (each variant once per round)")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds")
    parser.add_argument("--linear", action="store_true", help="also time the FP8Linear forward and the quantization")
    args = parser.parse_args()
    t_start = time.perf_counter()

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
            t0 = time.perf_counter()
            r = bench_shape(m, k, n, device, warmup, runs, args.linear)
            results.append(r)
            print(f"[bench_linear] {m}x{k}x{n}: {time.perf_counter() - t0:.1f} s, best {r['best']} "
                  f"{r['speedup'][r['best']]:.2f}x", flush=True)
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()

    def tf(v: float) -> str:
        return f"{v:.0f}" if v >= 10 else f"{v:.2g}"

    def cell(r: dict, name: str) -> str:
        return f"{r['ms'][name]:.3f} ({tf(r['tflops'][name])}, {r['speedup'][name]:.2f}x)"

    def short(name: str) -> str:
        return name.replace("scaled_gemm_fast_accum", "sg-fast").replace("scaled_gemm", "sg")

    # Detail: every variant of every shape.
    detail_rows = []
    for r in results:
        for name in r["ms"]:
            a = r["accuracy"].get(name, {})
            detail_rows.append([
                f"{r['M']} x {r['K']} x {r['N']}", short(name) + (" **best**" if name == r["best"] else ""),
                f"{r['ms'][name]:.3f}", tf(r["tflops"][name]) if name != "quantize" else "-",
                f"{r['speedup'][name]:.2f}x" if name != "quantize" else "-",
                *(f"{a[key]:.2e}" if key in a else "-" for key in ("acc_err", "out_err", "vs_bf16")),
            ])
    detail = markdown_table(["M x K x N", "variant", "ms", "TF/s", "speed-up", "acc err (fp32 out)", "out err (bf16)",
                             "vs bf16"], detail_rows)

    header = ["M x K x N", "bf16 ms (TF/s)", "sg precise ms (TF/s, x)", "sg fast ms (TF/s, x)", "best FP8 GEMM",
              "acc err sg / sg-fast"]
    rows = [[
        f"{r['M']} x {r['K']} x {r['N']}",
        f"{r['ms']['bf16']:.3f} ({tf(r['tflops']['bf16'])})",
        cell(r, "scaled_gemm"), cell(r, "scaled_gemm_fast_accum"),
        f"**{short(r['best'])}** ({r['speedup'][r['best']]:.2f}x)",
        " / ".join(f"{r['accuracy'][nm]['acc_err']:.2e}" for nm in GEMMS),
    ] for r in results]
    table = markdown_table(header, rows)
    wall = time.perf_counter() - t_start
    notes = (f"Median of {runs} interleaved rounds after {warmup} warm-up rounds (each round calls every variant "
             "once, rotating the order). sg = `scaled_gemm` (row-wise `_scaled_mm`, per-token x per-channel scales, "
             "fused bias, bf16 out) on a pre-quantized input; sg fast = `use_fast_accum=True`. x = speed-up over "
             "bf16 F.linear. acc err = rel. L2 vs a float64 GEMM of the dequantized FP8 operands with fp32 output, "
             f"on {ACC_ROWS} rows (first and last 1024); for bf16 vs float64 of its own operands. "
             f"Wall time {wall:.0f} s.")
    if not args.tiny:  # a smoke test records nothing
        path = write_result("linear", env, table + "\n\n## All variants\n\n" + detail, {"results": results}, notes)
        print(f"wrote {path} and {path.with_suffix('.json')}")
    print(detail)
    print()
    print(notes)
    print()
    print(table)


if __name__ == "__main__":
    main()
