"""The pack's command line: demo, convert, inspect, quality, bench (run through ``tools.py``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCHES = ("step", "linear", "attention", "fused")


def _demo(args: argparse.Namespace) -> int:
    """Tiny random HunyuanVideo end to end: checkpoint -> FP8 conversion -> load -> sample, compared with bf16."""
    from safetensors.torch import save_file

    from .checkpoint import convert_checkpoint, inspect_checkpoint, load_canonical_state_dict
    from .config import tiny_config
    from .loader import load_transformer, random_state_dict
    from .policies import get_preset
    from .sampler import sample

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    src, dst = out / "tiny_hunyuan_bf16.safetensors", out / f"tiny_hunyuan_{args.policy}.safetensors"
    save_file({k: v.contiguous() for k, v in random_state_dict(cfg, seed=args.seed, dtype=torch.bfloat16).items()},
              str(src))
    print(f"wrote the embedded tiny model ({cfg.depth} double + {cfg.depth_single_blocks} single blocks, "
          f"hidden {cfg.hidden_size}) to {src}")
    policy = get_preset(args.policy)
    report = convert_checkpoint(src, dst, policy, overwrite=True)
    print(f"converted -> {dst}: {report.fp8_layers} FP8 layers, {report.high_precision_layers} high-precision, "
          f"worst weight error {report.max_rel_error:.4f} ({report.worst_layer})")
    print(inspect_checkpoint(dst))

    g = torch.Generator().manual_seed(args.seed)
    frames, height, width = args.frames, args.height, args.width
    if (frames - 1) % 4:
        raise SystemExit(f"--frames must be 4n+1 (got {frames})")
    shape = (1, cfg.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    context = torch.randn(1, 12, cfg.context_in_dim, generator=g)
    mask = torch.ones(1, 12)
    mask[:, 9:] = 0  # padded text, as the text encoder delivers it
    y = torch.randn(1, cfg.vec_in_dim, generator=g)

    latents, times = {}, {}
    for name, path, pol in (("bf16", src, get_preset("bf16")), (args.policy, dst, policy)):
        sd, _ = load_canonical_state_dict(path)
        model = load_transformer(sd, pol, device=args.device)
        t0 = time.perf_counter()
        latents[name] = sample(model, shape, context.to(args.device), y.to(args.device),
                               attention_mask=mask.to(args.device), steps=args.steps, seed=args.seed)
        times[name] = time.perf_counter() - t0
    ref, cand = latents["bf16"].float().cpu(), latents[args.policy].float().cpu()
    err = ((cand - ref).norm() / ref.norm()).item()
    save_file({k: v.float().cpu().contiguous() for k, v in latents.items()}, str(out / "demo_latents.safetensors"))
    print(f"\nsampled {args.steps} steps of a {frames}x{height}x{width} latent video on {args.device}")
    print(f"| policy | wall s | final latent rel. L2 vs bf16 |\n|---|---|---|\n| bf16 | {times['bf16']:.2f} | 0 |\n"
          f"| {args.policy} | {times[args.policy]:.2f} | {err:.4f} |")
    if not torch.isfinite(cand).all():
        print("FAILED: non-finite latent")
        return 1
    print(f"latents saved to {out / 'demo_latents.safetensors'}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import convert_checkpoint
    from .policies import load_policy

    report = convert_checkpoint(args.src, args.dst, load_policy(args.policy), output_format=args.format,
                                overwrite=args.overwrite)
    print(report)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .checkpoint import inspect_checkpoint

    print(inspect_checkpoint(args.path))
    return 0


def _quality(rest: list[str]) -> int:
    from .quality import run_quality_cli

    return run_quality_cli(rest)


def _bench(name: str, rest: list[str]) -> int:
    script = Path(__file__).resolve().parent.parent / "bench" / f"bench_{name}.py"
    return subprocess.call([sys.executable, str(script), *rest])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tools.py", description="HunyuanVideo FP8 tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="tiny random model: convert to FP8, load, sample, compare with bf16")
    d.add_argument("--policy", default="fp8-balanced")
    d.add_argument("--steps", type=int, default=8)
    d.add_argument("--frames", type=int, default=9)
    d.add_argument("--height", type=int, default=64)
    d.add_argument("--width", type=int, default=96)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("--out", default="out/demo")
    c = sub.add_parser("convert", help="bf16/fp16/fp32 checkpoint in any layout -> FP8 under a policy")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--policy", default="fp8-balanced", help="preset name, JSON string or JSON file")
    c.add_argument("--format", default="ours", choices=["ours", "comfy_quant"])
    c.add_argument("--overwrite", action="store_true")
    i = sub.add_parser("inspect", help="layout, config, dtypes, scale ranges and policy of a checkpoint")
    i.add_argument("path")
    sub.add_parser("quality", help="FP8 vs bf16 report on a checkpoint (see: quality --help)", add_help=False)
    b = sub.add_parser("bench", help="GPU benchmarks", add_help=False)
    b.add_argument("name", choices=BENCHES)
    if argv[:1] == ["quality"]:
        return _quality(argv[1:])
    if argv[:1] == ["bench"] and len(argv) > 1:
        if argv[1] not in BENCHES:
            ap.error(f"unknown benchmark {argv[1]!r}; choose one of {', '.join(BENCHES)}")
        return _bench(argv[1], argv[2:])
    args = ap.parse_args(argv)
    try:
        return {"demo": _demo, "convert": _convert, "inspect": _inspect}[args.cmd](args)
    except (ValueError, OSError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
