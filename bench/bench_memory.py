"""One denoising step of the full 13B HunyuanVideo (fp8-balanced) under GPU memory caps, with block swap.

For each size: the uncapped step (all blocks resident) gives the weight bytes and the activation peak; then, per
cap, ``torch.cuda.set_per_process_memory_fraction`` limits the process to that many GiB, ``plan_block_swap`` keeps
as many blocks resident as fit beside the measured activations, the rest stream from pinned host memory, and the
step is timed again (CUDA events, median after warm-up). The same weights and inputs throughout, in one process.
``--token-chunks`` also times the uncapped step at other token chunk sizes (the token-wise work of each block runs over
chunks of that many tokens: a smaller chunk lowers the activation peak and may cost speed).

    python bench/bench_memory.py                                   # H200: 720p at 16 and 12 GiB, 544p at 10 GiB
    python bench/bench_memory.py --tiny --device cpu               # smoke test of the harness
"""

from __future__ import annotations

import argparse
import gc

import torch
from bench_step import latent_shape, make_inputs, random_canonical
from common import environment, load_pack, markdown_table, median, time_cuda, write_result

SIZES = {"544x960x129f": (544, 960, 129), "720x1280x129f": (720, 1280, 129)}
DEFAULT_CAPS = "720x1280x129f:16,12;544x960x129f:10"
MARGIN = 0.5 * 2**30  # the streamed block's bias/scale tensors and allocator rounding
FRAGMENTATION = 0.05  # the caching allocator reserves this share of the cap beyond what is allocated


def parse_caps(text: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for part in filter(None, text.split(";")):
        size, caps = part.split(":")
        out[size] = [float(c) for c in caps.split(",") if c]
    return out


def step_fn(model, inputs):
    def run():
        with torch.no_grad():
            return model(**inputs)
    return run


def measure(model, inputs, warmup: int, runs: int, device: str) -> tuple[float, int]:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = time_cuda(step_fn(model, inputs), warmup=warmup, runs=runs)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return median(times), peak


def emit(rows: list[list], row: list) -> None:
    """Keep a table row and print it at once, so a run cut short by a time limit still reports what it measured."""
    rows.append(row)
    print("[bench_memory] " + " | ".join(str(c) for c in row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default=DEFAULT_CAPS, help="size:GiB,GiB;size:GiB (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--token-chunks", default="", help="extra token chunk sizes to time uncapped, e.g. 16384,65536")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config and sizes (CPU smoke test)")
    args = ap.parse_args(argv)
    load_pack()
    from hyvideo_fp8.hunyuan.config import RELEASED, tiny_config
    from hyvideo_fp8.hunyuan.loader import load_transformer
    from hyvideo_fp8.hunyuan.offload import enable_block_swap, plan_block_swap, tensor_bytes
    from hyvideo_fp8.hunyuan.policies import get_preset

    cfg = tiny_config() if args.tiny else RELEASED
    sizes = {"tiny": (32, 48, 5)} if args.tiny else SIZES
    caps = {"tiny": [1.0]} if args.tiny else parse_caps(args.caps)
    sd = random_canonical(cfg, args.device, seed=0)
    model = load_transformer(dict(sd), get_preset("fp8-balanced"), device=args.device, config=cfg)
    del sd
    gc.collect()
    weights = tensor_bytes(model)
    total = torch.cuda.get_device_properties(0).total_memory if args.device == "cuda" else 0
    rows, data = [], []
    for size_name, wanted in caps.items():
        inputs = make_inputs(cfg, sizes[size_name], args.device, seed=1, text_tokens=256 if not args.tiny else 8)
        base_time, base_peak = measure(model, inputs, args.warmup, args.runs, args.device)
        activations = max(base_peak - weights, 0)
        emit(rows, [size_name, "none", 0, f"{weights / 2**30:.2f}", f"{base_peak / 2**30:.2f}",
                     f"{base_time:.3f}", "1.00x"])
        default_chunk = model.token_chunk
        for chunk in [int(c) for c in args.token_chunks.split(",") if c]:
            model.token_chunk = chunk
            seconds, peak = measure(model, inputs, args.warmup, args.runs, args.device)
            model.token_chunk = default_chunk
            emit(rows, [size_name, f"none, token chunk {chunk}", 0, f"{weights / 2**30:.2f}", f"{peak / 2**30:.2f}",
                         f"{seconds:.3f}", f"{seconds / base_time:.2f}x"])
            data.append(dict(size=size_name, cap_gib=None, token_chunk=chunk, peak=peak, seconds=seconds))
        data.append(dict(size=size_name, cap_gib=None, streamed_blocks=0, peak=base_peak, seconds=base_time,
                         weights=weights, activations=activations))
        for cap in wanted:
            budget = int(cap * 2**30 * (1 - FRAGMENTATION) - activations - MARGIN)
            plan = plan_block_swap(model, budget=budget)
            swap = enable_block_swap(model, plan.n_double, plan.n_single) if plan.swaps else None
            if args.device == "cuda":
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total))
            try:
                seconds, peak = measure(model, inputs, args.warmup, args.runs, args.device)
                outcome = f"{seconds / base_time:.2f}x"
            except torch.OutOfMemoryError as e:
                seconds, peak, outcome = float("nan"), 0, "out of memory"
                print(f"[bench_memory] {size_name} under {cap:g} GiB: {str(e).splitlines()[0]}", flush=True)
            finally:
                if args.device == "cuda":
                    torch.cuda.set_per_process_memory_fraction(1.0)
                if swap is not None:
                    swap.remove()
            streamed = plan.n_double + plan.n_single
            emit(rows, [size_name, f"{cap:g} GiB", f"{plan.n_double} + {plan.n_single}",
                         f"{(weights - plan.streamed_bytes) / 2**30:.2f}", f"{peak / 2**30:.2f}", f"{seconds:.3f}",
                         outcome])
            data.append(dict(size=size_name, cap_gib=cap, streamed_blocks=streamed, n_double=plan.n_double,
                             n_single=plan.n_single, streamed_bytes=plan.streamed_bytes, peak=peak, seconds=seconds,
                             activations=activations, latent=latent_shape(*sizes[size_name])))
        del inputs
    header = ["size", "cap", "streamed double + single", "resident weights GiB", "peak GiB", "step s",
              "vs uncapped"]
    table = markdown_table(header, rows)
    print(table)
    if not args.tiny:
        write_result("memory", environment(), table, {"rows": data},
                     notes="fp8-balanced, batch 1, 256 text tokens; block swap planned from the uncapped step's "
                           "activation peak; the cap is torch.cuda.set_per_process_memory_fraction.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
