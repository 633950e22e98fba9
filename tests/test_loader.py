"""hunyuan.loader: canonical state dicts (high precision and FP8) -> model, random models, clear errors."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from hyvideo_fp8.fp8.linear import FP8Linear
from hyvideo_fp8.fp8.quantize import quantize_rowwise, quantize_tensorwise
from hyvideo_fp8.hunyuan.config import NotHunyuanVideoError, canonical_shapes, tiny_config
from hyvideo_fp8.hunyuan.loader import StateDictError, build_random, load_transformer, random_state_dict
from hyvideo_fp8.hunyuan.policies import get_preset

CFG = tiny_config()


def _inputs(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(1, 16, 2, 4, 6, generator=g).to(dtype), timestep=torch.tensor([321.0]),
                context=torch.randn(1, 5, 32, generator=g).to(dtype), y=torch.randn(1, 24, generator=g).to(dtype),
                guidance=torch.tensor([6.0]))


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _linear_layers(cfg=CFG) -> list[str]:
    shapes = canonical_shapes(cfg)
    return [k[:-len(".weight")] for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2]


def _fp8_state_dict(per_tensor: bool) -> dict[str, torch.Tensor]:
    sd = random_state_dict(CFG, seed=3)
    for layer in _linear_layers():
        quantize = quantize_tensorwise if per_tensor else quantize_rowwise
        q, scale = quantize(sd[f"{layer}.weight"], torch.float8_e4m3fn)
        sd[f"{layer}.weight"], sd[f"{layer}.weight_scale"] = q, scale.reshape(-1) if not per_tensor else scale
    return sd


def test_load_random_state_dict_equals_build_random():
    loaded = load_transformer(random_state_dict(CFG, seed=7), None)
    built = build_random(CFG, seed=7)
    a, b = loaded.state_dict(), built.state_dict()
    assert set(a) == set(canonical_shapes(CFG))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(loaded(**_inputs()), built(**_inputs()))


def test_policy_load_places_fp8_layers_and_keeps_norms_fp32():
    model = load_transformer(random_state_dict(CFG, seed=1), get_preset("fp8-balanced"))
    qkv = model.double_blocks[1].img_attn.qkv
    assert isinstance(qkv, FP8Linear) and qkv.weight.dtype == torch.float8_e4m3fn and qkv.mode.value == "fp8"
    assert type(model.double_blocks[0].img_attn.qkv) is torch.nn.Linear  # boundary block stays bf16
    assert model.double_blocks[0].img_attn.qkv.weight.dtype == torch.bfloat16
    assert model.double_blocks[1].img_attn.norm.query_norm.scale.dtype == torch.float32
    assert model.txt_in.individual_token_refiner.blocks[0].norm1.bias.dtype == torch.float32
    assert model.img_in.proj.weight.dtype == torch.bfloat16
    assert not any(p.requires_grad or p.is_meta for p in model.parameters())


def test_build_random_under_fp8_policy_has_no_high_precision_block_linears():
    model = build_random(CFG, get_preset("fp8-max"), seed=2)
    block_linears = [m for n, m in model.named_modules() if n.startswith(("double_blocks", "single_blocks"))
                     and isinstance(m, (torch.nn.Linear, FP8Linear))]
    assert block_linears and all(isinstance(m, FP8Linear) for m in block_linears)
    with torch.no_grad():
        assert torch.isfinite(model(**_inputs(dtype=torch.bfloat16))).all()


@pytest.mark.parametrize("per_tensor", [False, True], ids=["per-channel", "per-tensor"])
def test_fp8_canonical_state_dict_loads(per_tensor):
    sd = _fp8_state_dict(per_tensor)
    sd["single_blocks.0.linear1.input_scale"] = torch.tensor(0.5)  # consumed, not an error
    reference = load_transformer(random_state_dict(CFG, seed=3), None)
    dequantized = load_transformer(dict(sd), None)
    model = load_transformer(dict(sd), get_preset("fp8-weight-only"))
    layer = model.single_blocks[0].linear1
    assert isinstance(layer, FP8Linear)
    # stored as given, not re-quantized (compared as bytes: torch.equal has no FP8 kernel on CPU)
    assert torch.equal(layer.weight.view(torch.uint8), sd["single_blocks.0.linear1.weight"].view(torch.uint8))
    with torch.no_grad():
        want = reference(**_inputs())
        assert _rel(dequantized(**_inputs()), want) < 0.06  # measured 2.5e-02 (per-channel and per-tensor)
        assert _rel(model(**_inputs(dtype=torch.bfloat16)), want) < 0.06  # measured 2.5e-02, 2.6e-02


def test_consume_empties_the_source_dict():
    sd = random_state_dict(CFG, seed=4)
    load_transformer(sd, get_preset("bf16"), consume=True)
    assert sd == {}


def test_missing_key_is_named():
    sd = random_state_dict(CFG)
    del sd["single_blocks.1.linear2.bias"]
    with pytest.raises(StateDictError, match=r"1 missing: 'single_blocks.1.linear2.bias'"):
        load_transformer(sd, None, config=CFG)
    with pytest.raises(NotHunyuanVideoError, match="single_blocks.1.linear2.bias"):
        load_transformer(sd, None)  # detection reports it too


def test_wrong_shape_is_named():
    sd = random_state_dict(CFG)
    sd["double_blocks.0.txt_mlp.0.weight"] = torch.randn(256, 60)
    with pytest.raises(StateDictError, match=r"double_blocks.0.txt_mlp.0.weight \(256, 60\) \(expected \(256, 64\)\)"):
        load_transformer(sd, None, config=CFG)


def test_unexpected_key_is_named():
    sd = random_state_dict(CFG)
    sd["double_blocks.0.lora_up.weight"] = torch.randn(4, 4)
    sd["img_in.proj.weight_scale"] = torch.tensor(1.0)  # scales belong to linears only
    with pytest.raises(StateDictError, match="2 unexpected: 'double_blocks.0.lora_up.weight', 'img_in.proj"):
        load_transformer(sd, None)


def test_another_models_dict_is_rejected():
    flux_like = {"double_blocks.0.img_attn.qkv.weight": torch.randn(192, 64), "img_in.weight": torch.randn(64, 64)}
    with pytest.raises(NotHunyuanVideoError, match="not a HunyuanVideo transformer"):
        load_transformer(flux_like, None)
    bigger = random_state_dict(tiny_config(depth=3))
    with pytest.raises(StateDictError, match="unexpected: 'double_blocks.2."):
        load_transformer(bigger, None, config=CFG)


def test_dtype_conflicting_with_policy_is_rejected():
    with pytest.raises(ValueError, match="conflicts with the policy's compute_dtype 'bf16'"):
        load_transformer(random_state_dict(CFG), get_preset("bf16"), dtype=torch.float32)


@pytest.mark.parametrize("fp8", [None, "ours"])
def test_streamed_load_reads_each_tensor_once_and_equals_the_eager_load(tmp_path, monkeypatch, fp8):
    """open_canonical(...).lazy_state_dict() + consume: shapes come from the header, each tensor is read when its
    layer is built and dropped after, so loading holds the model plus one tensor, not the whole file."""
    from hyvideo_fp8.hunyuan.checkpoint.canonical import CanonicalCheckpoint, load_canonical_state_dict, open_canonical
    from tests.checkpoint_factory import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint(path, layout="tencent", fp8=fp8, config=CFG, seed=9)
    policy = get_preset("fp8-balanced")
    eager = load_transformer(load_canonical_state_dict(path)[0], policy)

    reads, alive = [], []
    real_get = CanonicalCheckpoint.get

    def spy(self, name):
        t = real_get(self, name)
        reads.append(name)
        alive.append(weakref.ref(t))
        return t

    monkeypatch.setattr(CanonicalCheckpoint, "get", spy)
    with open_canonical(path) as ckpt:
        lazy = ckpt.lazy_state_dict()
        assert reads == [] and len(lazy) == len(ckpt.specs)
        streamed = load_transformer(lazy, policy, config=ckpt.info.config, consume=True)
        assert len(lazy) == 0
    assert sorted(reads) == sorted(set(reads)) and len(reads) == len(ckpt.specs)
    gc.collect()
    # what survives is what the model kept as its own parameters (no copy of the file's tensors beyond those)
    kept = {id(p) for p in streamed.parameters()} | {id(b) for b in streamed.buffers()}
    assert all(r() is None or id(r()) in kept for r in alive)
    sd_a, sd_b = eager.state_dict(), streamed.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k].view(torch.uint8), sd_b[k].view(torch.uint8)), k


@pytest.mark.parametrize("case", ["nan-weight", "inf-bias", "nan-fp8-code", "zero-scale", "negative-scale"])
def test_nonfinite_values_and_bad_scales_are_refused_while_loading(case):
    from hyvideo_fp8.hunyuan.checkpoint import InvalidValuesError

    sd = _fp8_state_dict(per_tensor=False)
    layer = "double_blocks.1.img_mlp.0"
    if case == "nan-weight":
        name = "img_in.proj.weight"
        sd[name] = sd[name].clone()
        sd[name].view(-1)[7] = float("nan")
    elif case == "inf-bias":
        name = f"{layer}.bias"
        sd[name] = sd[name].clone()
        sd[name][0] = float("inf")
    elif case == "nan-fp8-code":
        name = f"{layer}.weight"
        bits = sd[name].view(torch.uint8).clone()
        bits[0, 0] = 0x7F
        sd[name] = bits.view(torch.float8_e4m3fn)
    else:
        name = f"{layer}.weight_scale"
        sd[name] = sd[name].clone()
        sd[name][3] = 0.0 if case == "zero-scale" else -1.0
    with pytest.raises(InvalidValuesError, match=f"state dict: (FP8 scale )?'{name}' "):
        load_transformer(sd, get_preset("fp8-weight-only"))
