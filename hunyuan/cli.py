"""The pack's command line: demo, convert, inspect, quality (run through ``tools.py``).

Bad input, a full disk or too little memory end in one line on stderr and exit code 2; Ctrl-C and SIGTERM end in
one line and exit code 130, after the converter has removed its partial output.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from .checkpoint.comfy_compat import loaders_note
from .checkpoint.writer import OUTPUT_FORMATS

DEMO_MAX_ERROR = 0.05  # FP8 vs bf16 final-latent error above which the demo reports a failure


def _demo(args: argparse.Namespace) -> int:
    """Tiny random HunyuanVideo end to end: checkpoint -> FP8 conversion -> load -> sample, compared with bf16."""
    from .checkpoint import convert_checkpoint, inspect_checkpoint, load_canonical_state_dict
    from .checkpoint.writer import save_safetensors
    from .config import tiny_config
    from .loader import load_transformer, random_state_dict
    from .policies import get_preset
    from .sampler import sample

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    src, dst = out / "tiny_hunyuan_bf16.safetensors", out / f"tiny_hunyuan_{args.policy}.safetensors"
    save_safetensors(src, random_state_dict(cfg, seed=args.seed, dtype=torch.bfloat16), overwrite=True)
    print(f"wrote the embedded tiny model ({cfg.depth} double + {cfg.depth_single_blocks} single blocks, "
          f"hidden {cfg.hidden_size}) to {src}")
    policy = get_preset(args.policy)
    report = convert_checkpoint(src, dst, policy, overwrite=True)
    print(f"converted: {report}")
    print(inspect_checkpoint(dst))

    g = torch.Generator().manual_seed(args.seed)
    frames, height, width = args.frames, args.height, args.width
    if (frames - 1) % 4:
        raise SystemExit(f"--frames must be 4n+1 (got {frames})")
    if height % 16 or width % 16:
        raise SystemExit(f"--height and --width must be multiples of 16 (got {height}x{width})")
    shape = cfg.latent_shape(1, width, height, frames)
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
    save_safetensors(out / "demo_latents.safetensors", {k: v.float().cpu() for k, v in latents.items()}, overwrite=True)
    print(f"\nsampled {args.steps} steps of {frames} frames at {height}x{width} pixels (a {shape[2]}x{shape[3]}x"
          f"{shape[4]} latent, {cfg.in_channels} channels) on {args.device}; latents saved to "
          f"{out / 'demo_latents.safetensors'}")
    print(f"| policy | wall s | final latent rel. L2 vs bf16 |\n|---|---|---|\n| bf16 | {times['bf16']:.2f} | 0 |\n"
          f"| {args.policy} | {times[args.policy]:.2f} | {err:.4f} |")
    if not err < DEMO_MAX_ERROR:
        print(f"FAILED: {args.policy} is {err:.4f} from bf16; this tiny model stays below {DEMO_MAX_ERROR} when FP8 "
              "works")
        return 1
    print(f"OK: {args.policy} stays within {DEMO_MAX_ERROR} of bf16 (FP8 moves the result, not by much)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import convert_checkpoint
    from .policies import load_policy

    if Path(args.dst).exists() and not Path(args.dst).is_dir() and not args.overwrite:
        raise FileExistsError(f"{args.dst} already exists; pass --overwrite to replace it")
    report = convert_checkpoint(args.src, args.dst, load_policy(args.policy), output_format=args.format,
                                overwrite=args.overwrite)
    print(report.summary())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .checkpoint import inspect_checkpoint

    print(inspect_checkpoint(args.path))
    return 0


def _quality(args: argparse.Namespace) -> int:
    """Exit 0 when every candidate passes its error budget, 1 when one fails or breaks (bad input: 2, in main)."""
    from .quality import checkpoint_quality

    report = checkpoint_quality(
        args.checkpoint, args.policies, size=args.size, steps=args.steps, seed=args.seed, shift=args.shift,
        guidance=args.guidance, cond=args.cond, tokens=args.tokens, exact_reference=args.exact_reference,
        with_noise_floor=not args.no_floor, device=args.device,
        on_run=lambda i, n, name: print(f"[hyvideo_fp8] quality run {i + 1}/{n}: {name}", file=sys.stderr))
    paths = report.save(args.out)
    print(report.to_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0 if all(c.verdict.startswith("PASS") for c in report.candidates) else 1


def _quality_parser(sub) -> None:
    from .policies import PRESETS
    from .quality import CANDIDATE_OPTIONS
    from .sampler import DEFAULT_GUIDANCE, DEFAULT_SHIFT

    q = sub.add_parser("quality", help="FP8 vs bf16 report on a checkpoint: per-step errors, verdicts, plot",
                       description="The same sampling under the bf16 reference, a kernel noise floor and each "
                                   "candidate; per-step errors, final latent error, verdicts; report.txt/json and "
                                   "a PNG plot (needs Pillow).")
    q.add_argument("checkpoint", help="any HunyuanVideo 1.0 transformer file the pack reads (bf16 or FP8)")
    q.add_argument("--policies", default="fp8-balanced,fp8-max", help=(
        f"comma-separated candidates: preset names ({', '.join(PRESETS)}) or policy JSON files, each optionally "
        f"with +key=value options ({CANDIDATE_OPTIONS}), e.g. fp8-max+hybrid=2/1,fp8-balanced+attention=sdpa"))
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--size", default="256x256x9", help="video WIDTHxHEIGHTxFRAMES in pixels (default 256x256x9)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--shift", type=float, default=DEFAULT_SHIFT)
    q.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    q.add_argument("--cond", help="safetensors with 'context' [1, L, 4096], 'y' [1, 768], optional "
                                  "'attention_mask' [1, L] (default: seeded random conditioning)")
    q.add_argument("--tokens", type=int, default=64, help="text tokens of the random conditioning")
    q.add_argument("--exact-reference", action="store_true", help=(
        "load fresh weights for every run (reference, floor, each candidate) from the checkpoint kept in host "
        "memory: no run carries another's rounding; slower (one load per run)"))
    q.add_argument("--no-floor", action="store_true", help="skip the kernel noise-floor run")
    q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    q.add_argument("--out", default="out/quality", help="folder for report.txt, report.json, error_per_step.png")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str], epilog: str | None = None) -> int:
    """Run one command; ``epilog`` adds lines to ``--help`` (commands the caller dispatches itself)."""
    ap = argparse.ArgumentParser(prog="tools.py", description="HunyuanVideo FP8 tools", epilog=epilog)
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
    c.add_argument("--format", default="ours", choices=OUTPUT_FORMATS,
                   help="; ".join(f"{fmt}: {loaders_note(fmt)}" for fmt in OUTPUT_FORMATS))
    c.add_argument("--overwrite", action="store_true")
    i = sub.add_parser("inspect", help="layout, config, dtypes, scale ranges and policy of a checkpoint")
    i.add_argument("path")
    _quality_parser(sub)
    args = ap.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM is cleaned up like Ctrl-C: no partial output stays behind
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return {"demo": _demo, "convert": _convert, "inspect": _inspect, "quality": _quality}[args.cmd](args)
    except (ValueError, OSError, MemoryError, FloatingPointError) as e:  # one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted ({str(e) or 'Ctrl-C'}): {args.cmd} stopped; no partial output was left behind",
              file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
