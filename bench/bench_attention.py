"""GPU benchmark of the FP8 attention: correctness first (fresh inputs, poisoned outputs), then speed vs cuDNN/flash.

    PYTHONUNBUFFERED=1 python bench/bench_attention.py --out $OUT
    PYTHONUNBUFFERED=1 python bench/bench_attention.py --kernels shipped --out $OUT   # only the shipped kernels

Checks, in order: Triton quantization == torch quantization (both K orders); every kernel == the torch reference on
the same quantized buffers; fp8_attention vs fp32 SDPA (normal inputs, and sharp inputs with a shared K offset and
outlier K channels) at 8k and, on 2 heads, at every benchmark length; per-tensor FP8 Q.K on the sharp case for
contrast; exact key padding. Then times each kernel (kernel alone, and quantization + kernel through fp8_attention)
next to cuDNN and flash bf16 SDPA at B=1, H=24, D=128. Results: ``attention.json``, ``attention.md`` and
``attention.log`` in --out.

When ``nvidia-cudnn-frontend`` is installed (optional, GPU only: ``pip install nvidia-cudnn-frontend``), cuDNN's
per-tensor FP8 SDPA (``cudnn_fp8.py``) joins the accuracy checks and the timing, kernel alone and with its eager
quantization, as the library route to compare with.

Kernels: the Gluon Hopper kernel (what fp8_attention runs on sm_90), the Triton kernel's shipped config (what it runs
elsewhere, and on Hopper when Gluon is missing) and, with ``--kernels all``, the Triton runners-up of the 2026-11-29
sweep. An FA3-style Gluon kernel (producer warpgroup, two ping-pong consumers) was tried on 2026-11-29 and removed:
711-723 TFLOP/s at best (bench/NOTES-attention.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from common import environment, load_pack, median, time_cuda
from cudnn_fp8 import CudnnFp8Attention, quantize_per_tensor
from cudnn_fp8 import available as cudnn_fp8_available

load_pack()
from hyvideo_fp8.fp8.attention import fp8_attention  # noqa: E402
from hyvideo_fp8.fp8.attention.gluon_kernel import attention_gluon, gluon_supported  # noqa: E402
from hyvideo_fp8.fp8.attention.quantize_qkv import quantize_qkv_torch, quantize_qkv_triton  # noqa: E402
from hyvideo_fp8.fp8.attention.reference import attention_reference  # noqa: E402
from hyvideo_fp8.fp8.attention.triton_kernel import DEFAULT_CONFIG, AttentionConfig, attention_triton  # noqa: E402
from hyvideo_fp8.fp8.quantize import quantize_tensorwise  # noqa: E402

LENGTHS = (25_696, 67_576, 119_056)
HEADS, HEAD_DIM = 24, 128
CUDNN_FP8 = "cudnn_fp8 (per-tensor)"


@dataclass(frozen=True)
class Kernel:
    """One attention kernel under test: how to run it, and which K order its quantized buffers need."""

    name: str
    run: Callable  # (QuantizedQKV, out) -> out
    interleave_k: bool = False
    block_n: int = 128


def triton_variant(cfg: AttentionConfig) -> Kernel:
    return Kernel(f"triton {cfg.name}", lambda qkv, out: attention_triton(qkv, out, cfg), block_n=cfg.block_n)


GLUON = Kernel("gluon", attention_gluon, interleave_k=True)
RUNNERS_UP = [  # the Triton runners-up of the 2026-11-29 sweep (NOTES-attention.md)
    AttentionConfig(64, 128, 4, 2, maxnreg=None),
    AttentionConfig(64, 128, 4, 3, maxnreg=None),
    AttentionConfig(64, 64, 4, 3, maxnreg=None),
    AttentionConfig(128, 128, 8, 3, maxnreg=None),
]


def kernels(choice: str) -> list[Kernel]:
    """``shipped``: the kernels fp8_attention runs (Gluon on Hopper, the Triton default elsewhere); ``all``: plus the
    Triton runners-up."""
    shipped = [triton_variant(DEFAULT_CONFIG)]
    if gluon_supported(torch.cuda.get_device_capability(), HEAD_DIM)[0]:
        shipped.insert(0, GLUON)
    return shipped + ([triton_variant(c) for c in RUNNERS_UP] if choice == "all" else [])


def metrics(out: torch.Tensor, ref: torch.Tensor) -> dict:
    o, r = out.double().flatten(), ref.double().flatten()
    return {
        "cos": F.cosine_similarity(o, r, dim=0).item(),
        "rel_l2": ((o - r).norm() / r.norm()).item(),
        "nan": int(out.isnan().sum()),
    }


def make_inputs(L: int, heads: int, sharp: bool, seed: int, device="cuda") -> tuple[torch.Tensor, ...]:
    """Normal Q, K, V; "sharp": Q, K x3, K plus a shared per-channel offset (scale 3) and 4 outlier channels x8."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(1, heads, L, HEAD_DIM, device=device, generator=g) for _ in range(3))
    if sharp:
        offset = 3 * torch.randn(HEAD_DIM, device=device, generator=g)
        q, k = 3 * q, 3 * (k + offset)
        k[..., :4] *= 8
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def sdpa_fp32(q, k, v, mask=None) -> torch.Tensor:
    """fp32 reference through the memory-efficient kernel (fp32 math, no L x L matrix)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attn_mask = None if mask is None else mask[:, None, None, :].expand(-1, q.shape[1], q.shape[2], -1)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)


def per_tensor_fp8_qk(q, k, v) -> torch.Tensor:
    """Per-tensor FP8 e4m3 Q and K (no smoothing, one scale each), everything else exact: the cuDNN/FA3-FP8 Q.K."""
    q8, sq = quantize_tensorwise(q.float())
    k8, sk = quantize_tensorwise(k.float())
    return sdpa_fp32(q8.float() * sq, k8.float() * sk, v)


def cudnn_fp8_graphs(log) -> Callable | None:
    """``shape -> CudnnFp8Attention`` (built once per shape) when the cuDNN frontend is there, else None."""
    ok, msg = cudnn_fp8_available()
    log(f"cuDNN FP8 SDPA route: {msg}")
    if not ok:
        return None
    graphs: dict[tuple, CudnnFp8Attention] = {}

    def get(shape) -> CudnnFp8Attention:
        if tuple(shape) not in graphs:
            graphs.clear()  # one shape at a time: each graph holds a workspace
            graphs[tuple(shape)] = CudnnFp8Attention(tuple(shape), torch.device("cuda"))
        return graphs[tuple(shape)]

    return get


def check_correctness(lengths, variants, log, cudnn_fp8) -> dict:
    res = {}
    # 1. quantization: Triton vs torch on an odd length with padding in the middle and at the end
    q, k, v = make_inputs(4000, 4, sharp=True, seed=1)
    mask = torch.ones(1, 4000, dtype=torch.bool, device="cuda")
    mask[0, 3700:] = False
    mask[0, 100:160] = False
    sm = HEAD_DIM**-0.5
    a, t = quantize_qkv_torch(q, k, v, mask, sm), quantize_qkv_triton(q, k, v, mask, sm)
    quantized = {False: t, True: quantize_qkv_triton(q, k, v, mask, sm, interleave_k=True)}
    for interleave in (False, True):
        a = quantize_qkv_torch(q, k, v, mask, sm, interleave_k=interleave)
        quant = {}
        for name in ("q", "q_scale", "k", "k_scale", "v_t", "v_scale", "kv_len"):
            x, y = getattr(a, name).float(), getattr(quantized[interleave], name).float()
            quant[name] = {"max_abs_diff": (x - y).abs().max().item(), "n_diff": int((x != y).sum()), "n": x.numel()}
        res[f"quantize_triton_vs_torch{'_interleaved' if interleave else ''}"] = quant
        log(f"quantize triton vs torch (interleave_k={interleave}): {quant}")

    # 2. every kernel vs the torch reference on the same buffers (poisoned output)
    res["kernel_vs_reference"] = {}
    for kern in variants:
        out = torch.full((1, 4, 4000, HEAD_DIM), float("nan"), dtype=torch.float32, device="cuda")
        qkv = quantized[kern.interleave_k]
        try:
            kern.run(qkv, out)
        except Exception as e:  # one variant that fails to compile must not hide the others' numbers
            res["kernel_vs_reference"][kern.name] = {"error": repr(e)[:300]}
            log(f"kernel {kern.name} FAILED: {e!r}"[:400])
            continue
        ref = attention_reference(qkv, torch.float32, kern.block_n)
        m = metrics(out, ref)
        m["max_abs_diff"] = (out - ref).abs().max().item()
        res["kernel_vs_reference"][kern.name] = m
        log(f"kernel {kern.name} vs reference: {m}")

    # 3. end to end vs fp32 SDPA
    cases = [(8192, HEADS)] + [(L, 2) for L in lengths]
    res["vs_fp32_sdpa"] = []
    for L, heads in cases:
        for sharp in (False, True):
            q, k, v = make_inputs(L, heads, sharp, seed=L + sharp)
            ref = sdpa_fp32(q, k, v)
            row = {"L": L, "heads": heads, "case": "sharp" if sharp else "normal",
                   "fp8_attention": metrics(fp8_attention(q, k, v), ref)}  # fmt: skip
            if L == 8192:
                row["per_tensor_fp8_qk"] = metrics(per_tensor_fp8_qk(q, k, v), ref)
                row["bf16_cudnn"] = metrics(F.scaled_dot_product_attention(q, k, v), ref)
            quantized = {i: quantize_qkv_triton(q, k, v, None, HEAD_DIM**-0.5, interleave_k=i)
                         for i in {kern.interleave_k for kern in variants}}  # the K orders these kernels read
            row["variants"] = {}
            for kern in variants:  # every kernel on the same quantized values, poisoned bf16 output
                out = torch.full_like(q, float("nan"))
                try:
                    kern.run(quantized[kern.interleave_k], out)
                    row["variants"][kern.name] = metrics(out, ref)
                except Exception as e:  # noqa: BLE001
                    row["variants"][kern.name] = {"error": repr(e)[:300]}
                del out
            del quantized
            if cudnn_fp8 is not None:
                try:
                    row["variants"][CUDNN_FP8] = metrics(cudnn_fp8(q.shape)(q, k, v), ref)
                except Exception as e:  # noqa: BLE001 (reported; the other routes' numbers stand)
                    row["variants"][CUDNN_FP8] = {"error": repr(e)[:300]}
            res["vs_fp32_sdpa"].append(row)
            log(f"vs fp32 SDPA: {row}")
            del ref

    # 4. key padding: valid outputs with padding == the same call without the padded tokens
    L, n_txt_valid = 25_696, 180
    q, k, v = make_inputs(L, 4, sharp=False, seed=7)
    mask = torch.ones(1, L, dtype=torch.bool, device="cuda")
    mask[0, L - 256 + n_txt_valid :] = False
    out_pad = fp8_attention(q, k, v, key_padding_mask=mask)
    keep = mask[0]
    out_cut = fp8_attention(q[:, :, keep], k[:, :, keep], v[:, :, keep])
    ref = sdpa_fp32(q, k, v, mask)
    res["padding"] = {
        "valid_vs_unpadded_max_abs": (out_pad[:, :, keep].float() - out_cut.float()).abs().max().item(),
        "vs_fp32_sdpa_masked": metrics(out_pad[:, :, keep], ref[:, :, keep]),
    }
    log(f"padding: {res['padding']}")
    return res


def time_ms(fn, reps: int, warmup: int = 2) -> list[float]:
    return [t * 1e3 for t in time_cuda(fn, warmup=warmup, runs=reps)]


def time_length(L: int, variants, log, cudnn_fp8) -> list[dict]:
    """All variants and baselines at one length, on one set of inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    flops = 4 * L * L * HEADS * HEAD_DIM
    reps = max(3, min(20, int(2e15 / flops)))
    q, k, v = make_inputs(L, HEADS, sharp=False, seed=100 + L)
    sm = HEAD_DIM**-0.5

    def add(name, ts):
        t = median(ts)
        rows.append({"L": L, "variant": name, "ms": t, "ms_all": ts, "tflops": flops / t / 1e9})
        log(f"L={L} {name}: {t:.2f} ms  {flops / t / 1e9:.0f} TFLOP/s  (spread {min(ts):.2f}-{max(ts):.2f})")

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v)

    for backend, name in ((SDPBackend.CUDNN_ATTENTION, "cudnn_bf16"), (SDPBackend.FLASH_ATTENTION, "flash_bf16")):
        with sdpa_kernel([backend]):
            add(name, time_ms(sdpa, reps))
    add("quantize_qkv_triton", time_ms(lambda: quantize_qkv_triton(q, k, v, None, sm), reps))
    orders = {kern.interleave_k for kern in variants}  # the K orders these kernels read
    quantized = {i: quantize_qkv_triton(q, k, v, None, sm, interleave_k=i) for i in orders}
    out = torch.empty_like(q)
    for kern in variants:
        try:
            add(f"kernel {kern.name}", time_ms(lambda kern=kern: kern.run(quantized[kern.interleave_k], out), reps))
        except Exception as e:  # noqa: BLE001 (reported, and the other variants still run)
            log(f"L={L} kernel {kern.name} FAILED: {e!r}"[:400])
            rows.append({"L": L, "variant": f"kernel {kern.name}", "error": repr(e)[:300]})
    quantized.clear()
    add(f"fp8_attention (quant + kernel {variants[0].name})", time_ms(lambda: fp8_attention(q, k, v), reps))
    if cudnn_fp8 is not None:
        try:
            route = cudnn_fp8(q.shape)
            ops, out8 = quantize_per_tensor(q, k, v), torch.empty(q.shape, dtype=torch.float8_e4m3fn, device="cuda")
            add(f"kernel {CUDNN_FP8}", time_ms(lambda: route.kernel(ops, out8), reps))
            del ops, out8
            add(f"{CUDNN_FP8} (eager quant + kernel + dequant)", time_ms(lambda: route(q, k, v), reps))
        except Exception as e:  # noqa: BLE001 (reported; the baselines still run)
            log(f"L={L} {CUDNN_FP8} FAILED: {e!r}"[:400])
            rows.append({"L": L, "variant": CUDNN_FP8, "error": repr(e)[:300]})
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        add("cudnn_bf16 (again)", time_ms(sdpa, reps))
    return rows


def run_timing(lengths, variants, log, cudnn_fp8) -> list[dict]:
    rows = []
    for L in lengths:
        rows += time_length(L, variants, log, cudnn_fp8)
        torch.cuda.empty_cache()
    return rows


def attention_environment() -> dict:
    """The common record plus what matters for attention: the cuDNN frontend and the clocks."""

    def cmd(*args):
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            return f"unavailable: {e}"

    return {
        **environment(),
        "cudnn_frontend": cmd(sys.executable, "-m", "pip", "show", "nvidia-cudnn-frontend")[:200] or "not installed",
        "nvidia_smi": cmd(
            "nvidia-smi", "--query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu", "--format=csv"
        ),  # fmt: skip
    }


def correctness_summary(result: dict, names: list[str]) -> list[str]:
    """One row per variant: vs the reference (small L, padded) and the worst cos vs fp32 SDPA per case."""
    corr = result.get("correctness", {})
    table = ["| variant | vs reference (L=4000, padded) | min cos vs fp32 SDPA normal | sharp | errors |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name in names:
        kr = corr.get("kernel_vs_reference", {}).get(name, {})
        ref_s = f"cos {kr['cos']:.6f}, max|d| {kr.get('max_abs_diff', float('nan')):.2e}" if "cos" in kr else "-"
        cos = {"normal": [], "sharp": []}
        errs = [kr["error"][:60]] if "error" in kr else []
        for row in corr.get("vs_fp32_sdpa", []):
            m = row.get("variants", {}).get(name)
            if m is None:
                continue
            if "error" in m:
                errs.append(f"L={row['L']}: {m['error'][:60]}")
            else:
                cos[row["case"]].append(m["cos"] if m["nan"] == 0 else float("nan"))
        fmt = lambda xs: f"{min(xs):.5f}" if xs else "-"
        table.append(f"| {name} | {ref_s} | {fmt(cos['normal'])} | {fmt(cos['sharp'])} | {'; '.join(errs) or '-'} |")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/tmp"))
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--kernels", choices=("all", "shipped"), default="all",
                    help="shipped = the kernels fp8_attention runs (Gluon on Hopper, the Triton default); "
                         f"all = plus {len(RUNNERS_UP)} Triton runners-up (default: all)")  # fmt: skip
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="if > 0: after this many seconds write what is there and exit (a hung kernel)")
    args = ap.parse_args()
    variants = kernels(args.kernels)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / "attention.log", "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    result = {"environment": attention_environment()}
    log(json.dumps(result["environment"], indent=1))

    def write_json():
        (out_dir / "attention.json").write_text(json.dumps(result, indent=1))

    if args.deadline > 0:

        def on_deadline():
            log(f"DEADLINE {args.deadline:.0f} s reached: writing partial results and exiting")
            write_json()
            os._exit(3)

        threading.Timer(args.deadline, on_deadline).start()

    cudnn_fp8 = cudnn_fp8_graphs(log)
    if not args.skip_checks:
        result["correctness"] = check_correctness(args.lengths, variants, log, cudnn_fp8)
    write_json()
    result["timing"] = run_timing(args.lengths, variants, log, cudnn_fp8)
    write_json()

    table = ["| L | variant | ms | TFLOP/s | vs cuDNN bf16 |", "|---|---|---|---|---|"]
    for L in args.lengths:
        rows = [r for r in result["timing"] if r["L"] == L]
        cudnn = median([r["ms"] for r in rows if r["variant"].startswith("cudnn_bf16") and "ms" in r])
        for r in rows:
            if "ms" not in r:
                table.append(f"| {L} | {r['variant']} | failed | - | {r.get('error', '')[:80]} |")
                continue
            table.append(f"| {L} | {r['variant']} | {r['ms']:.2f} | {r['tflops']:.0f} | {cudnn / r['ms']:.2f}x |")
    names = [k.name for k in variants] + ([CUDNN_FP8] if cudnn_fp8 is not None else [])
    summary = correctness_summary(result, names) if "correctness" in result else []
    (out_dir / "attention.md").write_text("\n".join(table + [""] + summary) + "\n")
    if summary:
        print("\n".join(summary))
    print("\n".join(table))
    log_file.close()
    if args.deadline > 0:
        os._exit(0)  # the deadline timer thread must not keep the process alive


if __name__ == "__main__":
    main()
