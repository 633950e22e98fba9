"""Fused FP8 producer kernels (fp8/fused.py) on the GPU: correctness at full size, then time against eager torch.

Per kernel and token count M: fresh random bf16 inputs (outlier channels included), the Triton kernel writing into
NaN-poisoned buffers checked against the torch reference (scales, FP8 codes, dequantized error vs float64 on a row
sample); then median times (triton.testing.do_bench) of the eager unfused chain the model would otherwise run
(bf16 producer + ``quantize_rowwise``), the bf16 producer alone (what a bf16 model pays), optionally the eager
chain under torch.compile (dynamic shapes, one compile per kernel, compile time reported), and the Triton kernel,
with achieved bandwidth from the fewest bytes each must move (inputs read once, outputs written once).

    python bench/bench_fused.py --compile           # H200: M = 25,440 / 67,320 / 118,800, all kernels
    python bench/bench_fused.py --tokens 4096        # quick check
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from common import environment, load_pack, markdown_table, write_result

HIDDEN, MLP, HEADS, HEAD_DIM, TEXT_TOKENS = 3072, 12288, 24, 128, 256
NOMINAL_BW = 4.3e12  # bytes/s, the H200's nominal HBM bandwidth, the yardstick of the bandwidth column
SAMPLE_ROWS = 2048
DEVICE = "cuda"  # --device cpu: dry run of the harness with TRITON_INTERPRET=1 (times meaningless)


@dataclass
class Case:
    name: str
    channels: str
    make: Callable[[int, torch.Generator], dict]  # (M, generator) -> fresh inputs
    triton: Callable  # (inputs, num_warps, out) -> outputs (into ``out`` when given)
    poison: Callable  # inputs -> NaN-filled output buffers for the correctness run
    reference: Callable  # inputs -> reference outputs
    eager: Callable  # inputs -> unfused FP8 producer
    bf16: Callable  # inputs -> bf16 producer only
    bytes: Callable[[int], int]
    check: Callable  # (inputs, outputs, reference outputs) -> metrics dict
    warps: tuple[int, ...]


def activations(M: int, C: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(1, M, C, device=DEVICE, dtype=torch.bfloat16, generator=gen)
    x *= torch.rand(1, M, 1, device=DEVICE, generator=gen).mul_(3).add_(0.5).to(torch.bfloat16)
    x[..., torch.randperm(C, device=DEVICE, generator=gen)[:8]] *= 40  # outlier channels
    return x


def poisoned(shape):
    return (torch.full(shape, 0x7F, dtype=torch.uint8, device=DEVICE).view(torch.float8_e4m3fn),
            torch.full((*shape[:-1], 1), float("nan"), device=DEVICE))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def fp8_metrics(q, s, q_ref, s_ref, ref64_rows: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Triton vs the torch reference over all rows; both vs float64 on a random row sample."""
    M = q.shape[1]
    rows = torch.randperm(M, device=DEVICE)[:SAMPLE_ROWS]
    ref64 = ref64_rows(rows)
    deq = lambda qq, ss: qq[0, rows].double() * ss[0, rows].double()
    return {
        "nan_left": int(torch.isnan(q.float()).sum() + torch.isnan(s).sum()),
        "scale_max_rel_diff": ((s - s_ref).abs() / s_ref).max().item(),
        "codes_differ": (q.view(torch.uint8) != q_ref.view(torch.uint8)).float().mean().item(),
        "rel_l2_vs_reference": rel_l2(q.float() * s, q_ref.float() * s_ref),
        "rel_l2_vs_f64": rel_l2(deq(q, s), ref64),
        "reference_rel_l2_vs_f64": rel_l2(deq(q_ref, s_ref), ref64),
    }


def fp8_ok(m: dict) -> bool:
    return (m["nan_left"] == 0 and m["scale_max_rel_diff"] < 1e-5 and m["codes_differ"] < 1e-3
            and m["rel_l2_vs_f64"] < m["reference_rel_l2_vs_f64"] * 1.01 + 1e-6)


def gelu64(x):
    x = x.double()
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def build_cases(fused, kern) -> list[Case]:
    from hyvideo_fp8.fp8.quantize import quantize_rowwise

    ln_k, gelu_k, qk_k = kern

    def ln_make(M, gen):
        return {"x": activations(M, HIDDEN, gen),
                "shift": torch.randn(1, 1, HIDDEN, device=DEVICE, generator=gen).mul_(0.5).bfloat16(),
                "scale": torch.randn(1, 1, HIDDEN, device=DEVICE, generator=gen).mul_(0.5).bfloat16()}

    def ln_bf16(i):  # the model's unfused path: LayerNorm in fp32, modulation in bf16
        return torch.addcmul(i["shift"], F.layer_norm(i["x"].float(), (HIDDEN,), eps=1e-6).bfloat16(), 1 + i["scale"])

    def ln64(i, rows):
        x = i["x"][0, rows].double()
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
        return x * (1 + i["scale"][0].double()) + i["shift"][0].double()

    def concat_make(M, gen):  # the single block's MLP half is a view into linear1's [M, 3*3072 + 12288] output
        return {"attn_out": activations(M, HIDDEN, gen),
                "mlp_act": activations(M, 3 * HIDDEN + MLP, gen)[..., 3 * HIDDEN:]}

    def qk_make(M, gen):
        ang = torch.rand(M - TEXT_TOKENS, HEAD_DIM // 2, device=DEVICE, generator=gen, dtype=torch.float64) * 100
        return {"qkv": activations(M, 3 * HEADS * HEAD_DIM, gen),
                "q_weight": torch.rand(HEAD_DIM, device=DEVICE, generator=gen).add_(0.5).bfloat16(),
                "k_weight": torch.rand(HEAD_DIM, device=DEVICE, generator=gen).add_(0.5).bfloat16(),
                "cos": ang.cos().float(), "sin": ang.sin().float(), "n_rope_tokens": M - TEXT_TOKENS}

    def qk_poison(i):
        B, L, _ = i["qkv"].shape
        return torch.full((3, B, HEADS, L, HEAD_DIM), float("nan"), device=DEVICE, dtype=torch.bfloat16)

    qk_reference = lambda i: fused.qk_norm_rope_reference(**i)

    def qk_check(i, outs, refs):
        M = i["qkv"].shape[1]
        toks = torch.randperm(M, device=DEVICE)[:SAMPLE_ROWS]
        n = i["n_rope_tokens"]
        x = i["qkv"][0, toks].double().view(-1, 3, HEADS, HEAD_DIM)
        metrics = {"nan_left": sum(int(torch.isnan(o).sum()) for o in outs),
                   "v_exact": bool(torch.equal(outs[2], refs[2]))}
        for idx, (name, w) in enumerate((("q", i["q_weight"]), ("k", i["k_weight"]))):
            y = x[:, idx] / torch.sqrt(x[:, idx].square().mean(-1, keepdim=True) + 1e-6) * w.double()
            rope = toks < n
            c = torch.where(rope[:, None], i["cos"].double()[toks.clamp(max=max(n - 1, 0))], 1.0)[:, None]
            s = torch.where(rope[:, None], i["sin"].double()[toks.clamp(max=max(n - 1, 0))], 0.0)[:, None]
            e, o = y[..., 0::2], y[..., 1::2]
            y64 = torch.stack((e * c - o * s, e * s + o * c), -1).flatten(-2)  # [tokens, H, D]
            metrics[f"{name}_rel_l2_vs_reference"] = rel_l2(outs[idx], refs[idx])
            metrics[f"{name}_rel_l2_vs_f64"] = rel_l2(outs[idx][0][:, toks].transpose(0, 1), y64)
            metrics[f"{name}_reference_rel_l2_vs_f64"] = rel_l2(refs[idx][0][:, toks].transpose(0, 1), y64)
        return metrics

    def quant_check(ref64):
        return lambda i, o, r: fp8_metrics(*o, *r, lambda rows: ref64(i, rows))

    return [
        Case("layernorm_modulate_quant", "3072", ln_make,
             lambda i, w, out: ln_k(**i, out=out, num_warps=w), lambda i: poisoned(i["x"].shape),
             lambda i: fused.layernorm_modulate_quant_reference(**i),
             lambda i: quantize_rowwise(ln_bf16(i)), ln_bf16,
             lambda M: M * HIDDEN * 3 + 4 * M, quant_check(ln64), (2, 4, 8)),
        Case("gelu_tanh_quant", "12288", lambda M, gen: {"x": activations(M, MLP, gen)},
             lambda i, w, out: gelu_k[0](**i, out=out, num_warps=w), lambda i: poisoned(i["x"].shape),
             lambda i: fused.gelu_tanh_quant_reference(**i),
             lambda i: quantize_rowwise(F.gelu(i["x"], approximate="tanh")),
             lambda i: F.gelu(i["x"], approximate="tanh"),
             lambda M: M * MLP * 3 + 4 * M, quant_check(lambda i, rows: gelu64(i["x"][0, rows])), (4, 8, 16)),
        Case("concat_gelu_quant", "3072+12288", concat_make,
             lambda i, w, out: gelu_k[1](**i, out=out, num_warps=w),
             lambda i: poisoned((1, i["attn_out"].shape[1], HIDDEN + MLP)),
             lambda i: fused.concat_gelu_quant_reference(**i),
             lambda i: quantize_rowwise(torch.cat([i["attn_out"], F.gelu(i["mlp_act"], approximate="tanh")], -1)),
             lambda i: torch.cat([i["attn_out"], F.gelu(i["mlp_act"], approximate="tanh")], -1),
             lambda M: M * (HIDDEN + MLP) * 3 + 4 * M,
             quant_check(lambda i, r: torch.cat([i["attn_out"][0, r].double(), gelu64(i["mlp_act"][0, r])], -1)),
             (4, 8, 16)),
        Case("qk_norm_rope", "3x24x128", qk_make, lambda i, w, out: qk_k(**i, out=out, num_warps=w), qk_poison,
             qk_reference, qk_reference, qk_reference,
             lambda M: M * 3 * HEADS * HEAD_DIM * 4 + (M - TEXT_TOKENS) * HEAD_DIM * 4, qk_check, (4, 8)),
    ]


def measure(case: Case, M: int, gen: torch.Generator, bench: Callable, compiled: dict | None, sweep: bool) -> dict:
    """Check one kernel at one size, then time it against the eager chain (and torch.compile when asked)."""
    inputs = case.make(M, gen)
    outs = case.triton(inputs, None, case.poison(inputs))
    refs = case.reference(inputs)
    metrics = case.check(inputs, outs, refs)
    if case.name == "qk_norm_rope":
        ok = (metrics["nan_left"] == 0 and metrics["v_exact"] and metrics["q_rel_l2_vs_reference"] < 2e-3
              and metrics["k_rel_l2_vs_reference"] < 2e-3)
    else:
        ok = fp8_ok(metrics)
    outs = refs = None  # free before timing
    t_triton = bench(lambda: case.triton(inputs, None, None))
    t_eager = bench(lambda: case.eager(inputs))
    t_bf16 = bench(lambda: case.bf16(inputs)) if case.bf16 is not case.eager else t_eager
    t_comp = compile_s = None
    if compiled is not None:
        first = case.name not in compiled
        if first:
            compiled[case.name] = torch.compile(case.eager, dynamic=True)
        fn = compiled[case.name]
        t0 = time.perf_counter()
        fn(inputs)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0 if first else None
        t_comp = bench(lambda: fn(inputs))
    swept = []
    for w in case.warps if sweep else ():
        ms = bench(lambda w=w: case.triton(inputs, w, None))
        swept.append({"kernel": case.name, "M": M, "num_warps": w, "ms": ms})
        print(f"  sweep {case.name} num_warps={w}: {swept[-1]['ms']:.3f} ms", flush=True)
    nbytes = case.bytes(M)
    return {"kernel": case.name, "M": M, "C": case.channels, "ok": ok, "eager_ms": t_eager, "bf16_ms": t_bf16,
            "compiled_ms": t_comp, "compile_s": compile_s, "triton_ms": t_triton, "bytes": nbytes,
            "triton_TBps": nbytes / (t_triton * 1e-3) / 1e12, "metrics": metrics, "sweep": swept}


def host_ms(fn: Callable) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def copy_bandwidth(bench: Callable) -> float:
    """Measured ceiling: bytes/s of a 2 GiB device-to-device copy, read plus write."""
    src = torch.empty(2 << 30 if DEVICE == "cuda" else 1 << 24, dtype=torch.uint8, device=DEVICE).random_()
    dst = torch.empty_like(src)
    return 2 * src.numel() / (bench(lambda: dst.copy_(src)) * 1e-3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[25_440, 67_320, 118_800])
    ap.add_argument("--compile", action="store_true", help="also time the eager chain under torch.compile")
    ap.add_argument("--budget-s", type=float, default=280.0, help="skip remaining torch.compile work past this")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: dry run of this script under TRITON_INTERPRET=1 at small --tokens (times meaningless)")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_fused.py needs a CUDA GPU (sm_89+); the CPU path is covered by tests/test_fused.py")
    load_pack()
    from triton.testing import do_bench

    from hyvideo_fp8.fp8 import fused
    from hyvideo_fp8.fp8.triton.gelu_quant import concat_gelu_quant_triton, gelu_tanh_quant_triton
    from hyvideo_fp8.fp8.triton.norm_modulate_quant import layernorm_modulate_quant_triton
    from hyvideo_fp8.fp8.triton.qk_norm_rope import qk_norm_rope_triton

    t_start = time.perf_counter()
    env = environment()
    bench = lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")  # ms
    if DEVICE == "cpu":
        bench = host_ms

    copy_bw = copy_bandwidth(bench)
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)", flush=True)

    cases = build_cases(fused, (layernorm_modulate_quant_triton, (gelu_tanh_quant_triton, concat_gelu_quant_triton),
                                qk_norm_rope_triton))
    data: dict = {"copy_TBps": copy_bw / 1e12, "results": [], "sweep": []}
    rows_md = []
    compiled: dict[str, Callable] = {}
    gen = torch.Generator(device=DEVICE).manual_seed(int(time.time()))
    for case in cases:
        for M in args.tokens:
            want_compile = args.compile and time.perf_counter() - t_start < args.budget_s
            rec = measure(case, M, gen, bench, compiled if want_compile else None, sweep=M == max(args.tokens))
            data["sweep"] += rec.pop("sweep")
            data["results"].append(rec)
            bw = rec["triton_TBps"] * 1e12
            fmt = lambda v: "-" if v is None else f"{v:.3f}"
            rows_md.append([case.name, M, case.channels, "ok" if rec["ok"] else "FAIL", fmt(rec["eager_ms"]),
                            fmt(rec["bf16_ms"]),
                            fmt(rec["compiled_ms"]) + (f" ({rec['compile_s']:.1f} s)" if rec["compile_s"] else ""),
                            fmt(rec["triton_ms"]), f"{rec['eager_ms'] / rec['triton_ms']:.1f}x", f"{bw / 1e12:.2f}",
                            f"{bw / NOMINAL_BW:.0%}", f"{bw / copy_bw:.0%}"])
            metrics = {k: (round(v, 7) if isinstance(v, float) else v) for k, v in rec["metrics"].items()}
            print(rows_md[-1], metrics, flush=True)
            if DEVICE == "cuda":
                torch.cuda.empty_cache()

    header = ["kernel", "M", "C", "check", "eager unfused ms", "bf16 producer ms", "compiled ms", "triton ms",
              "vs eager", "triton TB/s", "of 4.3 TB/s", "of copy"]
    table = markdown_table(header, rows_md)
    sweep = markdown_table(["kernel", "M", "num_warps", "ms"],
                           [[s["kernel"], s["M"], s["num_warps"], f"{s['ms']:.3f}"] for s in data["sweep"]])
    notes = (f"Device-to-device copy ceiling: {copy_bw / 1e12:.2f} TB/s. Bytes = inputs read once + outputs written "
             "once. 'eager unfused' = bf16 producer then quantize_rowwise (qk_norm_rope: the torch reference); "
             "'compiled' = that chain under torch.compile(dynamic=True), first-call time in parentheses. "
             f"Checks: Triton into NaN-poisoned buffers vs the torch reference on all rows and vs float64 on "
             f"{SAMPLE_ROWS} random rows (see the json).\n\nnum_warps sweep at the largest M (default = launcher "
             f"heuristic):\n\n{sweep}")
    path = write_result("fused", env, table, data, notes)
    print(f"\nwrote {path}\n\n{table}")
    return 0 if all(r["ok"] for r in data["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
