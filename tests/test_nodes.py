"""ComfyUI nodes called directly, without ComfyUI (the ComfyUI-typed parts run in tests/host)."""

import json
import types

import pytest
import torch
from safetensors.torch import save_file

from hyvideo_fp8.fp8.formats import ComputeMode
from hyvideo_fp8.fp8.linear import FP8Linear
from hyvideo_fp8.hunyuan.config import NotHunyuanVideoError, tiny_config
from hyvideo_fp8.hunyuan.loader import build_random, load_transformer
from hyvideo_fp8.hunyuan.policies import PRESETS, get_preset
from hyvideo_fp8.hunyuan.sampler import default_high_precision, flow_sigmas
from hyvideo_fp8.nodes import comfy_model, converter, loader, policy, sampler
from tests.checkpoint_factory import write_checkpoint

CFG = tiny_config()
ORDER = CFG.block_order()


@pytest.fixture
def nodes_without_comfy():
    """The node mappings, inspected without ComfyUI (file lists are then empty)."""
    from hyvideo_fp8.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    return NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS


# --- node declarations --------------------------------------------------------------------------------------------


def test_every_node_is_declared_completely(nodes_without_comfy):
    classes, names = nodes_without_comfy
    assert set(classes) == set(names) == {
        "HyVideoFP8Loader", "HyVideoFP8Policy", "HyVideoFP8Sampler", "HyVideoFP8Converter", "HyVideoFP8QualityReport",
        "HyVideoFP8AttentionPatch", "HyVideoFP8MultiGPU"}
    for node_id, cls in classes.items():
        assert node_id.startswith("HyVideoFP8") and names[node_id].startswith("HunyuanVideo FP8")
        assert cls.CATEGORY == "HunyuanVideo FP8" and callable(getattr(cls, cls.FUNCTION))
        assert cls.DESCRIPTION and len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}
        for section in ("required", "optional"):
            for name, decl in spec.get(section, {}).items():
                opts = decl[1] if len(decl) > 1 else {}
                assert len(opts.get("tooltip", "")) > 15, f"{node_id}.{name} has no useful tooltip"
                if "default" in opts and isinstance(decl[0], list):
                    assert opts["default"] in decl[0], f"{node_id}.{name} default not among the choices"


def test_loader_lists_diffusion_models_and_presets(nodes_without_comfy):
    spec = nodes_without_comfy[0]["HyVideoFP8Loader"].INPUT_TYPES()
    assert spec["required"]["model_name"][0] == []  # the real list is checked against a live ComfyUI (host tests)
    assert spec["required"]["preset"][0] == list(PRESETS)
    assert spec["optional"]["policy"][0] == policy.POLICY_TYPE


# --- policy node --------------------------------------------------------------------------------------------------


def run_policy_node(**changes):
    args = dict(preset="fp8-balanced", attention="preset", boundary_blocks=-1, hybrid_first_steps=0,
                hybrid_last_steps=0, policy_json="", attention_linears="preset", mlp_linears="preset",
                single_block_linears="preset", modulation_linears="preset")
    args.update(changes)
    return policy.HyVideoFP8Policy().build(**args)


@pytest.mark.parametrize("name", list(PRESETS))
def test_policy_node_presets_unchanged(name):
    node_policy, text = run_policy_node(preset=name)
    assert node_policy.policy == PRESETS[name] and node_policy.hybrid == (0, 0)
    assert json.loads(text)["policy"] == PRESETS[name].to_dict()


def test_policy_node_group_overrides():
    node_policy, text = run_policy_node(mlp_linears="bf16", modulation_linears="fp8", attention="sdpa",
                                        boundary_blocks=0, hybrid_first_steps=3, hybrid_last_steps=2)
    p = node_policy.policy
    assert p.mode_for("double_blocks.1.img_mlp.0", ORDER) is ComputeMode.BF16
    assert p.mode_for("double_blocks.1.txt_mlp.2", ORDER) is ComputeMode.BF16
    assert p.mode_for("double_blocks.1.img_attn.qkv", ORDER) is ComputeMode.FP8  # preset's rule still applies
    assert p.mode_for("single_blocks.0.modulation.lin", ORDER) is ComputeMode.FP8
    assert p.mode_for("double_blocks.0.img_mod.lin", ORDER) is ComputeMode.FP8  # boundary blocks off
    assert p.attention == "sdpa" and p.high_precision_boundary_blocks == 0
    assert node_policy.hybrid == (3, 2)
    data = json.loads(text)
    assert data["hybrid_steps"] == [3, 2]
    assert type(p).from_dict(data["policy"]) == p  # the JSON output is a loadable policy


def test_policy_json_replaces_preset_and_overrides_stack_on_it():
    pasted = get_preset("fp8-max").with_overrides(name="mine", attention="sdpa").to_json()
    node_policy, _ = run_policy_node(preset="bf16", policy_json=pasted)
    assert node_policy.policy.name == "mine" and node_policy.policy.default_mode is ComputeMode.FP8
    node_policy, _ = run_policy_node(preset="bf16", policy_json=pasted, single_block_linears="fp8-weight-only")
    assert node_policy.policy.mode_for("single_blocks.1.linear2", ORDER) is ComputeMode.FP8_WEIGHT_ONLY


def test_policy_node_fast_accumulation_switch():
    """Optional widget: absent (older workflow files) or 'preset' keeps the preset; on/off override it."""
    assert run_policy_node()[0].policy.fast_accum_max_k == 15360
    assert run_policy_node(fast_accumulation="preset")[0].policy == PRESETS["fp8-balanced"]
    off = run_policy_node(fast_accumulation="off")[0].policy
    assert off.fast_accum_max_k == 0 and not off.fast_accum_for(3072) and off.name == "fp8-balanced+overrides"
    on = run_policy_node(preset="bf16", fast_accumulation="on", mlp_linears="fp8")[0].policy
    assert on.fast_accum_for(15360) and on.mode_for("double_blocks.1.img_mlp.2", ORDER) is ComputeMode.FP8
    spec = policy.HyVideoFP8Policy.INPUT_TYPES()["optional"]["fast_accumulation"]
    assert spec[0] == ["preset", "on", "off"] and spec[1]["default"] == "preset"


@pytest.mark.parametrize("changes, match", [
    (dict(policy_json="{not json"), "policy_json"),
    (dict(fast_accumulation="sometimes"), r"fast_accumulation is 'sometimes'; allowed: \['preset', 'on', 'off'\]"),
    (dict(policy_json='{"name": "x", "colour": 1}'), "policy_json.*colour"),
    (dict(preset="fp4"), "unknown precision preset"),
    (dict(mlp_linears="int4"), "mlp_linears.*not a compute mode"),
])
def test_policy_node_bad_inputs(changes, match):
    with pytest.raises(ValueError, match=match):
        run_policy_node(**changes)


# --- loader -------------------------------------------------------------------------------------------------------


def test_loader_builds_the_checkpoint_under_the_policy(tmp_path):
    path = tmp_path / "tiny.safetensors"
    ref = write_checkpoint(path, layout="tencent", config=CFG, seed=3)
    node_policy = policy.NodePolicy(get_preset("fp8-balanced"), 1, 1)
    model, cfg, info = loader.load_model_file(str(path), node_policy, torch.device("cpu"), torch.device("cpu"))
    assert cfg == CFG and info.layout == "tencent"
    fp8 = dict((n, m) for n, m in model.named_modules() if isinstance(m, FP8Linear))
    assert "double_blocks.1.img_attn.qkv" in fp8 and fp8["double_blocks.1.img_attn.qkv"].mode is ComputeMode.FP8
    direct = load_transformer(dict(ref), get_preset("fp8-balanced"), "cpu", config=CFG)
    x, t = torch.randn(1, 16, 2, 4, 4), torch.tensor([700.0])
    ctx, y = torch.randn(1, 5, CFG.context_in_dim), torch.randn(1, CFG.vec_in_dim)
    out = model(x, t, ctx, y, guidance=torch.tensor([6.0]))
    assert torch.isfinite(out).all() and torch.equal(out, direct(x, t, ctx, y, guidance=torch.tensor([6.0])))


def test_loader_rejects_other_models(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4)}, str(path))
    with pytest.raises(NotHunyuanVideoError, match="HunyuanVideo"):
        loader.load_model_file(str(path), policy.NodePolicy(get_preset("bf16")), torch.device("cpu"),
                               torch.device("cpu"))


def test_loader_refuses_fp8_compute_on_unsupported_gpu(monkeypatch):
    reason = "this GPU (sm_86, RTX 3090) has no FP8 tensor cores: use the fp8-weight-only policy"
    monkeypatch.setattr(loader, "fp8_compute_support", lambda device: (False, reason))
    with pytest.raises(RuntimeError, match="fp8-balanced.*sm_86.*fp8-weight-only"):
        loader.check_device(get_preset("fp8-balanced"), torch.device("cuda"))
    loader.check_device(get_preset("fp8-weight-only"), torch.device("cuda"))  # no FP8 matmul needed: fine
    loader.check_device(get_preset("bf16"), torch.device("cuda"))


def test_loader_policy_resolution():
    assert loader.resolve_node_policy("bf16", None).policy == PRESETS["bf16"]
    given = policy.NodePolicy(get_preset("fp8-max"), 2, 0)
    assert loader.resolve_node_policy("bf16", given) is given
    with pytest.raises(ValueError, match="Policy node"):
        loader.resolve_node_policy("bf16", {"policy": "fp8-max"})
    with pytest.raises(ValueError, match="valid presets"):
        loader.resolve_node_policy("nope", None)


# --- sampler node helpers -----------------------------------------------------------------------------------------


def comfy_conditioning(batch=1, tokens=6, mask=False):
    extras = {"pooled_output": torch.randn(batch, 768)}
    if mask:
        extras["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)
    return [[torch.randn(batch, tokens, 4096), extras]]


def test_text_condition_from_comfy_conditioning():
    cond = comfy_conditioning(mask=True)
    tc = sampler.text_condition(cond, batch=2)
    assert tc.context.shape == (2, 6, 4096) and tc.y.shape == (2, 768) and tc.attention_mask.shape == (2, 6)
    assert torch.equal(tc.context[1], cond[0][0][0])


@pytest.mark.parametrize("cond, match", [
    ([], "empty"),
    (comfy_conditioning() * 2, "2 entries"),
    ([[torch.randn(1, 6, 4096), {}]], "not HunyuanVideo text conditioning"),
    ([[torch.randn(1, 4096), {"pooled_output": torch.randn(1, 768)}]], "not HunyuanVideo text conditioning"),
    (comfy_conditioning(batch=3), "batch 3"),
])
def test_text_condition_errors(cond, match):
    with pytest.raises(ValueError, match=match):
        sampler.text_condition(cond, batch=2)


@pytest.mark.parametrize("shape, match", [
    ((1, 16, 60, 106), "video latent"),
    ((1, 4, 3, 60, 106), "16"),
    ((1, 16, 3, 61, 106), "multiple of 16"),
])
def test_check_latent_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        sampler.check_latent(torch.zeros(shape), 16, (1, 2, 2))
    sampler.check_latent(torch.zeros(1, 16, 19, 60, 106), 16, (1, 2, 2))


def test_our_transformer_rejects_other_models():
    native = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="not a HunyuanVideo FP8 transformer.*Loader"):
        comfy_model.our_transformer(native)
    ours = build_random(CFG, None)
    assert comfy_model.our_transformer(types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=ours))) is ours


# --- hybrid schedule under native samplers ------------------------------------------------------------------------


def test_native_hybrid_wrapper_switches_at_the_right_steps():
    model = build_random(CFG, get_preset("fp8-balanced"))
    layer = model.double_blocks[1].img_attn.qkv
    assert isinstance(layer, FP8Linear)
    seen = []

    def executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw):
        seen.append((layer.mode.value, model.policy.attention))
        return x

    executor.class_obj = types.SimpleNamespace(diffusion_model=model)
    wrapper = comfy_model.hybrid_wrapper((2, 1), default_high_precision)
    sigmas = flow_sigmas(6, 7.0)
    for i in range(6):
        for _ in range(2):  # e.g. cond and uncond calls of one step
            wrapper(executor, torch.zeros(1), sigmas[i:i + 1], transformer_options={
                "sample_sigmas": sigmas, "sigmas": sigmas[i:i + 1]})
    high, low = ("bf16", "sdpa"), ("fp8", "fp8")
    assert seen == [high] * 4 + [low] * 6 + [high] * 2
    assert layer.mode is ComputeMode.FP8 and model.policy.attention == "fp8"
    wrapper(executor, torch.zeros(1), sigmas[:1], transformer_options={})  # outside a sampler: untouched
    assert seen[-1] == low


# --- converter ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "..", "../evil.safetensors", "a/b.safetensors"])
def test_converter_rejects_bad_output_names(tmp_path, name):
    with pytest.raises(ValueError, match="plain file name"):
        converter.output_path(str(tmp_path), name)
    assert list(tmp_path.iterdir()) == []


def test_converter_writes_a_loadable_fp8_file(tmp_path):
    src = tmp_path / "tiny_bf16.safetensors"
    write_checkpoint(src, layout="comfyui", config=CFG, seed=5)
    dst = converter.output_path(str(tmp_path), "tiny_fp8")
    assert dst.name == "tiny_fp8.safetensors"
    node_policy = policy.NodePolicy(get_preset("fp8-balanced"))
    calls = []
    summary = converter.convert_file(str(src), dst, node_policy, "ours", False, progress=lambda d, t: calls.append(d))
    assert dst.exists() and "FP8" in summary and calls and calls[-1] == max(calls)
    model, cfg, info = loader.load_model_file(str(dst), node_policy, torch.device("cpu"), torch.device("cpu"))
    assert cfg == CFG and info.fp8_flavour == "ours"
    with pytest.raises(ValueError, match="source file"):
        converter.convert_file(str(dst), dst, node_policy, "ours", True)
