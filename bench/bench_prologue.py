"""The attention prologue in front of FP8 attention: the quantizing kernel against the plain one + the Q quantizer.

What the model paid per block before (``qk_norm_rope_triton`` writing bf16 q, k, v, then ``quantize_q_triton``
reading q back) against ``qk_norm_rope_quant_q_triton`` (int8 q and bf16 k, v in one pass), on the single-stream
block's shape: the q/k/v columns of a ``[1, L, 3 * 3072 + 12288]`` linear1 output, 24 heads of 128. Checks the
quantized queries agree (codes, scales) and times each tile configuration (tokens per program x warps).

    python bench/bench_prologue.py                       # H200: L = 25,696 / 67,576 / 119,056
    python bench/bench_prologue.py --configs 4x8,2x8     # other tile configurations
"""

from __future__ import annotations

import argparse

import torch
from common import environment, load_pack, markdown_table, median, time_cuda, write_result

HIDDEN, MLP, HEADS, HEAD_DIM = 3072, 12288, 24, 128
LENGTHS = (25_696, 67_576, 119_056)


def bench_length(L: int, configs: list[tuple[int, int]], runs: int, g: torch.Generator) -> tuple[list, list]:
    """Table rows and records for one sequence length."""
    from hyvideo_fp8.fp8.attention.quantize_qkv import empty_quantized_q, quantize_q_triton
    from hyvideo_fp8.fp8.triton.qk_norm_rope import qk_norm_rope_quant_q_triton, qk_norm_rope_triton

    linear1 = torch.randn(1, L, 3 * HIDDEN + MLP, device="cuda", generator=g).bfloat16()
    qkv = linear1[..., : 3 * HIDDEN]
    w = (torch.rand(HEAD_DIM, device="cuda", generator=g) + 0.5).bfloat16()
    n_rope, sm = L - 256, HEAD_DIM**-0.5
    angles = torch.rand(n_rope, HEAD_DIM // 2, device="cuda", generator=g, dtype=torch.float64) * 50
    cos, sin = angles.cos().float().contiguous(), angles.sin().float().contiguous()

    def plain():
        q, k, v = qk_norm_rope_triton(qkv, w, w, cos, sin, n_rope)
        return quantize_q_triton(q, sm), k, v

    ref_q, ref_k, ref_v = plain()
    variants = [("plain prologue + quantize_q_triton", plain, None)]
    for bt, nw in configs:
        q_out = empty_quantized_q(1, HEADS, L, HEAD_DIM, sm, torch.device("cuda"))
        kv = torch.empty(2, 1, HEADS, L, HEAD_DIM, dtype=torch.bfloat16, device="cuda")

        def fused(q_out=q_out, kv=kv, bt=bt, nw=nw):
            qk_norm_rope_quant_q_triton(qkv, w, w, cos, sin, n_rope, 1e-6, q_out, kv, 0, block_t=bt, num_warps=nw)

        fused()
        check = {"codes_differ": (q_out.q != ref_q.q).float().mean().item(),
                 "max_code_diff": (q_out.q.int() - ref_q.q.int()).abs().max().item(),
                 "scale_max_rel": ((q_out.q_scale - ref_q.q_scale).abs() / ref_q.q_scale).max().item(),
                 "k_equal": bool(torch.equal(kv[0], ref_k)), "v_equal": bool(torch.equal(kv[1], ref_v))}  # fmt: skip
        variants.append((f"quantizing prologue {bt} tokens x {nw} warps", fused, check))
    bytes_min = qkv.numel() * 2 + L * HEADS * HEAD_DIM * (1 + 2 + 2)  # read q, k, v; write int8 q, bf16 k, v
    rows, data = [], []
    for name, fn, check in variants:
        ts = time_cuda(fn, warmup=3, runs=runs)
        t = median(ts)
        data.append({"L": L, "variant": name, "ms": t * 1e3, "ms_all": [x * 1e3 for x in ts], "check": check})
        rows.append([L, name, f"{t * 1e3:.3f}", f"{bytes_min / t / 1e12:.2f}", check or "-"])
        print(rows[-1], flush=True)
    return rows, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--configs", default="4x8,2x8,4x16,1x4", help="tokens per program x warps, comma list")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    load_pack()
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    g = torch.Generator(device="cuda").manual_seed(0)
    rows, data = [], []
    for L in (int(x) for x in args.lengths.split(",")):
        r, d = bench_length(L, configs, args.runs, g)
        rows += r
        data += d
        torch.cuda.empty_cache()
    table = markdown_table(["L", "variant", "ms", "TB/s (min bytes)", "check vs plain"], rows)
    print(table)
    print(write_result("prologue", environment(), table, {"rows": data}))


if __name__ == "__main__":
    main()
