"""The multi-GPU node in a real ComfyUI (``--cpu``: two gloo workers on the CPU): the shipped workflows, with the
native sampler and with ours, give the single-process latent through it, and an interrupted prompt leaves it usable.
Skipped without Ray."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ray", reason="Ray is not installed (the multi-GPU extra: pip install 'ray>=2.9')")

from tests.host.conftest import find, save_latent_instead_of_video  # noqa: E402
from tests.host.test_host_workflows import NATIVE, OURS, latent_of  # noqa: E402
from tests.tiny_model import rel  # noqa: E402

# Both runs compute the same operations; the workers split the image tokens and attention heads between them.
BOUND = 1e-5


def on_two_workers(prompt: dict, after: str = "HyVideoFP8Loader") -> dict:
    """``prompt`` with the MODEL of the ``after`` node passed through the multi-GPU node (2 workers) to whatever
    used it."""
    source = find(prompt, after)
    for entry in prompt.values():
        for key, value in entry["inputs"].items():
            if value == [source, 0]:
                entry["inputs"][key] = ["91", 0]
    prompt["91"] = {"class_type": "HyVideoFP8MultiGPU", "inputs": {"model": [source, 0], "gpus": 2}}
    return prompt


@pytest.mark.parametrize("workflow", [NATIVE, OURS])
def test_two_workers_give_the_single_process_latent(host, workflow):
    name = workflow.split(".")[0]
    single = latent_of(host, host.run(save_latent_instead_of_video(host.tiny_prompt(workflow), f"latents/{name}-1")))
    multi = latent_of(host, host.run(on_two_workers(
        save_latent_instead_of_video(host.tiny_prompt(workflow), f"latents/{name}-2"))))
    assert torch.isfinite(multi).all() and multi.shape == single.shape
    assert rel(multi, single) < BOUND, rel(multi, single)


def test_interrupt_leaves_the_workers_usable(host):
    before = latent_of(host, host.run(on_two_workers(
        save_latent_instead_of_video(host.tiny_prompt(OURS, steps=4), "latents/parallel-before"))))
    long = on_two_workers(save_latent_instead_of_video(host.tiny_prompt(OURS, steps=500), "latents/parallel-long"))
    long[find(long, "HyVideoFP8Sampler")]["inputs"].update(hybrid_first_steps=500)  # as the 4-step runs: no FP8
    host.run_and_interrupt(long, at_step=2)
    after = latent_of(host, host.run(on_two_workers(
        save_latent_instead_of_video(host.tiny_prompt(OURS, steps=4), "latents/parallel-after"))))
    assert torch.equal(before, after)


def test_a_patched_model_is_refused_with_the_way_out(host):
    """ModelSamplingSD3 before the node would be lost on the workers: a clear error, and the server goes on."""
    prompt = on_two_workers(save_latent_instead_of_video(host.tiny_prompt(NATIVE), "latents/patched"),
                            after="ModelSamplingSD3")
    with pytest.raises(Exception, match="straight to the loader's output"):
        host.run(prompt)
    fine = host.run(on_two_workers(save_latent_instead_of_video(host.tiny_prompt(NATIVE), "latents/unpatched")))
    assert fine["status"]["status_str"] == "success"
