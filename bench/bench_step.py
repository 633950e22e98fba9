"""One denoising step of the full HunyuanVideo on one GPU: ours (bf16 and FP8 presets) vs ComfyUI native.

``--family v1`` is the 13B v1 text-to-video transformer, ``--family 1.5`` the 8.3B HunyuanVideo 1.5 (its T2V inputs:
the image-conditioning channels zero, no byT5 glyph tokens). Random weights (no checkpoint), batch 1, 256 text tokens
(v1: embedded guidance 6). Every variant runs in the same process on the same weights and inputs.

The native variants are ComfyUI's own model as its "Load Diffusion Model" node builds it
(``comfy.sd.load_diffusion_model_state_dict`` on the same weights, fully loaded on the GPU):
``native-bf16``; ``native-fp8_e4m3fn_fast`` (weight_dtype fp8_e4m3fn_fast: e4m3 weights, unit scales); and
``native-comfy_quant`` (a ComfyUI-format FP8 checkpoint, every block linear e4m3 with one scale per tensor: ComfyUI's
own W8A8).

Per variant and size: median step time after warm-up (CUDA events), peak GPU memory, weight memory, the share of
kernel time in attention / GEMMs / the rest (one profiled step), and the relative L2 error of the output against our
bf16 output.

    python bench/bench_step.py --comfyui /path/to/ComfyUI                      # v1: all sizes, all variants
    python bench/bench_step.py --comfyui /path/to/ComfyUI --family 1.5         # 1.5 at 480p and 720p
    python bench/bench_step.py --tiny --device cpu                              # smoke test of the harness
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import traceback

import torch
from common import environment, import_comfy, load_pack, markdown_table, median, time_cuda, write_result

SIZES = {"480x848x61f": (480, 848, 61), "544x960x129f": (544, 960, 129), "720x1280x129f": (720, 1280, 129)}
SIZES_15 = {"480x848x121f": (480, 848, 121), "720x1280x121f": (720, 1280, 121)}
OURS = ["ours-bf16", "fp8-weight-only", "fp8-balanced+sdpa", "fp8-balanced", "fp8-max"]
NATIVE = ["native-bf16", "native-fp8_e4m3fn_fast", "native-comfy_quant"]
ATTN_KERNELS = ("fmha", "flash", "attn", "attention", "sdpa", "cudnn_generated")
GEMM_KERNELS = ("gemm", "nvjet", "cutlass", "xmma", "scaled_mm", "cublas", "wgmma")


def latent_shape(h: int, w: int, f: int, cfg=None) -> tuple[int, int, int, int, int]:
    """The denoised latent of an ``h`` x ``w`` x ``f`` video (v1's 16 channels at 8x unless ``cfg`` says otherwise)."""
    if cfg is None:
        return (1, 16, (f - 1) // 4 + 1, h // 8, w // 8)
    return cfg.latent_shape(1, w, h, f)


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
    """The model's inputs for one step; the channels past the latent's (1.5's image latent and mask) are zeros, as
    in ComfyUI's text-to-video."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = latent_shape(*size, cfg=cfg)
    x = torch.zeros(shape[0], cfg.in_channels, *shape[2:])
    x[:, : shape[1]] = torch.randn(shape, generator=g)
    to = dict(device=device, dtype=torch.bfloat16)
    inputs = dict(x=x.to(**to), timestep=torch.tensor([500.0], device=device),
                  context=torch.randn(1, text_tokens, cfg.context_in_dim, generator=g).to(**to))
    if cfg.vec_in_dim:
        inputs["y"] = torch.randn(1, cfg.vec_in_dim, generator=g).to(**to)
    if cfg.guidance_embed:
        inputs["guidance"] = torch.tensor([6.0], device=device)
    return inputs


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


def comfy_quant_state_dict(sd: dict, device: str) -> dict:
    """``sd`` as a ComfyUI-format FP8 checkpoint: every linear of the double/single blocks in e4m3 with one fp32 scale
    per tensor and its ``comfy_quant`` entry (what our converter's ``comfy_quant`` output holds)."""
    from hyvideo_fp8.fp8.quantize import quantize_tensorwise
    from hyvideo_fp8.hunyuan.checkpoint.writer import layer_tensors
    from hyvideo_fp8.hunyuan.config import is_linear_weight

    out = {}
    for name, t in sd.items():
        if name.startswith(("double_blocks.", "single_blocks.")) and is_linear_weight(name, t.shape):
            q, scale = quantize_tensorwise(t.to(device).float())
            out.update({k: v.cpu() for k, v in layer_tensors(name[: -len(".weight")], q, scale, "comfy_quant").items()})
        else:
            out[name] = t
    return out


def build_native(variant: str, sd: dict, device: str, comfy_path: str):
    """ComfyUI's own model for these weights, as its "Load Diffusion Model" node loads it, fully on the GPU."""
    comfy_sd, mm = import_comfy(comfy_path)
    if variant == "native-bf16":
        weights, options = dict(sd), {"dtype": torch.bfloat16}
    elif variant == "native-fp8_e4m3fn_fast":
        weights, options = dict(sd), {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    else:
        weights, options = comfy_quant_state_dict(sd, device), {}
    patcher = comfy_sd.load_diffusion_model_state_dict(weights, model_options=options)
    if patcher is None:
        raise RuntimeError("ComfyUI did not recognise these weights as a diffusion model")
    mm.load_models_gpu([patcher], force_full_load=True)
    model = patcher.model.diffusion_model
    model.comfy_patcher = patcher  # keeps ComfyUI's handle alive while the model is timed
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
    ap.add_argument("--family", choices=("v1", "1.5"), default="v1", help="v1 (13B) or HunyuanVideo 1.5 (8.3B)")
    ap.add_argument("--sizes", default=None, help=f"comma list of v1 {list(SIZES)} or 1.5 {list(SIZES_15)} "
                                                 "(default: all of the family's)")
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
    from hyvideo_fp8.hunyuan.config import RELEASED, RELEASED_15, tiny_config, tiny_variant_config

    v15 = args.family == "1.5"
    if args.tiny:
        # head dim 128 and 1.5's byT5 sizes: what ComfyUI's detection assumes, so the native variants load too
        head128 = dict(hidden_size=256, num_heads=2, axes_dim=(16, 56, 56))
        cfg = (tiny_variant_config("1.5", byt5_dims=(1472, 2048, 2048), depth=4, **head128) if v15
               else tiny_config(vec_in_dim=768, **head128))
        sizes = {"tiny-64x96x9f": (64, 96, 9), "tiny-32x64x5f": (32, 64, 5)}
    else:
        cfg, known = (RELEASED_15, SIZES_15) if v15 else (RELEASED, SIZES)
        names = args.sizes.split(",") if args.sizes else list(known)
        if set(names) - set(known):
            ap.error(f"unknown sizes {sorted(set(names) - set(known))} for --family {args.family}; "
                     f"known: {list(known)}")
        sizes = {k: known[k] for k in names}
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
                model = build_native(variant, sd, args.device, args.comfyui)
            else:
                model = build_ours(variant, sd, cfg, args.device)
        except Exception as e:  # a variant that cannot build is reported, not fatal
            print(f"[bench_step] {variant}: build failed: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
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
                    kept = {}

                    def fn_keep(fn=fn, kept=kept):
                        kept["out"] = fn()

                    # the first step at the first size includes JIT / torch.compile; later sizes reuse the kernels
                    first = time_cuda(fn, warmup=0, runs=1)[0] if warmup else None
                    times = time_cuda(fn_keep, warmup=max(warmup - 1, 0), runs=runs)
                    out = kept.pop("out")
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
        if args.comfyui and variant in NATIVE:
            import_comfy(args.comfyui)[1].unload_all_models()

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
        path = write_result("step-15" if v15 else "step", env, table, {"results": results, "family": args.family})
        print(f"wrote {path}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
