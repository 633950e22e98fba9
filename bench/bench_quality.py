"""The quality report at full size on the GPU: the 13B config (or 1.5's 8.3B) with random weights, every preset
against bf16.

``--family 1.5`` takes 1.5's step-distilled layout (meanflow ``time_r``) and feeds byT5 glyph tokens and SigLIP image
features, so every 1.5 conditioning module runs; its candidates add fp8-balanced with those modules (byT5 mapper,
vision projection, ``time_r`` embedder) in W8A8 FP8, the measurement behind keeping them in bf16.

One bf16 model is built on the device; the report's shared-model mode runs the bf16 reference and the noise floor
(flash instead of cuDNN attention) on it first, then quantizes layers as candidates need them. The report files go
to ``bench/results/quality-<date>-<gpu>/`` and the verdict table is printed last. Random weights make attention
flatter than a trained model's, so these budgets are a floor to re-check on real weights.

    python bench/bench_quality.py                        # H200: 480x848x61f, 4 steps
    python bench/bench_quality.py --family 1.5 --size 848x480x121
    python bench/bench_quality.py --tiny --device cpu    # smoke test
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import RESULTS, environment, load_pack

CANDIDATES = "fp8-weight-only,fp8-balanced+attention=sdpa,fp8-balanced,fp8-max,fp8-max+hybrid=1/1"
CANDIDATES_15 = "fp8-weight-only,fp8-balanced,fp8-max"
CONDITIONING_15 = ("byt5_in.*", "vision_in.*", "time_r_in.*")


def conditioning_in_fp8():
    """fp8-balanced with 1.5's conditioning modules in W8A8 FP8 too (no budget: it is measured, not offered)."""
    from hyvideo_fp8.fp8.formats import ComputeMode
    from hyvideo_fp8.fp8.policy import Rule
    from hyvideo_fp8.hunyuan.policies import get_preset
    from hyvideo_fp8.hunyuan.quality import Candidate

    base = get_preset("fp8-balanced")
    rules = tuple(Rule(p, ComputeMode.FP8) for p in CONDITIONING_15) + base.rules
    return Candidate(base.with_overrides(name="fp8-balanced+conditioning-fp8", rules=rules, error_budget=0.0,
                                         error_budgets={}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="848x480x61", help="WIDTHxHEIGHTxFRAMES")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--family", choices=("v1", "1.5"), default="v1")
    ap.add_argument("--candidates", default=None, help=f"default: v1 {CANDIDATES}; 1.5 {CANDIDATES_15} and "
                                                       "fp8-balanced+conditioning-fp8")
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    load_pack()
    import dataclasses

    from hyvideo_fp8.hunyuan.config import RELEASED, RELEASED_15, tiny_config, tiny_variant_config
    from hyvideo_fp8.hunyuan.loader import build_random
    from hyvideo_fp8.hunyuan.policies import get_preset
    from hyvideo_fp8.hunyuan.quality import QualityInputs, parse_candidates, run_quality

    env = environment()
    v15 = args.family == "1.5"
    if v15:
        cfg = tiny_variant_config("1.5", meanflow=True, depth=4) if args.tiny else dataclasses.replace(
            RELEASED_15, meanflow=True)
    else:
        cfg = tiny_config() if args.tiny else RELEASED
    width, height, frames = (96, 64, 9) if args.tiny else (int(v) for v in args.size.split("x"))
    g = torch.Generator().manual_seed(args.seed)
    context = torch.randn(1, args.text_tokens, cfg.context_in_dim, generator=g)
    y = torch.randn(1, cfg.vec_in_dim, generator=g)
    extra = {}
    if v15:  # glyph text and a start image's features, so the byT5 mapper and the vision projection run
        extra = {"txt_byt5": torch.randn(1, 64, cfg.byt5_dims[0], generator=g),
                 "clip_fea": torch.randn(1, 729, cfg.vision_in_dim, generator=g)}
    candidates = parse_candidates(args.candidates or (CANDIDATES_15 if v15 else CANDIDATES))
    if v15 and args.candidates is None:
        candidates.append(conditioning_in_fp8())
    inputs = QualityInputs(context, y, cfg.latent_shape(1, width, height, frames), None, args.seed, args.steps,
                           guidance=6.0 if cfg.guidance_embed else None,
                           conditioning=f"seeded random, {args.text_tokens} tokens"
                                        + (", 64 byT5 tokens, 729 image-feature tokens" if v15 else ""),
                           model_inputs=extra)
    model = build_random(cfg, get_preset("bf16"), seed=args.seed, device=args.device)
    name = ("tiny" if args.tiny else "full 8.3B 1.5 (step-distilled layout)" if v15 else "full 13B") + " config"
    setup = {"model": f"{name}, random weights (seed {args.seed})",
             "video": f"{width}x{height}, {frames} frames", "gpu": env["gpu"], "torch": env["torch"],
             "command": env["command"]}
    report = run_quality(model, inputs, candidates, restore=False, setup=setup,
                         on_run=lambda i, n, name: print(f"[bench_quality] run {i + 1}/{n}: {name}", flush=True))
    if not args.tiny:
        gpu = env["gpu"].replace("NVIDIA ", "").replace(" ", "-").lower()
        paths = report.save(RESULTS / f"quality{'-15' if v15 else ''}-{env['date'][:10]}-{gpu}")
        print("written: " + ", ".join(str(p) for p in paths.values()))
    print(report.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
