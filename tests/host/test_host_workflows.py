"""The shipped API workflows (at test size) through POST /prompt on a real ComfyUI: both sampling paths decode to a
video, agree with each other, and an interrupted prompt leaves the server and the model usable."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from tests.host.conftest import FP8_MODEL, find, save_latent_instead_of_video

NATIVE = "hunyuan_video_fp8_t2v_native_api.json"
OURS = "hunyuan_video_fp8_t2v_sampler_api.json"


def saved(host, entry: dict, kind: str) -> list[dict]:
    files = [f for ui in entry["outputs"].values() for f in ui.get(kind, [])]
    assert files, f"no {kind} in {entry['outputs']}"
    return files


def latent_of(host, entry: dict) -> torch.Tensor:
    f = saved(host, entry, "latents")[0]
    return load_file(str(host.output_dir / f["subfolder"] / f["filename"]))["latent_tensor"]


def check_video(host, entry: dict) -> None:
    assert entry["status"]["status_str"] == "success"
    f = saved(host, entry, "images")[0]  # SaveVideo reports its file under "images" (with "animated")
    data = host.client().view(f["filename"], f["subfolder"], f["type"])
    assert data[4:8] == b"ftyp" and len(data) > 500, "not an MP4 file"


@pytest.mark.parametrize("workflow", [NATIVE, OURS])
def test_shipped_workflow_runs_and_decodes_a_video(host, workflow):
    progress = []
    entry = host.run(host.tiny_prompt(workflow), on_event=lambda m: m["type"] == "progress" and progress.append(m))
    check_video(host, entry)
    assert any(p["data"]["max"] == 3 for p in progress), "no per-step progress from the sampler"


def test_our_sampler_with_fp8_file_cfg_and_negative_prompt(host):
    prompt = host.tiny_prompt(OURS, model=FP8_MODEL)
    sampler = find(prompt, "HyVideoFP8Sampler")
    prompt["30"] = {"class_type": "HyVideoFP8TestConditioning",
                    "inputs": {"seed": 9, "tokens": 4, "context_dim": 32, "pooled_dim": 24, "padding": 0}}
    prompt[sampler]["inputs"].update(negative=["30", 0], cfg=3.0)
    check_video(host, host.run(prompt))


def test_our_sampler_matches_native_sampler_custom_advanced(host):
    # same model, seed, shift 7, guidance 6, euler, and the policy's hybrid steps (2, 2) on both paths
    native = save_latent_instead_of_video(host.tiny_prompt(NATIVE, steps=6), "latents/native")
    ours = save_latent_instead_of_video(host.tiny_prompt(OURS, steps=6), "latents/ours")
    a, b = latent_of(host, host.run(native)), latent_of(host, host.run(ours))
    assert a.shape == b.shape == (1, 16, 2, 4, 4)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    rel = ((a.double() - b.double()).norm() / a.double().norm()).item()
    assert rel < 1e-2, rel  # measured 0 to 3e-3 (bf16 compute; the samplers differ only in fp32 rounding)


def test_interrupt_leaves_server_and_model_usable(host):
    short = save_latent_instead_of_video(host.tiny_prompt(OURS, steps=4), "latents/before")
    before = latent_of(host, host.run(short))

    long = save_latent_instead_of_video(host.tiny_prompt(OURS, steps=500), "latents/long")
    sampler = find(long, "HyVideoFP8Sampler")
    long[sampler]["inputs"].update(hybrid_first_steps=500)  # interrupted inside a high-precision stretch
    client = host.client()
    stopped = threading.Event()

    def interrupt_on_progress(message):
        if message["type"] == "progress" and message["data"]["value"] >= 2 and not stopped.is_set():
            stopped.set()
            client.interrupt()

    with pytest.raises(Exception, match="interrupted"):
        client.run(long, interrupt_on_progress)
    client.close()
    assert stopped.is_set()

    again = save_latent_instead_of_video(host.tiny_prompt(OURS, steps=4), "latents/after")
    again[sampler]["inputs"].update(hybrid_first_steps=2, hybrid_last_steps=2)  # = the policy's: new inputs only
    cached = []
    after = latent_of(host, host.run(again, lambda m: m["type"] == "execution_cached" and cached.append(m)))
    loader = find(again, "HyVideoFP8Loader")
    assert any(loader in m["data"]["nodes"] for m in cached), "the loaded model was not reused"
    assert torch.equal(before, after)  # FP8 modes and attention were restored after the interrupt
