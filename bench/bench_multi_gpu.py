"""One denoising step of the full 13B HunyuanVideo on several GPUs (sequence parallelism over Ray workers), against
the same step in one process on one GPU, plus the step's all-to-all exchanges timed alone.

Random weights, batch 1, 256 text tokens, one preset. The one-GPU step runs in this process first; then for each GPU
count a ``ParallelTransformer`` starts its workers (one per GPU), times the step as the caller sees it (Ray round
trip included) and compares its output with the one-GPU output; then the 2 x 60 exchanges of one step, at the
step's shapes, are timed on that many GPUs without the model (Ray tasks, NCCL), for the exchange's share of the step.

    python bench/bench_multi_gpu.py                                    # 544p and 720p, fp8-balanced, 1/2/4/8 GPUs
    python bench/bench_multi_gpu.py --tiny --device cpu --gpus 1,2,3    # smoke test of the harness (gloo on CPU)
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys
import time

import torch
from bench_step import SIZES, make_inputs
from common import REPO, environment, load_pack, markdown_table, median, write_result

TINY_SIZES = {"tiny-48x64x9f": (48, 64, 9)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _exchange_rank(repo: str, rank: int, world: int, port: int, shape: dict, device: str, warmup: int, runs: int):
    """One rank of the exchange timing (a Ray task): seconds per step of ``calls`` forward + return exchanges."""
    import torch.distributed as dist

    sys.path.insert(0, repo)
    from pack_path import load_pack as _load

    _load()
    from hyvideo_fp8.hunyuan.parallel.layout import heads_to_tokens, split_sizes, tokens_to_heads

    cuda = device == "cuda"
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{shape['host']}:{port}", rank=rank,
                            world_size=world)
    try:
        tokens, heads = split_sizes(shape["image_tokens"], world), split_sizes(shape["heads"], world)
        d, dtype = shape["head_dim"], torch.bfloat16
        qkv = torch.randn(3, 1, shape["heads"], tokens[rank], d, dtype=dtype, device=dev)
        out = torch.randn(1, shape["image_tokens"] + shape["text_tokens"], heads[rank], d, dtype=dtype, device=dev)

        def step() -> None:
            for _ in range(shape["calls"]):
                tokens_to_heads(qkv, tokens, heads, rank)
                heads_to_tokens(out, tokens, heads, rank, shape["text_tokens"])

        times = []
        for i in range(warmup + runs):
            dist.barrier()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return times
    finally:
        dist.destroy_process_group()


def exchange_seconds(ray, world: int, shape: dict, device: str, warmup: int, runs: int) -> float:
    """Median over runs of the slowest rank's time for one step's exchanges."""
    # every rank must run at once: a GPU each, no CPU reservation (CPU runs: gloo ranks on the CPUs there are)
    task = ray.remote(num_gpus=1 if device == "cuda" else 0, num_cpus=0)(_exchange_rank)
    port = _free_port()
    per_rank = ray.get([task.remote(str(REPO), r, world, port, shape, device, warmup, runs) for r in range(world)])
    return median([max(ts) for ts in zip(*per_rank)])


def timed(fn, warmup: int, runs: int) -> list[float]:
    """Host seconds per call (the caller's view: the workers' whole round trip)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def one_gpu_steps(model, inputs: dict, warmup: int, runs: int) -> dict[str, tuple[float, torch.Tensor]]:
    """Per size: the median step time in this process and the step's output (CPU, fp32)."""
    single = {}
    for s, args in inputs.items():
        t = median(timed(lambda args=args: model(**args), warmup, runs))
        single[s] = (t, model(**args).float().cpu())
        print(f"{s}: 1 GPU (this process) {t:.3f} s", flush=True)
    return single


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="544x960x129f,720x1280x129f", help=f"comma list of {list(SIZES)}")
    ap.add_argument("--gpus", default="1,2,4,8", help="GPU counts; 1 is the step in this process")
    ap.add_argument("--preset", default="fp8-balanced")
    ap.add_argument("--runs", type=int, default=2, help="timed steps per size and GPU count")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--ray-address", default=None, help="a Ray cluster to join ('auto'); default: start one here")
    ap.add_argument("--tiny", action="store_true", help="tiny config and size (CPU smoke test)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_multi_gpu: no CUDA GPU here; use --tiny --device cpu for the smoke test")
        return 2
    load_pack()
    from hyvideo_fp8.hunyuan.config import RELEASED, tiny_config
    from hyvideo_fp8.hunyuan.loader import build_random
    from hyvideo_fp8.hunyuan.parallel import ParallelTransformer, require_ray
    from hyvideo_fp8.hunyuan.policies import get_preset

    ray = require_ray()
    cfg = tiny_config(hidden_size=128, num_heads=4, axes_dim=(8, 12, 12)) if args.tiny else RELEASED
    sizes = TINY_SIZES if args.tiny else {s: SIZES[s] for s in args.sizes.split(",")}
    counts = [int(n) for n in args.gpus.split(",")]
    env = environment()
    policy = get_preset(args.preset)

    inputs = {s: make_inputs(cfg, size, args.device, args.seed, args.text_tokens) for s, size in sizes.items()}
    source = build_random(cfg, policy, seed=args.seed, device=args.device)
    single = one_gpu_steps(source, inputs, args.warmup, args.runs)
    source.to("cpu")  # the workers are built from it; its GPU memory is theirs now
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not ray.is_initialized():
        ray.init(address=args.ray_address, include_dashboard=False, logging_level="WARNING")
    host = ray.util.get_node_ip_address()

    rows, data = [], []
    for n in counts:
        results = {}
        if n > 1:
            parallel = ParallelTransformer(source, n, device=args.device, address=args.ray_address)
            parallel.start()
            for s in sizes:
                t = median(timed(lambda s=s, m=parallel: m(**inputs[s]), args.warmup, args.runs))
                out = parallel(**inputs[s]).float().cpu()
                ref = single[s][1]
                results[s] = (t, ((out - ref).norm() / ref.norm()).item())
                print(f"{s}: {n} GPUs {t:.3f} s", flush=True)
            parallel.shutdown()
        for s, (h, w, f) in sizes.items():
            image_tokens = ((f - 1) // 4 + 1) * (h // 16) * (w // 16)
            shape = dict(host=host, image_tokens=image_tokens, text_tokens=args.text_tokens, heads=cfg.num_heads,
                         head_dim=cfg.hidden_size // cfg.num_heads, calls=cfg.depth + cfg.depth_single_blocks)
            t1 = single[s][0]
            t, err = results.get(s, (t1, 0.0))
            ex = exchange_seconds(ray, n, shape, args.device, args.warmup, args.runs) if n > 1 else 0.0
            rows.append([s, n, f"{t:.3f}", f"{t1 / t:.2f}x", f"{ex:.3f}", f"{ex / t:.0%}", f"{err:.2e}"])
            data.append(dict(size=s, gpus=n, step_s=t, speedup=t1 / t, exchange_s=ex, rel_l2_vs_1gpu=err,
                             image_tokens=image_tokens))
    header = ["size", "GPUs", "step s (median, caller's view)", "vs 1 GPU", "exchange s per step (alone)",
              "exchange / step", "rel L2 vs 1 GPU"]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_save:
        notes = (f"Preset {args.preset}, batch 1, {args.text_tokens} text tokens. 1 GPU: the model in this process; "
                 "N GPUs: a ParallelTransformer's Ray workers, timed from the caller (Ray round trip included). The "
                 "exchange column times one step's all-to-alls alone at the step's shapes (Ray tasks, no model).")
        print(write_result("multi-gpu", env, table, {"args": vars(args), "rows": data}, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
