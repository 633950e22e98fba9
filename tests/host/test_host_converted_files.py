"""What each supported ComfyUI's stock "Load Diffusion Model" (UNETLoader) does with each file our converter writes:
it must run the file as its dequantized weights, or refuse it. Never a silently wrong model."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from safetensors.torch import save_file

from hyvideo_fp8.fp8.quantize import dequantize
from hyvideo_fp8.hunyuan.checkpoint import convert_checkpoint, load_canonical_state_dict
from hyvideo_fp8.hunyuan.checkpoint.comfy_compat import STOCK_LOADER, stock_outcome
from tests.host.conftest import STOCK_MODEL
from tests.host.test_host_model_features import native_prompt, rel, run_logged

FORMATS = tuple(STOCK_LOADER)
PRESETS = ("fp8-balanced", "fp8-max")


def comfy_version(host) -> str:
    with urllib.request.urlopen(f"http://{host.server}/system_stats", timeout=30) as r:
        return json.loads(r.read())["system"]["comfyui_version"]


def stock_prompt(host, file: str, prefix: str) -> dict:
    prompt = native_prompt(host, prefix, stock=True)
    for entry in prompt.values():
        if entry["class_type"] == "UNETLoader":
            entry["inputs"]["unet_name"] = file
    return prompt


@pytest.mark.parametrize("output_format", FORMATS)
@pytest.mark.parametrize("preset", PRESETS)
def test_stock_loader_runs_our_file_right_or_refuses_it(host, output_format, preset):
    models = host.root / "models" / "diffusion_models"
    name = f"converted_{output_format}_{preset}.safetensors"
    convert_checkpoint(models / STOCK_MODEL, models / name, preset, output_format=output_format)
    sd, _ = load_canonical_state_dict(models / name)
    dequantized = {k: (dequantize(v, sd[k[:-len("weight")] + "weight_scale"]) if k.endswith(".weight")
                       and v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else v.float())
                   for k, v in sd.items() if not k.endswith(".weight_scale")}
    reference_name = f"dequantized_{output_format}_{preset}.safetensors"
    save_file({k: v.contiguous() for k, v in dequantized.items()}, str(models / reference_name))
    reference, _ = run_logged(host, stock_prompt(host, reference_name, f"latents/deq_{output_format}_{preset}"))

    version = comfy_version(host)
    expected = stock_outcome(output_format, version)
    assert expected is not None, f"ComfyUI {version} is not in the compatibility table: add its column"
    try:
        latent, _ = run_logged(host, stock_prompt(host, name, f"latents/stock_{output_format}_{preset}"))
    except Exception as e:  # noqa: BLE001 - the outcome is compared with the table below
        assert expected == "refuses", f"ComfyUI {version} refused a {output_format} file (table: {expected}): {e}"
        return
    error = rel(latent, reference)
    outcome = "runs" if bool(torch.isfinite(latent).all()) and error < 0.05 else "wrong"
    assert outcome == expected, (f"ComfyUI {version}'s stock loader {outcome} a {output_format} file "
                                 f"(rel. error {error:.3g} against its dequantized weights); the table says {expected}")
