"""A real ComfyUI server for the host tests (skipped unless ``COMFYUI_PATH`` points at a ComfyUI source tree).

The session fixture ``host`` starts ``main.py --cpu`` from ``COMFYUI_PATH`` with the interpreter running pytest (use
the venv that has ComfyUI's requirements), with every path outside the ComfyUI tree: tiny random HunyuanVideo
checkpoints in a temporary ``diffusion_models`` folder, a random HunyuanVideo-shaped VAE (decoder only, made with
ComfyUI's own VAE class in a subprocess), and a ``custom_nodes`` folder holding a link to this checkout (as
``hyvideo_fp8``) and the test-only node pack of ``tests/host/custom_nodes``. The server is stopped by its pid.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from hyvideo_fp8.hunyuan.config import tiny_config, tiny_variant_config
from tests.checkpoint_factory import write_checkpoint

REPO = Path(__file__).resolve().parents[2]
# The ComfyUI trees are read-only sources: no bytecode caches in them, from this process or its children.
sys.dont_write_bytecode = True
_CHILD_ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
sys.path.insert(0, str(REPO / "workflows"))
from api_client import ComfyClient  # noqa: E402

CFG = tiny_config()
BF16_MODEL = "hyvideo_tiny_bf16.safetensors"
# ComfyUI's stock detection fixes the head dim at 128, the RoPE axes at (16, 56, 56) and the pooled vector at 768:
# the smallest model its UNETLoader builds, for side-by-side runs with the stock loader on the same file.
STOCK_CFG = tiny_config(hidden_size=128, num_heads=1, axes_dim=(16, 56, 56), vec_in_dim=768, depth=1,
                        depth_single_blocks=2)
STOCK_MODEL = "hyvideo_tiny_stock_bf16.safetensors"
FP8_MODEL = "hyvideo_tiny_fp8_ours.safetensors"
VAE = "hyvideo_tiny_vae.safetensors"
STARTUP_TIMEOUT_S = 180
# HunyuanVideo 1.5 (fixture ``family_files``): T2V and I2V share one architecture; the step-distilled I2V adds meanflow
# at the sizes ComfyUI's own detection can express (head dim 128, RoPE axes (16, 56, 56), its fixed byT5 mapper and
# SigLIP width), so that its UNETLoader runs the same files
_COMFY15 = dict(hidden_size=128, num_heads=1, axes_dim=(16, 56, 56), depth=2, byt5_dims=(1472, 2048, 2048),
                vision_in_dim=1152)
CFG15 = tiny_variant_config("1.5", **_COMFY15)
CFG15_DISTILLED = tiny_variant_config("1.5", meanflow=True, **_COMFY15)
MODEL15 = "hyvideo15_tiny_bf16.safetensors"
MODEL15_DISTILLED = "hyvideo15_tiny_step_distilled_bf16.safetensors"
VAE15 = "hyvideo15_tiny_vae.safetensors"
START_IMAGE = "hyvideo_start.png"

_VAE_SCRIPT = r"""
import sys, torch
from safetensors.torch import save_file
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.sd
# the two keys ComfyUI's VAE detection reads for the HunyuanVideo 3-D VAE (16 latent channels)
vae = comfy.sd.VAE(sd={"decoder.conv_in.conv.weight": torch.zeros(512, 16, 3, 3, 3),
                       "post_quant_conv.weight": torch.zeros(16, 16, 1, 1, 1)})
g = torch.Generator().manual_seed(0)
out = {}
for k, v in vae.first_stage_model.state_dict().items():
    if not (k.startswith("decoder.") or k.startswith("post_quant_conv.")):
        continue
    norm = "norm" in k and k.endswith(".weight")
    out[k] = (torch.ones(v.shape) if norm else torch.randn(v.shape, generator=g) * 0.02).to(torch.bfloat16)
save_file(out, sys.argv[1])
print(len(out), sum(t.numel() for t in out.values()))
"""

# HunyuanVideo 1.5's latent (32 channels, 16x spatial, 4x temporal) through ComfyUI's own VAE class: its tiny
# autoencoder for 1.5 (lighttae), which ComfyUI detects from these two keys; the full 1.5 VAE has 1.3B parameters.
_VAE15_SCRIPT = r"""
import sys, torch
from safetensors.torch import save_file
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.sd
vae = comfy.sd.VAE(sd={"decoder.1.weight": torch.zeros(256, 32, 3, 3), "decoder.22.bias": torch.zeros(12)})
assert vae.latent_channels == 32 and vae.downscale_ratio[1:] == (16, 16), "not HunyuanVideo 1.5's VAE"
g = torch.Generator().manual_seed(0)
out = {}
for k, v in vae.first_stage_model.state_dict().items():  # variance-preserving random convolutions
    scale = v[0].numel() ** -0.5 if v.ndim > 1 else 0.02
    out[k] = (torch.randn(v.shape, generator=g) * scale).to(torch.bfloat16)
save_file(out, sys.argv[1])
print(len(out), sum(t.numel() for t in out.values()))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """A running ComfyUI and helpers to build and run tiny versions of the shipped workflows."""

    def __init__(self, proc: subprocess.Popen, port: int, root: Path, log: Path) -> None:
        self.proc, self.port, self.root, self.log = proc, port, root, log
        self.server = f"127.0.0.1:{port}"
        self.output_dir = root / "out"
        self._object_info: Optional[dict] = None

    def client(self) -> ComfyClient:
        return ComfyClient(self.server, timeout=300)

    @property
    def object_info(self) -> dict:
        if self._object_info is None:
            with urllib.request.urlopen(f"http://{self.server}/object_info", timeout=60) as r:
                self._object_info = json.loads(r.read())
        return self._object_info

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def tiny_prompt(self, workflow: str, steps: int = 3, model: str = BF16_MODEL, cfg=CFG, vae: str = VAE) -> dict:
        """A shipped API workflow at test size: test conditioning instead of the text encoder (and, for 1.5, test
        SigLIP states instead of the vision encoder; byT5 states where the model has a byT5 input), tiny files, 5
        frames of 32x32 (64x64 for 1.5's 16x VAE), ``steps`` steps."""
        prompt = copy.deepcopy(json.loads((REPO / "workflows" / workflow).read_text()))
        for nid in [n for n, e in prompt.items() if e["class_type"] in ("DualCLIPLoader", "CLIPVisionLoader")]:
            del prompt[nid]
        texts = 0
        for entry in prompt.values():
            kind, inputs = entry["class_type"], entry["inputs"]
            if kind == "CLIPTextEncode":
                texts += 1  # positive and negative prompts get different states
                entry["class_type"] = "HyVideoFP8TestConditioning"
                entry["inputs"] = {"seed": texts, "tokens": 7, "context_dim": cfg.context_in_dim,
                                   "pooled_dim": cfg.vec_in_dim, "padding": 2}
                if cfg.byt5_dims:  # 1.5's encoder pads no single prompt (ComfyUI's model takes no mask with byT5)
                    entry["inputs"].update(padding=0, byt5_tokens=3 + texts, byt5_dim=cfg.byt5_dims[0])
            elif kind == "CLIPVisionEncode":
                entry["class_type"] = "HyVideoFP8TestVisionOutput"
                entry["inputs"] = {"seed": 3, "tokens": 5, "dim": cfg.vision_in_dim}
            elif kind == "LoadImage":
                inputs["image"] = START_IMAGE
            elif kind == "HyVideoFP8Loader":
                inputs["model_name"] = model
            elif kind == "EmptyHunyuanLatentVideo":
                inputs.update(width=32, height=32, length=5)
            elif kind in ("EmptyHunyuanVideo15Latent", "HunyuanVideo15ImageToVideo"):
                inputs.update(width=64, height=64, length=5)
            elif kind == "VAELoader":
                inputs["vae_name"] = vae
            elif kind in ("BasicScheduler", "HyVideoFP8Sampler"):
                inputs["steps"] = steps
            elif kind == "SaveVideo":
                inputs["filename_prefix"] = f"video/{Path(workflow).stem}"
        return prompt

    def run(self, prompt: dict, on_event=None) -> dict:
        client = self.client()
        try:
            return client.run(prompt, on_event)
        finally:
            client.close()

    def run_and_interrupt(self, prompt: dict, at_step: int) -> None:
        """Queue ``prompt`` and interrupt it (``POST /interrupt``) once its progress reaches ``at_step``."""
        client = self.client()
        stopped = threading.Event()

        def interrupt_on_progress(message):
            if message["type"] == "progress" and message["data"]["value"] >= at_step and not stopped.is_set():
                stopped.set()
                client.interrupt()

        try:
            with pytest.raises(Exception, match="interrupted"):
                client.run(prompt, interrupt_on_progress)
        finally:
            client.close()
        assert stopped.is_set(), "the prompt ended before it was interrupted"


def find(prompt: dict, class_type: str) -> str:
    """The id of the one node of ``class_type`` in an API prompt."""
    ids = [n for n, e in prompt.items() if e["class_type"] == class_type]
    assert len(ids) == 1, f"{class_type}: {ids}"
    return ids[0]


def save_latent_instead_of_video(prompt: dict, prefix: str) -> dict:
    """Replace decode+video by SaveLatent on the sampler output (for exact latent comparisons)."""
    decode = find(prompt, "VAEDecodeTiled")
    source = prompt[decode]["inputs"]["samples"]
    for kind in ("VAEDecodeTiled", "CreateVideo", "SaveVideo", "VAELoader"):
        del prompt[find(prompt, kind)]
    prompt["90"] = {"class_type": "SaveLatent", "inputs": {"samples": source, "filename_prefix": prefix}}
    return prompt


def _make_vae(script: str, path: Path, comfy_path: Path, cwd: Path) -> None:
    made = subprocess.run([sys.executable, "-c", script, str(path)], cwd=cwd,
                          env={**_CHILD_ENV, "PYTHONPATH": str(comfy_path)}, capture_output=True, text=True,
                          timeout=300)
    if made.returncode:
        pytest.fail(f"could not make the test VAE with ComfyUI's VAE class:\n{made.stderr[-3000:]}")


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path or not (Path(path) / "main.py").is_file():
        pytest.skip("set COMFYUI_PATH to a ComfyUI source tree (and run with its venv's python) for host tests")
    return Path(path)


@pytest.fixture(scope="session")
def host(comfy_path: Path, tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("comfy_host")
    models = root / "models"
    (models / "diffusion_models").mkdir(parents=True)
    (models / "vae").mkdir()
    (models / "loras").mkdir()
    write_checkpoint(models / "diffusion_models" / BF16_MODEL, layout="comfyui", config=CFG, seed=11)
    write_checkpoint(models / "diffusion_models" / FP8_MODEL, layout="comfyui", fp8="ours", config=CFG, seed=12)
    write_checkpoint(models / "diffusion_models" / STOCK_MODEL, layout="comfyui", config=STOCK_CFG, seed=13)
    _make_vae(_VAE_SCRIPT, models / "vae" / VAE, comfy_path, root)
    nodes = root / "custom_nodes"
    nodes.mkdir()
    (nodes / "hyvideo_fp8").symlink_to(REPO, target_is_directory=True)
    test_pack = REPO / "tests" / "host" / "custom_nodes" / "hyvideo_fp8_test_nodes"
    (nodes / "hyvideo_fp8_test_nodes").symlink_to(test_pack, target_is_directory=True)
    config = root / "extra_model_paths.yaml"
    config.write_text(f"hyvideo_fp8_tests:\n  base_path: {root}\n  diffusion_models: models/diffusion_models\n"
                      f"  vae: models/vae\n  loras: models/loras\n  custom_nodes: custom_nodes\n")
    for folder in ("out", "user", "in"):
        (root / folder).mkdir()
    port = _free_port()
    log = root / "comfyui.log"
    # started from the temporary root: ComfyUI writes comfyui_detail.log into its working directory
    cmd = [sys.executable, str(comfy_path / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--extra-model-paths-config", str(config), "--output-directory",
           str(root / "out"), "--user-directory", str(root / "user"), "--input-directory", str(root / "in"),
           "--temp-directory", str(root), "--database-url", "sqlite:///:memory:", "--preview-method", "latent2rgb"]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=root, env=_CHILD_ENV, stdout=log_file, stderr=subprocess.STDOUT)
    server = Host(proc, port, root, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} during start-up:\n{server.log_text()[-5000:]}")
            try:
                server.object_info  # noqa: B018 - the first successful read means the server is up
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer /object_info in {STARTUP_TIMEOUT_S} s:\n"
                                f"{server.log_text()[-5000:]}")
                time.sleep(1.0)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def family_files(host: Host, comfy_path: Path) -> Host:
    """HunyuanVideo 1.5 files beside the running server's (ComfyUI re-lists a model folder when it changes): tiny
    1.5 and step-distilled 1.5 checkpoints, a random 1.5 VAE and a start image. Skips on a ComfyUI without 1.5."""
    if "HunyuanVideo15ImageToVideo" not in host.object_info:
        pytest.skip("this ComfyUI has no HunyuanVideo 1.5 nodes (0.3.71 and later have)")
    from PIL import Image

    models = host.root / "models"
    write_checkpoint(models / "diffusion_models" / MODEL15, layout="comfyui", config=CFG15, seed=21)
    write_checkpoint(models / "diffusion_models" / MODEL15_DISTILLED, layout="comfyui", config=CFG15_DISTILLED,
                     seed=22)
    _make_vae(_VAE15_SCRIPT, models / "vae" / VAE15, comfy_path, host.root)
    pixels = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(4))  # another aspect than the video's
    Image.fromarray((pixels * 255).to(torch.uint8).numpy()).save(host.root / "in" / START_IMAGE)
    return host
