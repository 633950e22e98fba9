"""Quality report node: FP8 candidates against the bf16 reference on the user's own model, prompt and size.

The work is ``hunyuan.quality.run_quality``; this node only turns ComfyUI's MODEL / CONDITIONING / LATENT / VAE
into its inputs, restores the shared MODEL afterwards, writes the files into ComfyUI's output folder and returns
the text and the plot.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..hunyuan.quality import Candidate, QualityInputs, parse_candidates, run_quality
from ..hunyuan.sampler import initial_noise
from . import widgets
from .comfy_model import our_transformer
from .policy import CATEGORY, POLICY_TYPE, NodePolicy
from .sampler import check_node_inputs, model_conditioning, model_latent

__all__ = ["HyVideoFP8QualityReport", "node_candidates"]

OUTPUT_SUBFOLDER = "hyvideo_fp8_quality"


def node_candidates(text: str, policies: list[NodePolicy | None]) -> list[Candidate]:
    """The candidates typed in the widget plus those connected as HYVIDEO_FP8_POLICY inputs."""
    from_inputs = [Candidate(p.policy, p.hybrid) for p in policies if p is not None]
    from_text = parse_candidates(text) if text.strip() or not from_inputs else []
    return from_text + from_inputs


class HyVideoFP8QualityReport:
    """ComfyUI node: how far FP8 moves this model's output from bf16, per step, with a noise floor and verdicts."""

    DESCRIPTION = ("Samples the same video (same seed, noise, prompt, steps) under the bf16 reference, a kernel "
                   "noise floor (bf16 with another attention kernel) and each candidate policy on ONE set of weights, "
                   "then reports the per-step error of the model output, the final latent error, PSNR/SSIM of the "
                   "decoded frames (with a VAE), time, peak memory and a verdict against each policy's error budget. "
                   "Files (report.txt, report.json, error_per_step.png) go to output/" + OUTPUT_SUBFOLDER + ". "
                   "The MODEL is restored afterwards. Costs (2 + candidates) samplings plus one model call per "
                   "step and candidate: use few steps and a small size.")
    CATEGORY = CATEGORY
    FUNCTION = "report"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "plot")
    OUTPUT_TOOLTIPS = ("The report as text (connect to a text display node).",
                       "Error per step, one line per candidate, noise floor in grey (connect to Preview Image).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A model from the HunyuanVideo FP8 Loader. Loaded with the bf16 "
                                               "preset it gives an exact reference; loaded in FP8, the reference "
                                               "carries that FP8 weight rounding (the report says so)."}),
                "positive": widgets.positive(),
                "latent": ("LATENT", {"tooltip": "EmptyHunyuanLatentVideo (v1), EmptyHunyuanVideo15Latent (1.5) or an "
                                             "image-to-video node's latent: sets frames and size (keep it small)."}),
                "candidates": ("STRING", {"default": "fp8-balanced\nfp8-max", "multiline": True, "tooltip": (
                    "One candidate per line (or comma-separated): a preset name or policy JSON file, optionally "
                    "with +hybrid=N/M, +attention=sdpa|fp8, +boundary=N, +budget=X; or a policy JSON object on "
                    "its own line. May be empty when policies are connected below.")}),
                "steps": ("INT", {"default": 8, "min": 1, "max": 200, "tooltip": "Denoising steps of every run."}),
                "seed": widgets.seed("Noise seed shared by every run."),
                "shift": widgets.shift("Flow-matching time shift of every run (7.0 for the released model)."),
                "guidance": widgets.guidance("Embedded guidance scale."),
                "noise_floor": ("BOOLEAN", {"default": True, "tooltip": (
                    "Also run the bf16 reference with another attention kernel, so FP8 error can be told from "
                    "kernel noise (one more sampling).")}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Decode every run's final latent and report PSNR/SSIM against the "
                                           "reference frames."}),
                "policy_a": (POLICY_TYPE, {"tooltip": "A candidate from the Precision Policy node (with its hybrid "
                                                      "steps)."}),
                "policy_b": (POLICY_TYPE, {"tooltip": "Another candidate from a Precision Policy node."}),
            },
        }

    def report(self, model, positive, latent: dict, candidates: str, steps: int, seed: int, shift: float,
               guidance: float, noise_floor: bool, vae=None, policy_a: NodePolicy | None = None,
               policy_b: NodePolicy | None = None) -> dict:
        import comfy.model_management as mm
        import comfy.utils
        import folder_paths

        transformer = our_transformer(model)
        samples = latent["samples"]
        if "noise_mask" in latent:
            raise ValueError("the latent carries a noise_mask, which the quality report does not apply (every run "
                             "samples the whole latent from noise): connect the latent without it")
        config = check_node_inputs(model, latent, shift, "quality report",
                                   "connect the loader's MODEL without those nodes")
        cands = node_candidates(candidates, [policy_a, policy_b])
        noise = initial_noise(samples.shape, seed)
        cond = model_conditioning(model, config, positive, noise, model_latent(model, samples), None, seed, guidance)
        inputs = QualityInputs(cond.text.context, cond.text.y, tuple(samples.shape), cond.text.attention_mask, seed,
                               steps, shift, guidance if config.guidance_embed else None, "the connected prompt",
                               model_inputs=cond.inputs, image_channels=cond.image_channels)
        mm.load_models_gpu([model])
        runs = 1 + int(noise_floor) + len(cands)
        bar = comfy.utils.ProgressBar(runs * steps)

        def on_step(step: int, total: int, x0: torch.Tensor) -> None:
            mm.throw_exception_if_processing_interrupted()
            bar.update(1)

        decode = None
        if vae is not None:
            def decode(lat: torch.Tensor):
                images = vae.decode(model.model.process_latent_out(lat.to(mm.intermediate_device())))
                return images.float().cpu().numpy()

        result = run_quality(transformer, inputs, cands, vae_decode=decode, with_noise_floor=noise_floor,
                             restore=True, step_callback=on_step, setup={"model": type(transformer).__name__})
        out_dir = Path(folder_paths.get_output_directory()) / OUTPUT_SUBFOLDER / time.strftime("%Y%m%d-%H%M%S")
        paths = result.save(out_dir)
        text = result.to_text() + "written: " + ", ".join(str(p) for p in paths.values()) + "\n"
        plot = torch.from_numpy(result.plot()).float().div(255.0)[None]
        return {"ui": {"text": [text]}, "result": (text, plot)}

