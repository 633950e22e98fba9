"""GPU memory of the VAE decode that follows sampling: ComfyUI's own HunyuanVideo VAE (random weights at full size),
whole (VAEDecode) and tiled with the official template's VAEDecodeTiled settings (tile 256, overlap 64, temporal
64, temporal overlap 8), per video size: peak GPU memory and seconds. Read beside ``bench_memory.py``'s step peaks:
a card must hold the larger of the two.

    python bench/bench_vae_decode.py --comfyui /path/to/ComfyUI
"""

from __future__ import annotations

import argparse
import logging

import torch
from bench_step import latent_shape
from common import Measured, environment, import_comfy, markdown_table, measure_peak, write_result

SIZES = {"544x960x129f": (544, 960, 129), "720x1280x129f": (720, 1280, 129)}
TEMPLATE_TILING = dict(tile_size=256, overlap=64, temporal_size=64, temporal_overlap=8)


def random_vae(sd_module):
    """ComfyUI's HunyuanVideo VAE (found from its two detection keys), decoder filled with random weights."""
    probe = sd_module.VAE(sd={"decoder.conv_in.conv.weight": torch.zeros(512, 16, 3, 3, 3),
                              "post_quant_conv.weight": torch.zeros(16, 16, 1, 1, 1)})
    g = torch.Generator().manual_seed(0)
    weights = {}
    for k, v in probe.first_stage_model.state_dict().items():
        if k.startswith("decoder.") or k.startswith("post_quant_conv."):
            norm = "norm" in k and k.endswith(".weight")
            weights[k] = (torch.ones(v.shape) if norm else torch.randn(v.shape, generator=g) * 0.02).to(torch.bfloat16)
    del probe
    return sd_module.VAE(sd=weights)


def tiled_args(vae) -> dict:
    """VAEDecodeTiled's conversion of its widgets into ``VAE.decode_tiled`` arguments (latent units)."""
    t = TEMPLATE_TILING
    tile, overlap, t_size, t_overlap = t["tile_size"], t["overlap"], t["temporal_size"], t["temporal_overlap"]
    if tile < overlap * 4:
        overlap = tile // 4
    if t_size < t_overlap * 2:
        t_overlap //= 2
    tc = vae.temporal_compression_decode()
    t_size, t_overlap = max(2, t_size // tc), max(1, min(max(2, t_size // tc) // 2, t_overlap // tc))
    c = vae.spacial_compression_decode()
    return dict(tile_x=tile // c, tile_y=tile // c, overlap=overlap // c, tile_t=t_size, overlap_t=t_overlap)


def peak_of(fn, mm) -> Measured:
    """``fn`` measured with every model unloaded first (the decode's own peak, its weights included)."""
    mm.unload_all_models()
    mm.soft_empty_cache(True)
    return measure_peak(fn)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True, help="a ComfyUI source tree")
    ap.add_argument("--sizes", default=",".join(SIZES))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_vae_decode needs a CUDA GPU")
    sd_module, mm = import_comfy(args.comfyui)
    vae = random_vae(sd_module)
    fell_back = []
    handler = logging.Handler()
    handler.emit = lambda record: "tiled" in record.getMessage().lower() and fell_back.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    rows, data = [], []
    for name in args.sizes.split(","):
        latent = torch.randn(latent_shape(*SIZES[name]), generator=torch.Generator().manual_seed(1))
        for how, fn in (("VAEDecode", lambda z=latent: vae.decode(z)),
                        ("VAEDecodeTiled (template)", lambda z=latent: vae.decode_tiled(z, **tiled_args(vae)))):
            fell_back.clear()
            m = peak_of(fn, mm)
            note = "" if m.note == "ok" else m.note
            if fell_back and how == "VAEDecode":
                note = (note + "; " if note else "") + "ComfyUI fell back to tiled decoding"
            rows.append([name, how, f"{m.peak / 2**30:.2f}", f"{m.seconds:.1f}", note or "ok"])
            data.append(dict(size=name, decode=how, peak=m.peak, seconds=m.seconds, note=note))
    table = markdown_table(["size", "decode", "peak GiB", "seconds", "note"], rows)
    print(table)
    write_result("vae-decode", environment(), table, {"rows": data},
                 notes="ComfyUI's HunyuanVideo VAE with random weights at full size, bf16; peak above the memory "
                       "allocated before the decode (the VAE weights included).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
