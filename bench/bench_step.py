"""One denoising step of the full 13B HunyuanVideo on one GPU: ours (bf16 and FP8 presets) vs ComfyUI native.

Random weights (no checkpoint), batch 1, 256 text tokens, embedded guidance 6. Every variant runs in the
same process on the same weights and inputs; per variant and size: median step time after warm-up (CUDA
events), peak GPU memory, weight memory, the share of kernel time in attention / GEMMs / the rest (one
profiled step), and the relative L2 error of the output against our bf16 output.

    python bench/bench_step.py --comfyui /path/to/ComfyUI            # H200: all sizes, all variants
    python bench/bench_step.py --tiny --device cpu                     # smoke test of the harness
"""

from __future__ import annotations

import argparse
import gc
import math
import sys

import torch
from common import environment, load_pack, markdown_table, median, time_cuda, write_result

SIZES = {"480x848x61f": (480, 848, 61), "544x960x129f": (544, 960, 129), "720x1280x129f": (720, 1280, 129)}
OURS = ["ours-bf16", "fp8-weight-only", "fp8-balanced+sdpa", "fp8-balanced", "fp8-max"]
NATIVE = ["native-bf16", "native-fp8_e4m3fn_fast"]
ATTN_KERNELS = ("fmha", "flash", "attn", "attention", "sdpa", "cudnn_generated")
GEMM_KERNELS = ("gemm", "nvjet", "cutlass", "xmma", "scaled_mm", "cublas", "wgmma")


def latent_shape(h: int, w: int, f: int) -> tuple[int, int, int, int, int]:
    return (1, 16, (f - 1) // 4 + 1, h // 8, w // 8)


def random_canonical(cfg, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Random bf16 weights in canonical (ComfyUI) names, made on the device tensor by tensor."""
    from hyvideo_fp8.hunyuan.config import canonical_shapes

    g = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, shape in canonical_shapes(cfg).items():
        if name.endswith(".scale"):  # RMS q/k norm weights
            t = 1.0 + 0.1 * torch.randn(shape, generator=g, device=device)
        elif name.endswith(".bias"):
            t = 0.02 * torch.randn(shape, generator=g, device=device)
        else:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g, device=device) / math.sqrt(fan_in)
        t = t.to(torch.bfloat16)
        # Kept on the host (pinned) so each variant's peak GPU memory is its own model plus activations.
        sd[name] = t.cpu().pin_memory() if t.is_cuda else t
    return sd


def make_inputs(cfg, size, device: str, seed: int, text_tokens: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(latent_shape(*size), generator=g)
    ctx = torch.randn(1, text_tokens, cfg.context_in_dim, generator=g)
    y = torch.randn(1, cfg.vec_in_dim, generator=g)
    to = dict(device=device, dtype=torch.bfloat16)
    return dict(x=x.to(**to), timestep=torch.tensor([500.0], device=device), context=ctx.to(**to), y=y.to(**to),
                guidance=torch.tensor([6.0], device=device))


def build_ours(variant: str, sd: dict, cfg, device: str):
    """``<preset>[+sdpa][+swap][+compile]``: +sdpa keeps bf16 attention, +swap streams the last half of the double
    and single blocks from pinned host memory (block swap), +compile compiles every block (its first step is timed
    separately as the compile time)."""
    from hyvideo_fp8.hunyuan.loader import load_transformer
    from hyvideo_fp8.hunyuan.offload import enable_block_swap
    from hyvideo_fp8.hunyuan.policies import get_preset

    preset, *options = variant.split("+")
    policy = get_preset("bf16" if preset == "ours-bf16" else preset)
    if "sdpa" in options:  # W8A8 linears with bf16 attention
        policy = policy.with_overrides(attention="sdpa")
    model = load_transformer(dict(sd), policy, device=device, config=cfg)
    if "swap" in options:
        enable_block_swap(model, cfg.depth // 2, cfg.depth_single_blocks // 2)
    if "compile" in options:
        model.compile_blocks()
    return model


def known_variant(variant: str) -> bool:
    preset, *options = variant.split("+")
    return variant in NATIVE or ((preset in ("ours-bf16", "fp8-weight-only", "fp8-balanced", "fp8-max"))
                                 and set(options) <= {"sdpa", "swap", "compile"})


def build_native(variant: str, sd: dict, cfg, device: str, comfy_path: str):
    sys.path.insert(0, comfy_path)
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ops

    unet = dict(image_model="hunyuan_video", in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                vec_in_dim=cfg.vec_in_dim, context_in_dim=cfg.context_in_dim, hidden_size=cfg.hidden_size,
                mlp_ratio=cfg.mlp_ratio, num_heads=cfg.num_heads, depth=cfg.depth,
                depth_single_blocks=cfg.depth_single_blocks, axes_dim=list(cfg.axes_dim), theta=int(cfg.theta),
                patch_size=list(cfg.patch_size), qkv_bias=True, guidance_embed=cfg.guidance_embed,
                byt5=False, meanflow=False)
    if variant == "native-bf16":
        ops, dtype = comfy.ops.disable_weight_init, torch.bfloat16
    else:  # what UNETLoader weight_dtype=fp8_e4m3fn_fast builds: e4m3 weights, unit-scale _scaled_mm
        ops, dtype = comfy.ops.fp8_ops, torch.float8_e4m3fn
    with torch.device("meta"):
        model = hv.HunyuanVideo(**unet, dtype=dtype, operations=ops)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, strict=True, assign=True)
    return model.eval()


def kernel_split(fn) -> dict[str, float]:
    """Share of CUDA kernel time in attention, GEMMs and the rest, from one profiled call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    split = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        name = ev.key.lower()
        if t <= 0 or ev.key.startswith(("aten::", "cuda", "Memcpy", "Memset")) and "kernel" not in name:
            continue
        kind = "attention" if any(k in name for k in ATTN_KERNELS) else (
            "gemm" if any(k in name for k in GEMM_KERNELS) else "other")
        split[kind] += t
    total = sum(split.values()) or 1.0
    return {k: v / total for k, v in split.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {list(SIZES)}")
    ap.add_argument("--variants", default=",".join(OURS + NATIVE))
    ap.add_argument("--comfyui", default=None, help="ComfyUI source tree: adds the native variants")
    ap.add_argument("--runs", type=int, default=3, help="timed steps at the first size")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps at the first size (Triton JIT, cuDNN plans)")
    ap.add_argument("--runs-rest", type=int, default=None, help="timed steps at later sizes (default: --runs)")
    ap.add_argument("--warmup-rest", type=int, default=None,
                    help="warm-up steps at later sizes (default: --warmup); the kernels are already compiled there")
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--profile", default="", help="comma list of sizes to profile for the attention/GEMM/other split")
    ap.add_argument("--tiny", action="store_true", help="tiny config and sizes (CPU smoke test)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    load_pack()
    from hyvideo_fp8.hunyuan.config import RELEASED, tiny_config

    cfg = tiny_config() if args.tiny else RELEASED
    tiny_sizes = {"tiny-64x96x9f": (64, 96, 9), "tiny-32x64x5f": (32, 64, 5)}
    sizes = tiny_sizes if args.tiny else {k: SIZES[k] for k in args.sizes.split(",")}
    unknown = [v for v in args.variants.split(",") if not known_variant(v)]
    if unknown:
        ap.error(f"unknown variants {unknown}; e.g. {OURS + NATIVE} or fp8-balanced+swap, fp8-max+compile")
    variants = [v for v in args.variants.split(",") if v not in NATIVE or args.comfyui]
    print(f"preset attention modes: fp8-balanced/fp8-max as defined in hunyuan/policies.py; variants {variants}")
    if "ours-bf16" in variants:  # the error reference runs first
        variants.remove("ours-bf16")
        variants.insert(0, "ours-bf16")
    cuda = args.device.startswith("cuda")
    env = environment()
    print(env, flush=True)

    sd = random_canonical(cfg, args.device, args.seed)
    results, refs = [], {}
    for variant in variants:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            if variant in NATIVE:
                model = build_native(variant, sd, cfg, args.device, args.comfyui)
            else:
                model = build_ours(variant, sd, cfg, args.device)
        except Exception as e:  # a variant that cannot build is reported, not fatal
            print(f"[bench_step] {variant}: build failed: {type(e).__name__}: {e}", flush=True)
            results.append(dict(variant=variant, error=f"{type(e).__name__}: {e}"))
            continue
        weight_gib = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2**30
        for i, (size_name, size) in enumerate(sizes.items()):
            warmup = args.warmup if i == 0 or args.warmup_rest is None else args.warmup_rest
            if "+compile" in variant:  # static shapes: every new size compiles again
                warmup = max(warmup, 1)
            runs = args.runs if i == 0 or args.runs_rest is None else args.runs_rest
            inputs = make_inputs(cfg, size, args.device, args.seed, args.text_tokens)
            def fn(model=model, inputs=inputs):
                return model(**inputs)

            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            try:
                with torch.inference_mode():
                    first = None
                    if warmup == 0:  # kernels already warm from the first size: the timed steps give the output
                        kept = {}

                        def fn_keep(fn=fn, kept=kept):
                            kept["out"] = fn()

                        times = time_cuda(fn_keep, warmup=0, runs=runs)
                        out = kept.pop("out")
                    else:
                        first = time_cuda(fn, warmup=0, runs=1)[0]  # includes JIT / torch.compile on first use
                        out = fn()  # the output for the error column
                        times = time_cuda(fn, warmup=warmup - 1, runs=runs)
                    # Peak before profiling: the profiled step was seen to inflate the peak (2026-11-29 run).
                    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                    split = kernel_split(fn) if (size_name in args.profile.split(",") and cuda) else None
            except Exception as e:
                print(f"[bench_step] {variant} {size_name}: failed: {type(e).__name__}: {e}", flush=True)
                results.append(dict(variant=variant, size=size_name, error=f"{type(e).__name__}: {e}"))
                continue
            out = out.float().cpu()
            if torch.isnan(out).any():
                err = float("nan")
            elif variant == "ours-bf16":
                refs[size_name] = out
                err = 0.0
            elif size_name in refs:
                err = ((out - refs[size_name]).norm() / refs[size_name].norm()).item()
            else:
                err = None
            row = dict(variant=variant, size=size_name, step_s=median(times), times=times, first_step_s=first,
                       peak_gib=peak,
                       weight_gib=weight_gib, rel_l2_vs_ours_bf16=err, split=split)
            results.append(row)
            print(f"[bench_step] {row}", flush=True)
            del out
        del model

    rows = []
    for size_name in sizes:
        base = {r["variant"]: r["step_s"] for r in results if r.get("size") == size_name and "step_s" in r}
        nat = base.get("native-bf16")
        for r in (r for r in results if r.get("size") == size_name):
            if "error" in r:
                rows.append([size_name, r["variant"], "failed", "", "", "", "", "", r["error"][:60]])
                continue
            sp = r["split"]
            rows.append([
                size_name, r["variant"], f"{r['step_s']:.3f}",
                "-" if r.get("first_step_s") is None else f"{r['first_step_s']:.2f}",
                f"{nat / r['step_s']:.2f}x" if nat else "-",
                f"{r['peak_gib']:.1f}", f"{r['weight_gib']:.1f}",
                "-" if r["rel_l2_vs_ours_bf16"] is None else f"{r['rel_l2_vs_ours_bf16']:.4f}",
                "-" if not sp else f"{sp['attention']:.0%} / {sp['gemm']:.0%} / {sp['other']:.0%}",
            ])
    table = markdown_table(["size", "variant", "step s (median)", "first step s (JIT/compile)", "vs native bf16",
                            "peak GiB", "weights GiB", "rel L2 vs ours-bf16", "attn / GEMM / other"], rows)
    if not args.no_save and not args.tiny:
        path = write_result("step", env, table, {"results": results})
        print(f"wrote {path}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
