"""GPU benchmark of the FP8 attention: correctness first (fresh inputs, poisoned outputs), then speed vs cuDNN/flash.

    PYTHONUNBUFFERED=1 python bench/bench_attention.py --out $OUT
    PYTHONUNBUFFERED=1 python bench/bench_attention.py --kernels triton-default --out $OUT   # only the shipped variant

Checks, in order: Triton quantization == torch quantization; every Triton kernel variant == the torch reference on
the same quantized buffers; fp8_attention vs fp32 SDPA (normal inputs, and sharp inputs with a shared K offset and
outlier K channels) at 8k and, on 2 heads, at every benchmark length; per-tensor FP8 Q.K on the sharp case for
contrast; exact key padding. Then times each kernel variant (kernel alone, and quantization + kernel for the default
variant) next to cuDNN and flash bf16 SDPA at B=1, H=24, D=128. Results: ``attention.json``, ``attention.md`` and
``attention.log`` in --out.

A Gluon (triton.experimental.gluon) FA3-style kernel with a TMA producer warpgroup, two ping-pong consumer warpgroups
and async wgmma was tried on 2026-11-29 and removed: 711-723 TFLOP/s at best vs 779 for the Triton kernel
(bench/NOTES-attention.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from common import environment, load_pack, median, time_cuda

load_pack()
from hyvideo_fp8.fp8.attention import fp8_attention  # noqa: E402
from hyvideo_fp8.fp8.attention.quantize_qkv import quantize_qkv_torch, quantize_qkv_triton  # noqa: E402
from hyvideo_fp8.fp8.attention.reference import attention_reference  # noqa: E402
from hyvideo_fp8.fp8.attention.triton_kernel import DEFAULT_CONFIG, AttentionConfig, attention_triton  # noqa: E402
from hyvideo_fp8.fp8.quantize import quantize_tensorwise  # noqa: E402

LENGTHS = (25_696, 67_576, 119_056)
HEADS, HEAD_DIM = 24, 128
VARIANTS = [  # the default first; the others are the runners-up of the 2026-11-29 sweep (NOTES-attention.md)
    AttentionConfig(64, 128, 4, 2, maxnreg=168),
    AttentionConfig(64, 128, 4, 2, maxnreg=None),
    AttentionConfig(64, 128, 4, 3, maxnreg=None),
    AttentionConfig(64, 64, 4, 3, maxnreg=None),
    AttentionConfig(128, 128, 8, 3, maxnreg=None),
]
KERNELS = {"triton": VARIANTS, "triton-default": VARIANTS[:1]}  # triton-default: only the shipped variant


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


def check_correctness(lengths, variants, log) -> dict:
    res = {}
    # 1. quantization: Triton vs torch on an odd length with padding in the middle and at the end
    q, k, v = make_inputs(4000, 4, sharp=True, seed=1)
    mask = torch.ones(1, 4000, dtype=torch.bool, device="cuda")
    mask[0, 3700:] = False
    mask[0, 100:160] = False
    sm = HEAD_DIM**-0.5
    a, t = quantize_qkv_torch(q, k, v, mask, sm), quantize_qkv_triton(q, k, v, mask, sm)
    quant = {}
    for name in ("q", "q_scale", "k", "k_scale", "v_t", "v_scale", "kv_len"):
        x, y = getattr(a, name).float(), getattr(t, name).float()
        quant[name] = {"max_abs_diff": (x - y).abs().max().item(), "n_diff": int((x != y).sum()), "n": x.numel()}
    res["quantize_triton_vs_torch"] = quant
    log(f"quantize triton vs torch: {quant}")

    # 2. every kernel variant vs the torch reference on the same buffers (poisoned output)
    res["kernel_vs_reference"] = {}
    for cfg in variants:
        out = torch.full((1, 4, 4000, HEAD_DIM), float("nan"), dtype=torch.float32, device="cuda")
        try:
            attention_triton(t, out, cfg)
        except Exception as e:  # one variant that fails to compile must not hide the others' numbers
            res["kernel_vs_reference"][cfg.name] = {"error": repr(e)[:300]}
            log(f"kernel {cfg.name} FAILED: {e!r}"[:400])
            continue
        ref = attention_reference(t, torch.float32, cfg.block_n)
        m = metrics(out, ref)
        m["max_abs_diff"] = (out - ref).abs().max().item()
        res["kernel_vs_reference"][cfg.name] = m
        log(f"kernel {cfg.name} vs reference: {m}")

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
            qkv = quantize_qkv_triton(q, k, v, None, HEAD_DIM**-0.5)
            row["variants"] = {}
            for cfg in variants:  # every variant on the same quantized buffers, poisoned bf16 output
                out = torch.full_like(q, float("nan"))
                try:
                    attention_triton(qkv, out, cfg)
                    row["variants"][cfg.name] = metrics(out, ref)
                except Exception as e:  # noqa: BLE001
                    row["variants"][cfg.name] = {"error": repr(e)[:300]}
                del out
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


def time_length(L: int, variants, log) -> list[dict]:
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
    qkv = quantize_qkv_triton(q, k, v, None, sm)
    out = torch.empty_like(q)
    for cfg in variants:
        try:
            add(f"kernel {cfg.name}", time_ms(lambda cfg=cfg: attention_triton(qkv, out, cfg), reps))
        except Exception as e:  # noqa: BLE001 (reported, and the other variants still run)
            log(f"L={L} kernel {cfg.name} FAILED: {e!r}"[:400])
            rows.append({"L": L, "variant": f"kernel {cfg.name}", "error": repr(e)[:300]})
    add(f"fp8_attention (quant + kernel {DEFAULT_CONFIG.name})", time_ms(lambda: fp8_attention(q, k, v), reps))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        add("cudnn_bf16 (again)", time_ms(sdpa, reps))
    return rows


def run_timing(lengths, variants, log) -> list[dict]:
    rows = []
    for L in lengths:
        rows += time_length(L, variants, log)
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
    ap.add_argument("--kernels", choices=list(KERNELS), default="triton",
                    help=f"Triton kernel variants to check and time: triton = all {len(VARIANTS)}, "
                         f"triton-default = only the shipped {DEFAULT_CONFIG.name} (default: triton)")  # fmt: skip
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="if > 0: after this many seconds write what is there and exit (a hung kernel)")
    args = ap.parse_args()
    variants = KERNELS[args.kernels]
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

    if not args.skip_checks:
        result["correctness"] = check_correctness(args.lengths, variants, log)
    write_json()
    result["timing"] = run_timing(args.lengths, variants, log)
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
    summary = correctness_summary(result, [c.name for c in variants]) if "correctness" in result else []
    (out_dir / "attention.md").write_text("\n".join(table + [""] + summary) + "\n")
    if summary:
        print("\n".join(summary))
    print("\n".join(table))
    log_file.close()
    if args.deadline > 0:
        os._exit(0)  # the deadline timer thread must not keep the process alive


if __name__ == "__main__":
    main()
