"""ComfyUI imported into the test process on the CPU, for tests that build its own models next to ours (parity)."""

from __future__ import annotations

import os
import sys

import pytest


def comfy_on_cpu():
    """``(comfy.ldm.hunyuan_video.model, comfy.ops.disable_weight_init)`` from ``COMFYUI_PATH``; skips the test when
    no tree is set or the tree does not import here (an environment problem, not a parity failure)."""
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.isdir(os.path.join(path, "comfy")):
        pytest.skip("set COMFYUI_PATH to a ComfyUI source tree to run the in-process host tests")
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # must precede comfy.model_management (device selection at import)
        import comfy.model_management  # noqa: F401
        import comfy.ops
        from comfy.ldm.hunyuan_video import model
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"ComfyUI at {path} does not import here: {e!r}")
    return model, comfy.ops.disable_weight_init
