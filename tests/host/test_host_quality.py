"""The Quality Report node in a real ComfyUI: our MODEL, test conditioning, the test VAE; text and plot come out."""

from __future__ import annotations

import json

from tests.host.conftest import BF16_MODEL, VAE, find
from tests.host.test_host_workflows import OURS, saved


def test_quality_report_node_runs_and_saves_report_and_plot(host):
    base = host.tiny_prompt(OURS, steps=2)
    cond, latent = find(base, "HyVideoFP8TestConditioning"), find(base, "EmptyHunyuanLatentVideo")
    prompt = {
        cond: base[cond], latent: base[latent],
        "q1": {"class_type": "HyVideoFP8Loader", "inputs": {"model_name": BF16_MODEL, "preset": "bf16"}},
        "q2": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "q3": {"class_type": "HyVideoFP8QualityReport", "inputs": {
            "model": ["q1", 0], "positive": [cond, 0], "latent": [latent, 0], "candidates": "fp8-balanced\nfp8-max",
            "steps": 2, "seed": 3, "shift": 7.0, "guidance": 6.0, "noise_floor": True, "vae": ["q2", 0]}},
        "q4": {"class_type": "SaveImage", "inputs": {"images": ["q3", 1], "filename_prefix": "quality/plot"}},
    }
    entry = host.run(prompt)
    assert entry["status"]["status_str"] == "success"
    text = entry["outputs"]["q3"]["text"][0]
    assert "fp8-balanced: PASS" in text and "fp8-max: PASS" in text and "PSNR" in text
    assert saved(host, entry, "images")[0]["filename"].endswith(".png")
    reports = list((host.output_dir / "hyvideo_fp8_quality").rglob("report.json"))
    assert reports
    data = json.loads(reports[-1].read_text())
    assert {c["name"] for c in data["candidates"]} == {"fp8-balanced", "fp8-max"}
