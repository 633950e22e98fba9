"""PrecisionPolicy decisions, strict (de)serialisation, and the HunyuanVideo presets."""

import json

import pytest

from hyvideo_fp8.fp8.linear import ComputeMode
from hyvideo_fp8.fp8.policy import PrecisionPolicy, Rule, load_policy
from hyvideo_fp8.hunyuan.policies import PRESETS, get_preset
from hyvideo_fp8.hunyuan.policies import load_policy as load_hunyuan_policy

BLOCK_ORDER = [f"double_blocks.{i}." for i in range(20)] + [f"single_blocks.{i}." for i in range(40)]


def test_first_matching_rule_wins_then_default():
    p = PrecisionPolicy(
        rules=(("double_blocks.*.img_mod.lin", "bf16"), ("double_blocks.*", "fp8"), ("*.linear2", "fp8-weight-only")),
        default_mode="fp8-weight-only",
    )
    assert p.rules[0] == Rule("double_blocks.*.img_mod.lin", ComputeMode.BF16)
    assert p.mode_for("double_blocks.3.img_mod.lin") is ComputeMode.BF16
    assert p.mode_for("double_blocks.3.img_attn.qkv") is ComputeMode.FP8
    assert p.mode_for("single_blocks.7.linear2") is ComputeMode.FP8_WEIGHT_ONLY
    p = p.with_overrides(rules=(("single_blocks.*.linear2", "fp8"),))
    assert p.mode_for("final_layer.linear") is ComputeMode.FP8_WEIGHT_ONLY
    assert p.mode_for("single_blocks.7.linear2x") is ComputeMode.FP8_WEIGHT_ONLY  # globs match the whole name


def test_high_precision_layers_follow_the_compute_dtype():
    with pytest.raises(ValueError, match="default_mode.*'fp32' but compute_dtype is 'bf16'"):
        PrecisionPolicy(default_mode="fp32")
    with pytest.raises(ValueError, match=r"rules\[0\].*'bf16' but compute_dtype is 'fp32'"):
        PrecisionPolicy(rules=(("a.*", "bf16"),), default_mode="fp32", compute_dtype="fp32")
    p = get_preset("fp8-balanced").with_overrides(compute_dtype="fp32")  # moves the bf16 layers to fp32
    assert p.mode_for("double_blocks.3.img_mod.lin") is ComputeMode.FP32
    assert p.mode_for("single_blocks.7.linear2") is ComputeMode.FP8


def test_boundary_blocks_compute_in_the_compute_dtype_with_sdpa():
    p = get_preset("fp8-max").with_overrides(high_precision_boundary_blocks=2, compute_dtype="bf16")
    for name in ("double_blocks.0.img_attn.qkv", "double_blocks.1.txt_mlp.2",
                 "single_blocks.38.linear1", "single_blocks.39.modulation.lin"):
        assert p.mode_for(name, BLOCK_ORDER) is ComputeMode.BF16
        assert p.attention_for(name, BLOCK_ORDER) == "sdpa"
    for name in ("double_blocks.2.img_attn.qkv", "single_blocks.37.linear2", "double_blocks.10.img_mod.lin"):
        assert p.mode_for(name, BLOCK_ORDER) is ComputeMode.FP8
        assert p.attention_for(name, BLOCK_ORDER) == "fp8"
    assert p.mode_for("double_blocks.1.img_attn.qkv") is ComputeMode.FP8  # no block order given: no boundary
    assert p.mode_for("double_blocks.1.x", ["double_blocks.1."]) is ComputeMode.BF16
    # prefixes end with a dot, so block 1 does not swallow blocks 10-19
    assert p.mode_for("double_blocks.10.img_attn.qkv", BLOCK_ORDER) is ComputeMode.FP8
    assert p.with_overrides(compute_dtype="fp32").mode_for("single_blocks.39.linear1", BLOCK_ORDER) is ComputeMode.FP32


def test_presets_contents():
    assert list(PRESETS) == ["bf16", "fp8-weight-only", "fp8-balanced", "fp8-max"]
    names = {
        "mod": "double_blocks.3.img_mod.lin", "qkv": "double_blocks.3.txt_attn.qkv",
        "proj": "double_blocks.3.img_attn.proj", "fc1": "double_blocks.3.img_mlp.0", "fc2": "double_blocks.3.txt_mlp.2",
        "l1": "single_blocks.7.linear1", "l2": "single_blocks.7.linear2", "smod": "single_blocks.7.modulation.lin",
        "refiner": "txt_in.individual_token_refiner.blocks.0.mlp.0", "embed": "txt_in.input_embedder",
        "time": "time_in.in_layer", "vec": "vector_in.out_layer", "final": "final_layer.linear",
        "final_mod": "final_layer.adaLN_modulation.1",
    }
    hp, fp8, wo = ComputeMode.BF16, ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY
    block_linears = ("qkv", "proj", "fc1", "fc2", "l1", "l2")
    expected = {
        "bf16": dict.fromkeys(names, hp),
        "fp8-weight-only": {k: wo if k in block_linears + ("mod", "smod") else hp for k in names},
        "fp8-balanced": {k: fp8 if k in block_linears else hp for k in names},
        "fp8-max": dict.fromkeys(names, fp8),
    }
    for preset, modes in expected.items():
        p = get_preset(preset)
        assert {k: p.mode_for(n) for k, n in names.items()} == modes, preset
        assert p.description and p.name == preset
        assert (p.norm_dtype, p.compute_dtype) == ("fp32", "bf16")
    assert get_preset("fp8-balanced").mode_for("double_blocks.0.img_mlp.0", BLOCK_ORDER) is hp  # boundary block
    # measured on the full 13B random model (bench/results/quality-2026-11-29-h200), rounded up ~10%
    assert [PRESETS[n].error_budget for n in PRESETS] == [0.0, 0.14, 0.12, 0.22]
    # and on the full 8.3B HunyuanVideo 1.5 (bench/results/quality-15-2026-12-06-h100-80gb-hbm3), rounded up
    assert [PRESETS[n].budget_for("1.5") for n in PRESETS] == [0.0, 0.12, 0.11, 0.18]
    assert [PRESETS[n].budget_for("v1") for n in PRESETS] == [0.0, 0.14, 0.12, 0.22]
    # fast FP8 accumulation on every HunyuanVideo linear (K <= 15,360) in the W8A8 presets only
    assert [PRESETS[n].fast_accum_max_k for n in PRESETS] == [0, 0, 15360, 15360]
    assert PRESETS["fp8-max"].fast_accum_for(15360) and not PRESETS["fp8-max"].fast_accum_for(15361)
    assert not PRESETS["bf16"].fast_accum_for(3072)
    assert PRESETS["bf16"].attention == "sdpa" and PRESETS["fp8-weight-only"].attention == "sdpa"
    with pytest.raises(ValueError, match=r"unknown precision preset 'fp8-fast'.*'bf16', 'fp8-weight-only'"):
        get_preset("fp8-fast")


@pytest.mark.parametrize("name", list(PRESETS))
def test_json_round_trip_is_exact(name):
    p = PRESETS[name]
    text = p.to_json()
    assert PrecisionPolicy.from_json(text) == p
    assert PrecisionPolicy.from_dict(json.loads(text)) == p
    assert json.loads(text)["version"] == 1
    custom = p.with_overrides(name="mine", error_budget=0.123456789, high_precision_boundary_blocks=3,
                              rules=(("a.*", "fp8"),), fp8_format="e5m2", activation_scaling="per-tensor",
                              attention_rules=(("txt_in.*", "fp8"), ("double_blocks.0.*", "sdpa")))
    again = PrecisionPolicy.from_json(custom.to_json())
    assert again == custom and again.to_json() == custom.to_json()


def test_unknown_fields_are_rejected():
    d = PRESETS["fp8-balanced"].to_dict()
    d["fp8_fromat"] = "e5m2"
    with pytest.raises(ValueError, match=r"unknown policy field\(s\) \['fp8_fromat'\].*fp8_format"):
        PrecisionPolicy.from_dict(d)
    with pytest.raises(ValueError, match="unknown policy field"):
        PRESETS["bf16"].with_overrides(attn="fp8")


@pytest.mark.parametrize("field, value, message", [
    ("default_mode", "fp9", r"'default_mode' is 'fp9'; allowed: \['fp8', 'fp8-weight-only', 'bf16', 'fp32'\]"),
    ("attention", "flash", r"'attention' is 'flash'; allowed: \['sdpa', 'fp8'\]"),
    ("norm_dtype", "fp16", r"'norm_dtype' is 'fp16'; allowed"),
    ("softmax_dtype", "bf16", r"'softmax_dtype' is 'bf16'; allowed: \['fp32'\]"),
    ("compute_dtype", "fp16", r"'compute_dtype' is 'fp16'; allowed: \['bf16', 'fp32'\]"),
    ("fp8_format", "e4m3", r"'fp8_format' is 'e4m3'; allowed: \['e4m3fn', 'e5m2'\]"),
    ("activation_scaling", "per-block", r"'activation_scaling' is 'per-block'"),
    ("high_precision_boundary_blocks", -1, "'high_precision_boundary_blocks' must be an integer >= 0"),
    ("high_precision_boundary_blocks", 1.5, "'high_precision_boundary_blocks' must be an integer >= 0"),
    ("error_budget", -0.1, "'error_budget' must be a finite number >= 0"),
    ("error_budgets", {"1.5": -1}, "'error_budgets' must map model family names"),
    ("error_budgets", {"": 0.1}, "'error_budgets' must map model family names"),
    ("error_budgets", "0.1", "'error_budgets' must map model family names"),
    ("error_budgets", {"1.5": float("nan")}, "'error_budgets' must map model family names"),
    ("error_budget", "small", "'error_budget' must be a finite number >= 0"),
    ("fast_accum_max_k", -1, "'fast_accum_max_k' must be an integer >= 0"),
    ("fast_accum_max_k", 3072.0, "'fast_accum_max_k' must be an integer >= 0"),
    ("version", 2, "'version' is 2; this pack reads version 1 .*update the pack"),
    ("name", "", "'name' must not be empty"),
    ("rules", [["double_blocks.*", "int4"]], r"'rules\[0\].mode' is 'int4'"),
    ("rules", [["double_blocks.*"]], r"'rules\[0\]' must be a \[pattern, mode\] pair"),
    ("rules", "double_blocks.*", "'rules' must be a list"),
    ("rules", [["", "fp8"]], "pattern must be a non-empty string"),
    ("attention_rules", [["txt_in.*", "flash"]], r"'attention_rules\[0\]' kernel is 'flash'; allowed"),
    ("attention_rules", [["txt_in.*"]], r"'attention_rules\[0\]' must be a \[pattern, kernel\] pair"),
    ("attention_rules", "txt_in.*", "'attention_rules' must be a list"),
])
def test_bad_values_are_rejected_naming_field_and_allowed_values(field, value, message):
    d = PRESETS["fp8-balanced"].to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=message):
        PrecisionPolicy.from_dict(d)


def test_policies_written_with_the_retired_softmax_dtype_still_load():
    """``softmax_dtype`` had one allowed value (the softmax is always fp32); files that carry it still load."""
    d = PRESETS["fp8-balanced"].to_dict()
    assert "softmax_dtype" not in d
    assert PrecisionPolicy.from_dict({**d, "softmax_dtype": "fp32"}) == PRESETS["fp8-balanced"]


def test_token_refiner_attention_follows_the_preset_descriptions():
    """fp8-balanced keeps the token refiner in high precision, its attention included (a few hundred text tokens:
    FP8 would add error and save no time); fp8-max runs FP8 attention everywhere; boundary blocks stay sdpa."""
    from hyvideo_fp8.hunyuan.config import RELEASED
    from hyvideo_fp8.hunyuan.model import HunyuanVideoTransformer

    def modes(preset: str, **overrides) -> tuple[set[str], set[str], set[str]]:
        model = HunyuanVideoTransformer(RELEASED, policy=get_preset(preset).with_overrides(**overrides),
                                        device="meta")
        return tuple(set(m) for m in model.attention_modes())

    assert modes("fp8-balanced") == ({"sdpa"}, {"sdpa", "fp8"}, {"sdpa", "fp8"})
    assert "token refiner (attention included)" in get_preset("fp8-balanced").description
    assert modes("fp8-max") == ({"fp8"}, {"fp8"}, {"fp8"})
    assert modes("fp8-balanced", attention="sdpa") == ({"sdpa"}, {"sdpa"}, {"sdpa"})
    refiner = "txt_in.individual_token_refiner.blocks.1."
    assert PrecisionPolicy(attention="fp8", attention_rules=(("txt_in.*", "sdpa"),)).attention_for(refiner) == "sdpa"
    assert PrecisionPolicy(attention="sdpa", attention_rules=(("txt_in.*", "fp8"),)).attention_for(refiner) == "fp8"


def test_load_policy_sources(tmp_path):
    p = PRESETS["fp8-max"].with_overrides(name="from-file")
    path = tmp_path / "policy.json"
    path.write_text(p.to_json())
    assert load_policy(path) == p
    assert load_policy(str(path)) == p
    assert load_policy(p.to_json()) == p
    assert load_policy(p.to_dict()) == p
    assert load_policy(p) is p
    assert load_hunyuan_policy("fp8-balanced") is PRESETS["fp8-balanced"]
    with pytest.raises(ValueError, match=r"'fp8-fast' is not a preset name \(valid: \['bf16', 'fp8-balanced'"):
        load_hunyuan_policy("fp8-fast")


def test_bad_policy_files_are_rejected(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "name": "x",')
    with pytest.raises(ValueError, match=r"policy file .*broken.json: precision policy is not valid JSON"):
        load_policy(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"version": 1, "name": "x", "attention": "flash"}))
    with pytest.raises(ValueError, match=r"wrong.json: policy field 'attention' is 'flash'"):
        load_policy(wrong)
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        load_policy(array)
    with pytest.raises(ValueError, match="not a preset name"):
        load_policy(tmp_path / "missing.json")
