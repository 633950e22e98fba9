"""The pack inside a real ComfyUI: it imports cleanly and /object_info shows every node as declared."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.host.conftest import BF16_MODEL, FP8_MODEL

_spec = importlib.util.spec_from_file_location("workflow_tests", Path(__file__).resolve().parents[1] /
                                               "test_workflows.py")
workflow_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workflow_tests)


def test_pack_imports_without_errors(host):
    # ComfyUI's start-up list of custom node import times (later lines, e.g. torch.compile's graph-break warnings
    # from another test on the same server, may name the pack's files too)
    ours = [line for line in host.log_text().splitlines()
            if "custom_nodes/hyvideo_fp8" in line and ("seconds" in line or "IMPORT FAILED" in line)]
    assert len(ours) == 2, ours  # one import-time line per pack (ours and the test pack)
    bad = [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not bad, host.log_text()[-4000:]
    for node in ("HyVideoFP8Loader", "HyVideoFP8Policy", "HyVideoFP8Sampler", "HyVideoFP8Converter",
                 "HyVideoFP8TestConditioning"):
        assert node in host.object_info


def test_object_info_lists_every_node_with_its_declared_inputs(host):
    ours = workflow_tests.our_nodes()
    from hyvideo_fp8.nodes import NODE_DISPLAY_NAME_MAPPINGS

    for node_id, (cls, spec) in ours.items():
        info = host.object_info[node_id]
        assert info["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert info["category"] == "HunyuanVideo FP8" and info["description"] == cls.DESCRIPTION
        assert info["output"] == list(cls.RETURN_TYPES)
        for section in ("required", "optional"):
            assert info["input_order"].get(section, []) == list(spec.get(section, {})), (node_id, section)
            for name, decl in info["input"].get(section, {}).items():
                assert decl[1].get("tooltip"), f"{node_id}.{name} lost its tooltip"
    files = host.object_info["HyVideoFP8Loader"]["input"]["required"]["model_name"][0]
    assert BF16_MODEL in files and FP8_MODEL in files


def test_core_nodes_used_by_the_workflows_match_the_server(host):
    """The core schemas the workflows are written against (ComfyUI 0.3.64) hold on this server. A newer ComfyUI may
    append inputs and outputs (0.29: CreateVideo's ``bit_depth``, SaveVideo's VIDEO output): appended inputs must be
    optional, so the shipped workflows run with their defaults, and appended outputs change no existing link. Nodes
    newer than 0.3.64 (HunyuanVideo 1.5's) are checked where the server has them."""
    for name, (inputs, controls, outputs) in workflow_tests.CORE_NODES.items():
        if name not in host.object_info and name in workflow_tests.NEWER_CORE_NODES:
            continue
        info = host.object_info[name]
        optional = set(info["input_order"].get("optional", []))
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        ours = [n for n, _ in inputs]
        assert order[:len(ours)] == ours, name
        appended = order[len(ours):]
        assert set(appended) <= optional, (name, appended)
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for input_name, kind in inputs:
            decl = declared[input_name]
            opts = decl[1] if len(decl) > 1 else {}
            is_widget = isinstance(decl[0], list) or decl[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            assert is_widget == (kind == "WIDGET") and (is_widget or decl[0] == kind), (name, input_name)
            assert bool(opts.get("control_after_generate")) == (input_name in controls), (name, input_name)
        assert info["output"][:len(outputs)] == outputs, name
        assert optional - set(appended) == {n for t, n in workflow_tests.CORE_OPTIONAL if t == name}, name
