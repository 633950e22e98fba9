"""The quality report at full size on the GPU: the 13B config with random weights, every preset against bf16.

One bf16 model is built on the device; the report's shared-model mode runs the bf16 reference and the noise floor
(flash instead of cuDNN attention) on it first, then quantizes layers as candidates need them. The report files go
to ``bench/results/quality-<date>-<gpu>/`` and the verdict table is printed last. Random weights make attention
flatter than a trained model's, so these budgets are a floor to re-check on real weights.

    python bench/bench_quality.py                        # H200: 480x848x61f, 4 steps
    python bench/bench_quality.py --tiny --device cpu    # smoke test
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import RESULTS, environment, load_pack

CANDIDATES = "fp8-weight-only,fp8-balanced+attention=sdpa,fp8-balanced,fp8-max,fp8-max+hybrid=1/1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="848x480x61", help="WIDTHxHEIGHTxFRAMES")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--candidates", default=CANDIDATES)
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    load_pack()
    from hyvideo_fp8.hunyuan.config import RELEASED, tiny_config
    from hyvideo_fp8.hunyuan.loader import build_random
    from hyvideo_fp8.hunyuan.policies import get_preset
    from hyvideo_fp8.hunyuan.quality import QualityInputs, parse_candidates, run_quality

    env = environment()
    cfg = tiny_config() if args.tiny else RELEASED
    width, height, frames = (96, 64, 9) if args.tiny else (int(v) for v in args.size.split("x"))
    g = torch.Generator().manual_seed(args.seed)
    context = torch.randn(1, args.text_tokens, cfg.context_in_dim, generator=g)
    y = torch.randn(1, cfg.vec_in_dim, generator=g)
    inputs = QualityInputs(context, y, cfg.latent_shape(1, width, height, frames),
                           None, args.seed, args.steps, conditioning="seeded random, 256 tokens")
    model = build_random(cfg, get_preset("bf16"), seed=args.seed, device=args.device)
    setup = {"model": f"{'tiny' if args.tiny else 'full 13B'} config, random weights (seed {args.seed})",
             "video": f"{width}x{height}, {frames} frames", "gpu": env["gpu"], "torch": env["torch"],
             "command": env["command"]}
    report = run_quality(model, inputs, parse_candidates(args.candidates), restore=False, setup=setup,
                         on_run=lambda i, n, name: print(f"[bench_quality] run {i + 1}/{n}: {name}", flush=True))
    if not args.tiny:
        gpu = env["gpu"].replace("NVIDIA ", "").replace(" ", "-").lower()
        paths = report.save(RESULTS / f"quality-{env['date'][:10]}-{gpu}")
        print("written: " + ", ".join(str(p) for p in paths.values()))
    print(report.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
