"""The whole ComfyUI sample on a smaller card: our fp8-balanced 13B MODEL (loader setting ``block_swap="auto"``)
sampled by ComfyUI's own ``comfy.sample.sample``, then ComfyUI's HunyuanVideo VAE decoding the latent (tiled, with
the official template's VAEDecodeTiled settings), in one process with ComfyUI's memory management deciding what
stays loaded.

A card of C GiB is made by occupying the rest of the GPU with one tensor before the sample, so ComfyUI's free-memory
query, its partial-load budget and the caching allocator all see the smaller card, the CUDA context's share
included. Reported per size and card: what ComfyUI chose (blocks streamed, resident size), the peak GPU memory of
the sample and of the decode above the blocker (the decode's counts our weights until ComfyUI unloads them for the
VAE), whether each completed, and their seconds (a sample's seconds include loading the model and, for the first
sample of a size, the kernels' first-use tuning, as a user's first run does). Random weights; the text encoder is not
run (ComfyUI unloads it before sampling; its conditioning here is random).

    python bench/bench_sample_memory.py --comfyui /path/to/ComfyUI          # 720p at 16 and 12 GiB, 544p at 10 GiB
    python bench/bench_sample_memory.py --comfyui /path/to/ComfyUI --tiny   # smoke test of the harness
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging

import torch
from bench_memory import parse_caps
from bench_step import latent_shape
from bench_vae_decode import random_vae, tiled_args
from common import Measured, environment, import_comfy, load_pack, markdown_table, measure_peak, write_result

SIZES = {"544x960x129f": (544, 960, 129), "720x1280x129f": (720, 1280, 129)}
DEFAULT_CARDS = "720x1280x129f:0,16,12;544x960x129f:10"  # 0: the whole GPU
TEXT_TOKENS = 256


def occupy(card_gib: float) -> torch.Tensor | None:
    """One tensor holding all GPU memory beyond a card of ``card_gib`` (None for 0: the whole GPU)."""
    if not card_gib or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()  # the CUDA context and libraries: a real card has them too
    keep = int(card_gib * 2**30) - context
    if keep <= 0 or keep >= free:
        raise SystemExit(f"a {card_gib:g} GiB card cannot be made on this GPU ({free / 2**30:.1f} GiB free)")
    return torch.empty(free - keep, dtype=torch.uint8, device="cuda")


def conditioning(cfg, shape, seed: int):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, TEXT_TOKENS, cfg.context_in_dim, generator=g)
    positive = [[context, {"pooled_output": torch.randn(1, cfg.vec_in_dim, generator=g), "guidance": 6.0}]]
    return positive, torch.zeros(shape), torch.randn(shape, generator=g)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True, help="a ComfyUI source tree")
    ap.add_argument("--cards", default=DEFAULT_CARDS, help="size:GiB,GiB;... (0: the whole GPU; default %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="tiny config and size (smoke test, CPU or GPU)")
    args = ap.parse_args(argv)
    sd_module, mm = import_comfy(args.comfyui)
    load_pack()
    import comfy.sample

    from hyvideo_fp8.hunyuan.config import RELEASED, tiny_config
    from hyvideo_fp8.hunyuan.loader import build_random
    from hyvideo_fp8.hunyuan.policies import get_preset
    from hyvideo_fp8.nodes.comfy_model import wrap_transformer

    head128 = dict(hidden_size=256, num_heads=2, axes_dim=(16, 56, 56))
    cfg = tiny_config(vec_in_dim=768, **head128) if args.tiny else RELEASED
    sizes = {"tiny-64x96x9f": (64, 96, 9)} if args.tiny else SIZES
    cards = {"tiny-64x96x9f": [0.0]} if args.tiny else parse_caps(args.cards)
    policy = get_preset("fp8-balanced")
    build_on = "cuda" if torch.cuda.is_available() else "cpu"
    transformer = build_random(cfg, policy, seed=0, device=build_on).to(mm.unet_offload_device())
    gc.collect()
    model = wrap_transformer(transformer, cfg, policy.compute_dtype, block_swap="auto")
    vae = random_vae(sd_module)
    chosen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: "block swap" in record.getMessage() and chosen.append(record.getMessage())
    logging.getLogger("hyvideo_fp8").addHandler(handler)
    logging.getLogger("hyvideo_fp8").setLevel(logging.INFO)
    rows, data = [], []
    for size_name, card_list in cards.items():
        positive, latent, noise = conditioning(cfg, latent_shape(*sizes[size_name]), seed=1)
        for card in card_list:
            mm.unload_all_models()
            mm.soft_empty_cache(True)
            chosen.clear()
            blocker = occupy(card)
            floor = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
            sample = measure_peak(functools.partial(comfy.sample.sample, model, noise, 1, 1.0, "euler", "simple",
                                                    positive, positive, latent), floor)
            samples = sample.out
            resident = model.loaded_size()
            names = model._streamed  # the blocks our patcher streams (see nodes.model_patcher)
            streamed = f"{sum('double_blocks' in n for n in names)} + {sum('single_blocks' in n for n in names)}"
            if samples is not None:
                decode = measure_peak(lambda z=samples: vae.decode_tiled(z, **tiled_args(vae)), floor)
            else:
                decode = Measured(None, float("nan"), 0, "not run")
            ours_after = model.loaded_size()
            mm.unload_all_models()
            sample.out = decode.out = None  # the latent and the video: only their figures are kept
            del blocker, samples
            mm.soft_empty_cache(True)
            label = f"{card:g} GiB" if card else "whole GPU"
            row = [size_name, label, streamed, f"{resident / 2**30:.2f}", f"{sample.peak / 2**30:.2f}",
                   f"{sample.seconds:.1f}", sample.note, f"{decode.peak / 2**30:.2f}", f"{decode.seconds:.1f}",
                   decode.note, f"{ours_after / 2**30:.2f}"]
            rows.append(row)
            print("[bench_sample_memory] " + " | ".join(row), flush=True)
            data.append(dict(size=size_name, card_gib=card or None, streamed=streamed, resident=resident,
                             sample_peak=sample.peak, sample_s=sample.seconds, sample_note=sample.note,
                             decode_peak=decode.peak, decode_s=decode.seconds, decode_note=decode.note,
                             ours_resident_after_decode=ours_after, block_swap_log=list(chosen)))
            for line in chosen:
                print("  " + line, flush=True)
    header = ["size", "card", "streamed double + single", "ours resident GiB", "sample peak GiB", "sample s",
              "sample", "VAEDecodeTiled peak GiB", "decode s", "decode", "ours resident after decode GiB"]
    table = markdown_table(header, rows)
    print(table)
    if not args.tiny:
        write_result("sample-memory", environment(), table, {"rows": data},
                     notes="fp8-balanced 13B with block_swap auto, one euler step through comfy.sample.sample (CFG 1, "
                           f"{TEXT_TOKENS} text tokens), then VAEDecodeTiled with the template's settings; peaks above "
                           "the memory held before the sample (the decode's include our weights until ComfyUI "
                           "unloads them for the VAE); sample seconds include loading and first-use tuning; the card "
                           "is the GPU less one blocking tensor.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
