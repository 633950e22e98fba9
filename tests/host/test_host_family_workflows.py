"""The shipped HunyuanVideo 1.5 API workflows (text-to-video, image-to-video, step-distilled image-to-video) at test
size through POST /prompt on a real ComfyUI: ComfyUI's own 1.5 latent, image-to-video conditioning and VAE nodes feed
our loader's MODEL; each decodes to a video, gives the latent that ComfyUI's own UNETLoader gives for the same file,
and the start image reaches the model both as VAE latent and as SigLIP states; with the HunyuanVideo FP8 Sampler in
place of ComfyUI's sampler nodes each gives the native sampler's latent.

Runs on ComfyUI 0.3.71 and later (0.29.0 in CI); skipped on older ComfyUI, which has no 1.5 nodes.
"""

from __future__ import annotations

import json

import pytest
import torch

from hyvideo_fp8.hunyuan.policies import get_preset
from tests.host.conftest import CFG15, CFG15_DISTILLED, MODEL15, MODEL15_DISTILLED, REPO, VAE15, find
from tests.host.test_host_workflows import check_video, latent_of

T2V = "hunyuan_video15_fp8_t2v_api.json"
I2V = "hunyuan_video15_fp8_i2v_api.json"
DISTILLED = "hunyuan_video15_fp8_i2v_step_distilled_api.json"
SAMPLER_I2V = "hunyuan_video15_fp8_i2v_sampler_api.json"  # image-to-video with the HunyuanVideo FP8 Sampler
# T2V and I2V 1.5 checkpoints share one architecture; the step-distilled one adds the meanflow time_r input
FILES = {T2V: (MODEL15, CFG15), I2V: (MODEL15, CFG15), DISTILLED: (MODEL15_DISTILLED, CFG15_DISTILLED),
         SAMPLER_I2V: (MODEL15, CFG15)}
WORKFLOWS = sorted(FILES)
NATIVE_WORKFLOWS = [w for w in WORKFLOWS if w != SAMPLER_I2V]  # sampled by ComfyUI's own sampler nodes
# the latent of 5 frames of 64x64: 32 channels, 16x spatial and 4x temporal compression
LATENT_SHAPE = (1, 32, 2, 4, 4)


def tiny(host, workflow: str, steps: int = 3) -> dict:
    model, cfg = FILES[workflow]
    return host.tiny_prompt(workflow, steps=steps, model=model, cfg=cfg, vae=VAE15)


def all_steps_fp32(prompt: dict, steps: int) -> dict:
    """Our loader under a policy that runs every one of ``steps`` steps in fp32 (its hybrid steps), so that samplers
    or models, not FP8 rounding, are compared."""
    policy = get_preset("fp8-balanced").with_overrides(name="fp8-balanced-fp32", compute_dtype="fp32",
                                                       default_mode="fp32").to_json()
    prompt["30"] = {"class_type": "HyVideoFP8Policy", "inputs": {
        "preset": "fp8-balanced", "attention": "preset", "attention_linears": "preset", "mlp_linears": "preset",
        "single_block_linears": "preset", "modulation_linears": "preset", "boundary_blocks": -1,
        "hybrid_first_steps": steps, "hybrid_last_steps": 0, "policy_json": policy, "fast_accumulation": "preset"}}
    prompt[find(prompt, "HyVideoFP8Loader")]["inputs"]["policy"] = ["30", 0]
    return prompt


def latent_only(prompt: dict, prefix: str) -> dict:
    """Save the sampler's latent instead of decoding it (the VAE stays: image-to-video encodes the start image)."""
    decode = find(prompt, "VAEDecode")
    source = prompt[decode]["inputs"]["samples"]
    for kind in ("VAEDecode", "CreateVideo", "SaveVideo"):
        del prompt[find(prompt, kind)]
    prompt["90"] = {"class_type": "SaveLatent", "inputs": {"samples": source, "filename_prefix": prefix}}
    return prompt


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_15_workflow_values_are_valid_on_this_server(family_files, workflow):
    """The shipped file as a user runs it (full size): every choice is one this ComfyUI offers (the text encoder
    type, crop, sampler, scheduler...) and every number within its node's range; file names are the user's."""
    api = json.loads((REPO / "workflows" / workflow).read_text())
    for nid, entry in api.items():
        info = family_files.object_info[entry["class_type"]]
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, value in entry["inputs"].items():
            decl = declared[name]
            opts = decl[1] if len(decl) > 1 else {}
            if isinstance(value, list) or str(value).endswith((".safetensors", ".png")):
                continue
            choices = decl[0] if isinstance(decl[0], list) else opts.get("options")
            if choices is not None:
                assert value in choices, (nid, entry["class_type"], name, value)
            elif "min" in opts:
                assert opts["min"] <= value <= opts["max"], (nid, entry["class_type"], name, value)


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_15_workflow_runs_and_decodes_a_video(family_files, workflow):
    host = family_files
    progress = []
    entry = host.run(tiny(host, workflow), on_event=lambda m: m["type"] == "progress" and progress.append(m))
    check_video(host, entry)
    assert any(p["data"]["max"] == 3 for p in progress), "no per-step progress from the sampler"


@pytest.mark.parametrize("workflow", NATIVE_WORKFLOWS)
def test_15_workflow_matches_comfyuis_own_loader(family_files, workflow):
    """The same workflow with ComfyUI's UNETLoader on the same file: same latent. Ours runs every step in fp32 (the
    policy's hybrid steps), so that the two models' numerics, not FP8 rounding, are compared; the step-distilled
    model's meanflow target comes from the sampler's sigmas on both."""
    host, steps = family_files, 3
    model, _ = FILES[workflow]
    ours = all_steps_fp32(latent_only(tiny(host, workflow, steps), f"latents/{workflow}_ours"), steps)
    stock = latent_only(tiny(host, workflow, steps), f"latents/{workflow}_stock")
    stock[find(stock, "HyVideoFP8Loader")] = {"class_type": "UNETLoader",
                                              "inputs": {"unet_name": model, "weight_dtype": "default"}}
    got, want = latent_of(host, host.run(ours)), latent_of(host, host.run(stock))
    assert got.shape == LATENT_SHAPE and torch.isfinite(got).all()
    assert rel(got, want) < 1e-4  # the fp32 parity bound of tests/host/test_host_family_models.py


@pytest.mark.parametrize("workflow", [I2V, DISTILLED, SAMPLER_I2V])
def test_start_image_reaches_the_model_as_latent_and_as_vision_states(family_files, workflow):
    host = family_files
    latents = {}
    for case in ("both", "no start_image", "no clip_vision_output", "other vision states"):
        prompt = latent_only(tiny(host, workflow), f"latents/{workflow}_{case.replace(' ', '_')}")
        i2v = prompt[find(prompt, "HunyuanVideo15ImageToVideo")]["inputs"]
        if case.startswith("no "):
            del i2v[case[3:]]
        elif case == "other vision states":
            prompt[find(prompt, "HyVideoFP8TestVisionOutput")]["inputs"]["seed"] = 4
        latents[case] = latent_of(host, host.run(prompt))
        assert latents[case].shape == LATENT_SHAPE and torch.isfinite(latents[case]).all()
    for case in ("no start_image", "no clip_vision_output", "other vision states"):
        assert rel(latents[case], latents["both"]) > 1e-3, case


def with_our_sampler(prompt: dict) -> dict:
    """The workflow with the HunyuanVideo FP8 Sampler in place of ModelSamplingSD3 -> CFGGuider ->
    SamplerCustomAdvanced: the loader's MODEL, the same prompts, latent, seed, steps, shift and CFG."""
    shift, guider = prompt[find(prompt, "ModelSamplingSD3")], prompt[find(prompt, "CFGGuider")]["inputs"]
    node = find(prompt, "SamplerCustomAdvanced")
    inputs = {"model": shift["inputs"]["model"], "positive": guider["positive"], "negative": guider["negative"],
              "latent": prompt[node]["inputs"]["latent_image"],
              "seed": prompt[find(prompt, "RandomNoise")]["inputs"]["noise_seed"],
              "steps": prompt[find(prompt, "BasicScheduler")]["inputs"]["steps"], "shift": shift["inputs"]["shift"],
              "guidance": 6.0, "cfg": guider["cfg"], "hybrid_first_steps": -1, "hybrid_last_steps": -1}
    for kind in ("ModelSamplingSD3", "CFGGuider", "BasicScheduler", "KSamplerSelect", "RandomNoise"):
        del prompt[find(prompt, kind)]
    prompt[node] = {"class_type": "HyVideoFP8Sampler", "inputs": inputs}
    return prompt


@pytest.mark.parametrize("workflow", NATIVE_WORKFLOWS)
def test_15_workflow_with_our_sampler_gives_the_native_samplers_latent(family_files, workflow):
    """The shipped 1.5 workflow with the HunyuanVideo FP8 Sampler in place of ComfyUI's sampler nodes (through
    POST /prompt, ComfyUI's own 1.5 latent and image-to-video nodes feeding it): the native path's latent. Both run
    every step in high precision (fp32) on the same MODEL, so the samplers, not FP8 rounding, are compared; 4 steps
    divide 1000 (ComfyUI's simple schedule then picks our sigmas)."""
    host, steps = family_files, 4
    latents = []
    for ours in (False, True):
        prompt = all_steps_fp32(latent_only(tiny(host, workflow, steps),
                                            f"latents/{workflow}_{'ours' if ours else 'native'}"), steps)
        if ours:
            prompt = with_our_sampler(prompt)
        latents.append(latent_of(host, host.run(prompt)))
    native, got = latents
    assert got.shape == LATENT_SHAPE and torch.isfinite(got).all()
    assert rel(got, native) < 1e-4  # measured 2.4e-06 (i2v, CFG 6), 1.6e-07 (step-distilled), 6.0e-07 (t2v)


def test_shipped_sampler_workflow_gives_the_native_image_to_video_latent(family_files):
    """The shipped image-to-video workflow with the HunyuanVideo FP8 Sampler and the native one: same latent (every
    step in fp32, 4 steps)."""
    host, steps = family_files, 4
    got, native = (latent_of(host, host.run(all_steps_fp32(latent_only(tiny(host, w, steps), f"latents/{w}_shipped"),
                                                            steps))) for w in (SAMPLER_I2V, I2V))
    assert got.shape == LATENT_SHAPE and torch.isfinite(got).all()
    assert rel(got, native) < 1e-4  # measured 2.4e-06 (CFG 6)
