"""Shipped workflows: valid UI (litegraph 0.4) and API JSON, the two formats agree, every node type exists.

Core node schemas are listed here (ComfyUI 0.3.64, plus the HunyuanVideo 1.5 nodes that came later: see
``NEWER_CORE_NODES``); ``tests/host/test_host_nodes.py`` checks this list against a real server's ``/object_info``.
Our nodes' schemas come from ``hyvideo_fp8.nodes`` directly.
"""

import json
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
PAIRS = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith("_api.json"))
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")

# name -> (inputs in input order as (name, socket type or "WIDGET"), inputs with a seed control, output types)
CORE_NODES: dict[str, tuple[list[tuple[str, str]], set[str], list[str]]] = {
    "DualCLIPLoader": ([("clip_name1", "WIDGET"), ("clip_name2", "WIDGET"), ("type", "WIDGET"),
                        ("device", "WIDGET")], set(), ["CLIP"]),
    "CLIPTextEncode": ([("text", "WIDGET"), ("clip", "CLIP")], set(), ["CONDITIONING"]),
    "VAELoader": ([("vae_name", "WIDGET")], set(), ["VAE"]),
    "EmptyHunyuanLatentVideo": ([("width", "WIDGET"), ("height", "WIDGET"), ("length", "WIDGET"),
                                 ("batch_size", "WIDGET")], set(), ["LATENT"]),
    "ModelSamplingSD3": ([("model", "MODEL"), ("shift", "WIDGET")], set(), ["MODEL"]),
    "FluxGuidance": ([("conditioning", "CONDITIONING"), ("guidance", "WIDGET")], set(), ["CONDITIONING"]),
    "BasicGuider": ([("model", "MODEL"), ("conditioning", "CONDITIONING")], set(), ["GUIDER"]),
    "BasicScheduler": ([("model", "MODEL"), ("scheduler", "WIDGET"), ("steps", "WIDGET"), ("denoise", "WIDGET")],
                       set(), ["SIGMAS"]),
    "KSamplerSelect": ([("sampler_name", "WIDGET")], set(), ["SAMPLER"]),
    "RandomNoise": ([("noise_seed", "WIDGET")], {"noise_seed"}, ["NOISE"]),
    "SamplerCustomAdvanced": ([("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                               ("latent_image", "LATENT")], set(), ["LATENT", "LATENT"]),
    "KSampler": ([("model", "MODEL"), ("seed", "WIDGET"), ("steps", "WIDGET"), ("cfg", "WIDGET"),
                  ("sampler_name", "WIDGET"), ("scheduler", "WIDGET"), ("positive", "CONDITIONING"),
                  ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("denoise", "WIDGET")],
                 {"seed"}, ["LATENT"]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], set(), ["IMAGE"]),
    "VAEDecodeTiled": ([("samples", "LATENT"), ("vae", "VAE"), ("tile_size", "WIDGET"), ("overlap", "WIDGET"),
                        ("temporal_size", "WIDGET"), ("temporal_overlap", "WIDGET")], set(), ["IMAGE"]),
    "CreateVideo": ([("images", "IMAGE"), ("fps", "WIDGET"), ("audio", "AUDIO")], set(), ["VIDEO"]),
    "SaveVideo": ([("video", "VIDEO"), ("filename_prefix", "WIDGET"), ("format", "WIDGET"), ("codec", "WIDGET")],
                  set(), []),
    "CFGGuider": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("cfg", "WIDGET")],
                  set(), ["GUIDER"]),
    "LoadImage": ([("image", "WIDGET")], set(), ["IMAGE", "MASK"]),
    "CLIPVisionLoader": ([("clip_name", "WIDGET")], set(), ["CLIP_VISION"]),
    "CLIPVisionEncode": ([("clip_vision", "CLIP_VISION"), ("image", "IMAGE"), ("crop", "WIDGET")], set(),
                         ["CLIP_VISION_OUTPUT"]),
    "EmptyHunyuanVideo15Latent": ([("width", "WIDGET"), ("height", "WIDGET"), ("length", "WIDGET"),
                                   ("batch_size", "WIDGET")], set(), ["LATENT"]),
    "HunyuanVideo15ImageToVideo": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                                    ("width", "WIDGET"), ("height", "WIDGET"), ("length", "WIDGET"),
                                    ("batch_size", "WIDGET"), ("start_image", "IMAGE"),
                                    ("clip_vision_output", "CLIP_VISION_OUTPUT")], set(),
                                   ["CONDITIONING", "CONDITIONING", "LATENT"]),
}
CORE_OPTIONAL = {("DualCLIPLoader", "device"), ("CreateVideo", "audio"), ("HunyuanVideo15ImageToVideo", "start_image"),
                 ("HunyuanVideo15ImageToVideo", "clip_vision_output")}
# core nodes that ComfyUI 0.3.64 lacks -> the first ComfyUI release that has them (HunyuanVideo 1.5)
NEWER_CORE_NODES = {"EmptyHunyuanVideo15Latent": "0.3.71", "HunyuanVideo15ImageToVideo": "0.3.71"}
# values the frontend stores after a node's declared widgets (LoadImage's upload button)
UI_ONLY_WIDGET_VALUES = {"LoadImage": ["image"]}
HUNYUAN_15 = "hunyuan_video15_"  # the 1.5 workflows' file-name prefix


def our_nodes() -> dict:
    """The pack's node mappings and their declared inputs (importable without ComfyUI)."""
    from hyvideo_fp8.nodes import NODE_CLASS_MAPPINGS

    return {name: (cls, cls.INPUT_TYPES()) for name, cls in NODE_CLASS_MAPPINGS.items()}


def schema(node_type: str, ours: dict) -> tuple[list[tuple[str, str]], set[str], list[str], set[str]]:
    """(inputs, seed-controlled inputs, output types, optional inputs) of a node type."""
    if node_type in CORE_NODES:
        inputs, controls, outputs = CORE_NODES[node_type]
        return inputs, controls, outputs, {n for t, n in CORE_OPTIONAL if t == node_type}
    if node_type not in ours:
        raise AssertionError(f"node type {node_type} is neither in the pack nor in the core list")
    cls, spec = ours[node_type]
    inputs, controls, optional = [], set(), set()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            widget = isinstance(kind, list) or kind in WIDGET_TYPES
            inputs.append((name, "WIDGET" if widget else kind))
            if opts.get("control_after_generate"):
                controls.add(name)
            if section == "optional":
                optional.add(name)
    return inputs, controls, list(cls.RETURN_TYPES), optional


def load_pair(ui_path: Path) -> tuple[dict, dict]:
    api_path = ui_path.with_name(ui_path.stem + "_api.json")
    assert api_path.exists(), f"{ui_path.name} has no API twin {api_path.name}"
    return json.loads(ui_path.read_text()), json.loads(api_path.read_text())


def test_every_ui_workflow_has_an_api_twin_and_vice_versa():
    assert len(PAIRS) >= 2
    apis = sorted(WORKFLOWS.glob("*_api.json"))
    assert sorted(p.with_name(p.stem + "_api.json") for p in PAIRS) == apis


def test_workflows_cover_both_sampling_paths():
    used = {p.name: {n["type"] for n in load_pair(p)[0]["nodes"]} for p in PAIRS if not p.name.startswith(HUNYUAN_15)}
    assert any({"HyVideoFP8Loader", "ModelSamplingSD3", "SamplerCustomAdvanced", "FluxGuidance"} <= u
               for u in used.values())
    assert any({"HyVideoFP8Loader", "HyVideoFP8Sampler"} <= u for u in used.values())
    for u in used.values():
        assert {"DualCLIPLoader", "CLIPTextEncode", "VAELoader", "EmptyHunyuanLatentVideo"} <= u


def test_hunyuan_15_workflows_use_comfyuis_own_15_nodes():
    """Text-to-video, image-to-video and the step-distilled image-to-video, each on ComfyUI's 1.5 text encoder
    (Qwen2.5-VL + byT5), VAE, latent / image conditioning and native sampling, with our loader for the model; and
    image-to-video with the HunyuanVideo FP8 Sampler in place of the native sampling nodes."""
    pairs = {p.stem[len(HUNYUAN_15):]: load_pair(p) for p in PAIRS if p.name.startswith(HUNYUAN_15)}
    assert sorted(pairs) == ["fp8_i2v", "fp8_i2v_sampler", "fp8_i2v_step_distilled", "fp8_t2v"]
    base = {"DualCLIPLoader", "CLIPTextEncode", "VAELoader", "HyVideoFP8Loader", "VAEDecode", "CreateVideo",
            "SaveVideo"}
    native = {"ModelSamplingSD3", "CFGGuider", "SamplerCustomAdvanced"}
    i2v = {"LoadImage", "CLIPVisionLoader", "CLIPVisionEncode", "HunyuanVideo15ImageToVideo"}
    for name, (ui, api) in pairs.items():
        used = {n["type"] for n in ui["nodes"]}
        sampling = {"HyVideoFP8Sampler"} if name.endswith("_sampler") else native
        assert used >= base | sampling | (i2v if "i2v" in name else {"EmptyHunyuanVideo15Latent"}), name
        assert not used & ({"UNETLoader", "EmptyHunyuanLatentVideo", "FluxGuidance"} | (native - sampling)), name
        by_type = {e["class_type"]: e["inputs"] for e in api.values()}
        assert by_type["DualCLIPLoader"]["type"] == "hunyuan_video_15"
        assert by_type["ModelSamplingSD3" if sampling == native else "HyVideoFP8Sampler"]["shift"] >= 5.0
        if "i2v" in name:  # the image reaches the model both as VAE latent and as SigLIP states
            i2v_node = by_type["HunyuanVideo15ImageToVideo"]
            assert i2v_node["start_image"] and i2v_node["clip_vision_output"]
    # the step-distilled model runs few steps without CFG (it was distilled with guidance)
    distilled = {e["class_type"]: e["inputs"] for e in pairs["fp8_i2v_step_distilled"][1].values()}
    assert distilled["CFGGuider"]["cfg"] == 1.0 and distilled["BasicScheduler"]["steps"] <= 12
    assert "step_distilled" in distilled["HyVideoFP8Loader"]["model_name"]
    # our sampler's image-to-video: the native one's file, image node, seed, steps, shift and CFG, the negative prompt
    native_i2v = {e["class_type"]: e["inputs"] for e in pairs["fp8_i2v"][1].values()}
    ours = {e["class_type"]: e["inputs"] for e in pairs["fp8_i2v_sampler"][1].values()}
    sampler = ours["HyVideoFP8Sampler"]
    assert ours["HyVideoFP8Loader"] == native_i2v["HyVideoFP8Loader"]
    assert ours["HunyuanVideo15ImageToVideo"] == native_i2v["HunyuanVideo15ImageToVideo"]
    assert (sampler["seed"], sampler["steps"], sampler["shift"], sampler["cfg"]) == (
        native_i2v["RandomNoise"]["noise_seed"], native_i2v["BasicScheduler"]["steps"],
        native_i2v["ModelSamplingSD3"]["shift"], native_i2v["CFGGuider"]["cfg"])
    assert sampler["negative"][1] == 1 and sampler["latent"][1] == 2  # the image node's negative and latent


@pytest.mark.parametrize("ui_path", PAIRS, ids=lambda p: p.stem)
def test_ui_and_api_agree(ui_path):
    ours = our_nodes()
    ui, api = load_pair(ui_path)
    assert ui["version"] == 0.4
    for key in ("id", "revision", "last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in ui, key
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"])
    assert sorted(str(i) for i in nodes) == sorted(api), "UI and API hold different node ids"
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == max(link[0] for link in ui["links"])
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"])

    for nid, node in nodes.items():
        entry = api[str(nid)]
        assert node["type"] == entry["class_type"]
        inputs, controls, outputs, optional = schema(node["type"], ours)
        names = [n for n, _ in inputs]
        assert set(entry["inputs"]) <= set(names), f"{node['type']}: unknown API inputs"
        # widgets: positional in the UI (plus a seed-control value), literal in the API
        expected = []
        for name, kind in inputs:
            if kind != "WIDGET":
                continue
            assert name in entry["inputs"], f"{node['type']}.{name} missing in the API workflow"
            value = entry["inputs"][name]
            assert not isinstance(value, list), f"{node['type']}.{name} is a widget but linked in the API file"
            expected.append(value)
            if name in controls:
                expected.append(node["widgets_values"][len(expected)])
                assert expected[-1] in SEED_CONTROLS
        expected += UI_ONLY_WIDGET_VALUES.get(node["type"], [])
        assert node["widgets_values"] == expected, f"{node['type']} widgets differ between UI and API"
        # sockets: same links in both formats, types consistent with both ends
        sockets = [(n, k) for n, k in inputs if k != "WIDGET"]
        ui_sockets = {s["name"]: (slot, s) for slot, s in enumerate(node["inputs"])}
        for name, kind in sockets:
            api_value = entry["inputs"].get(name)
            if api_value is None:
                assert name in optional, f"{node['type']}.{name} is required but unconnected"
                assert name not in ui_sockets or ui_sockets[name][1]["link"] is None
                continue
            src, out_index = api_value
            slot, sock = ui_sockets[name]
            assert sock["type"] == kind
            link = links[sock["link"]]
            assert link == [sock["link"], int(src), out_index, nid, slot, kind], f"{node['type']}.{name}"
            src_outputs = schema(nodes[int(src)]["type"], ours)[2]
            assert src_outputs[out_index] == kind, f"{node['type']}.{name} fed a {src_outputs[out_index]}"
        assert len(node["outputs"]) == len(outputs)
        for i, (out, typ) in enumerate(zip(node["outputs"], outputs)):
            assert out["type"] == typ
            for lid in out["links"] or []:
                assert links[lid][1:3] == [nid, i]
    # every link is referenced by exactly its target socket
    targets = sorted(s["link"] for n in ui["nodes"] for s in n["inputs"] if s["link"] is not None)
    assert targets == sorted(links)


@pytest.mark.parametrize("ui_path", PAIRS, ids=lambda p: p.stem)
def test_api_workflow_is_a_valid_prompt_graph(ui_path):
    ours = our_nodes()
    _, api = load_pair(ui_path)
    for nid, entry in api.items():
        assert set(entry) <= {"class_type", "inputs", "_meta"} and nid.isdigit()
        inputs, _, _, optional = schema(entry["class_type"], ours)
        for name, kind in inputs:
            assert name in entry["inputs"] or name in optional, f"{entry['class_type']}.{name} missing"
            value = entry["inputs"].get(name)
            if kind != "WIDGET" and value is not None:
                assert isinstance(value, list) and len(value) == 2 and value[0] in api, f"bad link {value}"
    sinks = [e for e in api.values() if e["class_type"] in ("SaveVideo", "SaveAnimatedWEBP")]
    assert sinks, "the workflow saves nothing"


@pytest.mark.parametrize("ui_path", PAIRS, ids=lambda p: p.stem)
def test_widget_values_are_accepted_by_our_nodes(ui_path):
    ours = our_nodes()
    _, api = load_pair(ui_path)
    for entry in api.values():
        if entry["class_type"] not in ours:
            continue
        _, spec = ours[entry["class_type"]]
        for section in spec.values():
            for name, decl in section.items():
                value = entry["inputs"].get(name)
                if value is None or isinstance(value, list) and not isinstance(decl[0], list):
                    continue
                if isinstance(decl[0], list) and decl[0]:  # combos (file lists are empty without ComfyUI)
                    assert value in decl[0], f"{entry['class_type']}.{name} = {value!r} not in {decl[0]}"
                opts = decl[1] if len(decl) > 1 else {}
                if "min" in opts:
                    assert opts["min"] <= value <= opts["max"], f"{entry['class_type']}.{name} out of range"


def test_api_client_helpers():
    sys.path.insert(0, str(WORKFLOWS))
    try:
        import api_client
    finally:
        sys.path.remove(str(WORKFLOWS))
    prompt = {"4": {"class_type": "X", "inputs": {"seed": 1}}, "7": {"class_type": "Y", "inputs": {}}}
    api_client.apply_overrides(prompt, ["4.seed=42", "7.text=a cat", "7.flag=true"])
    assert prompt["4"]["inputs"]["seed"] == 42 and prompt["7"]["inputs"] == {"text": "a cat", "flag": True}
    with pytest.raises(SystemExit, match="NODE_ID.INPUT=VALUE"):
        api_client.apply_overrides(prompt, ["9.seed=1"])
    entry = {"outputs": {"22": {"images": [{"filename": "v.mp4", "subfolder": "video", "type": "output"}],
                                "animated": [True]}, "90": {"latents": [{"filename": "l.latent", "subfolder": ""}]}}}
    assert [f["filename"] for f in api_client.output_files(entry)] == ["v.mp4", "l.latent"]
