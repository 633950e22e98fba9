"""ComfyUI's official HunyuanVideo text-to-video template (from the ``comfyui-workflow-templates`` package that
ComfyUI installs) with our loader in place of UNETLoader, converted from its UI form to a ``/prompt`` graph with the
server's own ``/object_info``, at test size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.host.conftest import BF16_MODEL, CFG, FP8_MODEL, VAE
from tests.host.test_host_workflows import check_video

TEMPLATE = "hunyuan_video_text_to_video.json"
SKIPPED_TYPES = ("Note", "MarkdownNote")
MUTED_OR_BYPASSED = (2, 4)


def template_path() -> Path:
    templates = pytest.importorskip("comfyui_workflow_templates", reason="ComfyUI's workflow templates package")
    found = sorted(Path(templates.__file__).parent.rglob(TEMPLATE))
    if not found:
        pytest.skip(f"{TEMPLATE} is not in this comfyui-workflow-templates")
    return found[0]


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """A UI (litegraph) workflow as an API prompt: widget values by the server's input order (a seed widget's
    ``control_after_generate`` entry skipped), links as ``[source id, slot]``; notes and muted/bypassed nodes out."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in SKIPPED_TYPES or node.get("mode") in MUTED_OR_BYPASSED:
            continue
        info = object_info[node["type"]]
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in order:
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
                continue
            kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
            if (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) and values:
                inputs[name] = values.pop(0)
                if opts.get("control_after_generate"):
                    values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@pytest.mark.parametrize("model,preset", [(BF16_MODEL, "fp8-balanced"), (FP8_MODEL, "fp8-max")])
def test_official_template_with_our_loader(host, model, preset):
    prompt = ui_to_api(json.loads(template_path().read_text()), host.object_info)
    kinds = {entry["class_type"] for entry in prompt.values()}
    assert {"UNETLoader", "DualCLIPLoader", "SamplerCustomAdvanced", "ModelSamplingSD3", "FluxGuidance"} <= kinds
    for nid, entry in list(prompt.items()):
        kind, inputs = entry["class_type"], entry["inputs"]
        if kind == "UNETLoader":
            entry.update(class_type="HyVideoFP8Loader", inputs={"model_name": model, "preset": preset})
        elif kind == "DualCLIPLoader":
            del prompt[nid]
        elif kind == "CLIPTextEncode":
            entry.update(class_type="HyVideoFP8TestConditioning", inputs={
                "seed": 1, "tokens": 7, "context_dim": CFG.context_in_dim, "pooled_dim": CFG.vec_in_dim,
                "padding": 2})
        elif kind == "EmptyHunyuanLatentVideo":
            inputs.update(width=32, height=32, length=5)
        elif kind == "BasicScheduler":
            inputs["steps"] = 3
        elif kind == "VAELoader":
            inputs["vae_name"] = VAE
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = f"video/template_{preset}"
    check_video(host, host.run(prompt))
