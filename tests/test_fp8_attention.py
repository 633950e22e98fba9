"""FP8 attention (reference backend, CPU) against float64 SDPA: accuracy, smoothing, exact key padding, bad inputs.

The Triton kernel computes the same arithmetic; bench/bench_attention.py checks it against this reference on a GPU.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from hyvideo_fp8.fp8 import fused
from hyvideo_fp8.fp8.attention import fp8_attention, fp8_attention_quantized_q
from hyvideo_fp8.fp8.attention.quantize_qkv import (
    K_BLOCK,
    KERNEL_HEAD_DIMS,
    deinterleave_keys,
    empty_quantized_q,
    hadamard,
    interleave_keys,
    quantize_qkv_torch,
)
from hyvideo_fp8.fp8.attention.reference import (
    INT_TO_FLOAT_BIAS,
    INT_TO_FLOAT_BIAS_BITS,
    P_LOG2_SCALE,
    attention_reference,
    biased_logits,
)
from hyvideo_fp8.fp8.quantize import quantize_tensorwise

D = 128


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def cos(out: torch.Tensor, ref: torch.Tensor) -> float:
    return F.cosine_similarity(out.double().flatten(), ref.double().flatten(), dim=0).item()


def sdpa64(q, k, v, mask=None):
    attn_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=attn_mask)


def inputs(L: int, heads: int = 2, sharp: bool = False, dtype=torch.bfloat16):
    """Normal Q, K, V; "sharp": Q and K x3, K plus a shared per-channel offset (scale 3) and 4 outlier channels x8."""
    q, k, v = torch.randn(1, heads, L, D), torch.randn(1, heads, L, D), torch.randn(1, heads, L, D)
    if sharp:
        q, k = 3 * q, 3 * (k + 3 * torch.randn(D))
        k[..., :4] *= 8
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_random_normal_matches_float64():
    q, k, v = inputs(1500)  # not a multiple of the 128-token blocks
    out = fp8_attention(q, k, v, backend="reference")
    ref = sdpa64(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert not out.isnan().any()
    assert cos(out, ref) >= 0.999  # measured 0.99929
    assert rel_l2(out, ref) < 0.045  # measured 0.038 (FP8 P and V: ~2.5 % each)


def test_sharp_with_offset_and_outliers_beats_per_tensor_fp8():
    q, k, v = inputs(2048, sharp=True)
    ref = sdpa64(q, k, v)
    out = fp8_attention(q, k, v, backend="reference")
    assert cos(out, ref) >= 0.998  # measured 0.9984
    assert rel_l2(out, ref) < 0.065  # measured 0.056
    # per-tensor FP8 Q and K (one scale, no smoothing), softmax and P.V exact: the FA3-FP8 / cuDNN-FP8 Q.K
    q8, sq = quantize_tensorwise(q.float())
    k8, sk = quantize_tensorwise(k.float())
    per_tensor = sdpa64(q8.double() * sq.double(), k8.double() * sk.double(), v)
    assert rel_l2(per_tensor, ref) > 3 * rel_l2(out, ref)  # measured 0.33 vs 0.056
    assert cos(per_tensor, ref) < 0.99  # measured 0.946


def test_smoothing_and_rotation_keep_logits():
    """Dequantized logits equal q.k^T * sm_scale * log2(e) up to one softmax-invariant constant per query."""
    q, k, v = inputs(300, heads=1, sharp=True, dtype=torch.float32)
    sm = 0.1
    qkv = quantize_qkv_torch(q, k, v, None, sm)
    qd = qkv.q[0, :300].float() * qkv.q_scale[0, :300, None]
    kd = qkv.k[0, :300].float() * qkv.k_scale[0].repeat_interleave(K_BLOCK)[:300, None]
    logits = (qd @ kd.T) / math.log2(math.e) / sm
    exact = q[0, 0] @ k[0, 0].T
    diff = logits - exact
    diff = diff - diff.mean(dim=1, keepdim=True)  # the shift q_i . mean(k) is the same for every key of query i
    assert diff.abs().max() / exact.abs().max() < 0.02  # measured 0.008 (INT8 Q and K)
    assert kd.mean(dim=0).abs().max() < 0.05 * kd.abs().max()  # smoothed: no shared offset left
    rot = hadamard(D) * D**-0.5
    assert torch.allclose(rot @ rot.T, torch.eye(D), atol=1e-6)


def test_quantized_layout():
    q, k, v = inputs(200, heads=3)
    mask = torch.ones(1, 200, dtype=torch.bool)
    mask[0, 150:] = False
    qkv = quantize_qkv_torch(q, k, v, mask, D**-0.5)
    assert qkv.q.shape == (3, 256, D) and qkv.q.dtype == torch.int8
    assert qkv.k.shape == (3, 256, D) and qkv.k_scale.shape == (3, 2)
    assert qkv.v_t.shape == (3, D, 256) and qkv.v_t.dtype == torch.float8_e4m3fn
    assert qkv.kv_len.tolist() == [150]
    assert (qkv.q[:, 200:] == 0).all() and (qkv.k[:, 150:] == 0).all() and (qkv.v_t[:, :, 150:].float() == 0).all()
    assert (qkv.q_scale > 0).all() and (qkv.k_scale > 0).all() and (qkv.v_scale > 0).all()
    v_back = qkv.v_t[:, :, :150].float().transpose(1, 2) * qkv.v_scale[:, None, :]
    assert rel_l2(v_back, v[0, :, :150]) < 0.04  # measured 0.026 (e4m3: 3 mantissa bits)


def test_key_padding_is_exact():
    L = 700
    q, k, v = inputs(L)
    mask = torch.ones(1, L, dtype=torch.bool)
    mask[0, 640:] = False  # text padding at the end
    mask[0, 100:130] = False  # and a hole in the middle
    k_pad, v_pad = k.clone(), v.clone()
    k_pad[:, :, ~mask[0]] = 1e4  # garbage in padded keys must not leak
    v_pad[:, :, ~mask[0]] = float("nan")
    out = fp8_attention(q, k_pad, v_pad, key_padding_mask=mask, backend="reference")
    keep = mask[0]
    out_cut = fp8_attention(q[:, :, keep], k[:, :, keep], v[:, :, keep], backend="reference")
    assert not out.isnan().any()
    # same keys in the same blocks -> the same quantization; only summation order of the K mean may differ
    assert rel_l2(out[:, :, keep], out_cut) < 1e-3  # measured 0 to 2e-4
    ref = sdpa64(q, k, v, mask)
    assert cos(out[:, :, keep], ref[:, :, keep]) >= 0.999  # measured 0.9993


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_dtypes_and_strided_input(dtype):
    x = torch.randn(1, 333, 2, D)  # [B, L, H, D] as the model produces it, viewed as [B, H, L, D]
    q = x.to(dtype).transpose(1, 2)
    k = torch.randn(1, 333, 2, D).to(dtype).transpose(1, 2)
    v = torch.randn(1, 333, 2, D).to(dtype).transpose(1, 2)
    out = fp8_attention(q, k, v, sm_scale=0.05, backend="auto")  # auto on CPU -> reference
    assert out.dtype == dtype and out.shape == q.shape
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.05)
    assert cos(out, ref) >= 0.999  # measured 0.9994


def test_reference_block_size_does_not_change_the_result_much():
    q, k, v = inputs(512)
    qkv = quantize_qkv_torch(q, k, v, None, D**-0.5)
    a, b = attention_reference(qkv, torch.float32, 64), attention_reference(qkv, torch.float32, 128)
    assert rel_l2(a, b) < 0.02  # measured 0.006: only where the running max (P's FP8 grid) differs


def test_biased_int_to_float_is_exact_and_logits_stay_close():
    """The kernels read ``Q.K + 0x4B400000`` as fp32 instead of converting: exact for every int8 Q.K they can form,
    and taking the bias out (with the row max, in FMAs) adds at most ~2 integer steps of Q.K (times rf) of error."""
    bound = 127 * 127 * max(KERNEL_HEAD_DIMS)
    assert INT_TO_FLOAT_BIAS == 1.5 * 2**23 and bound < 2**22
    ints = torch.cat([torch.randint(-bound, bound + 1, (100_000,), dtype=torch.int32),
                      torch.tensor([-bound, bound, 0, 1, -1], dtype=torch.int32)])  # fmt: skip
    as_float = (ints + INT_TO_FLOAT_BIAS_BITS).view(torch.float32)
    assert torch.equal(as_float.double() - INT_TO_FLOAT_BIAS, ints.double())

    rf = torch.exp(torch.empty(64, 1).uniform_(math.log(1e-7), math.log(1e-2)))  # q_scale * k_scale, log2 units
    ints = torch.randint(-bound, bound + 1, (64, 256)).float()
    m_new = ints.amax(dim=1, keepdim=True) * rf + torch.randn(64, 1).abs()
    got = biased_logits(ints, rf, m_new)
    exact = ints.double() * rf.double() - (m_new.double() - P_LOG2_SCALE)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    fp32_rounding = 2.0**-22 * (exact.abs() + (m_new.double() - P_LOG2_SCALE).abs())  # what plain fp32 FMAs lose
    assert ((got.double() - exact).abs() <= 2 * rf.double() + fp32_rounding).all()
    masked = biased_logits(torch.full((1, 2), float("-inf")), rf[:1], m_new[:1])
    assert torch.equal(masked, torch.full((1, 2), -math.inf))


def test_interleaved_keys_for_the_gluon_kernel():
    """The Hopper kernel's K layout: row 16a + 8b + 2t + e of every 32-key chunk holds key 16a + 4t + 2b + e; the
    permutation stays inside each 128-key scale block, so scales, V and the result are unchanged."""
    k = torch.randn(2, 256, D)
    k_il = interleave_keys(k)
    for chunk in (0, 7):
        for a, t, b, e in ((0, 0, 0, 0), (1, 2, 1, 1), (0, 3, 1, 0), (1, 1, 0, 1)):
            row, key = 32 * chunk + 16 * a + 8 * b + 2 * t + e, 32 * chunk + 16 * a + 4 * t + 2 * b + e
            assert torch.equal(k_il[1, row], k[1, key])
    assert torch.equal(deinterleave_keys(k_il), k)

    q, k, v = inputs(300, heads=2)
    mask = torch.ones(1, 300, dtype=torch.bool)
    mask[0, 290:] = False
    plain = quantize_qkv_torch(q, k, v, mask, D**-0.5)
    mixed = quantize_qkv_torch(q, k, v, mask, D**-0.5, interleave_k=True)
    assert mixed.k_interleaved and not plain.k_interleaved
    assert torch.equal(mixed.k, interleave_keys(plain.k)) and torch.equal(mixed.k_scale, plain.k_scale)
    assert torch.equal(attention_reference(mixed, torch.float32), attention_reference(plain, torch.float32))


def test_kernels_refuse_the_other_key_order():
    """Each GPU kernel checks the K layout it was given before launching anything."""
    pytest.importorskip("triton")
    from hyvideo_fp8.fp8.attention.gluon_kernel import attention_gluon, gluon_supported
    from hyvideo_fp8.fp8.attention.triton_kernel import attention_triton

    q, k, v = inputs(200)
    out = torch.empty_like(q)
    with pytest.raises(ValueError, match="interleave_k=False"):
        attention_triton(quantize_qkv_torch(q, k, v, None, 0.1, interleave_k=True), out)
    if gluon_supported((9, 0), D)[0]:
        with pytest.raises(ValueError, match="interleave_k=True"):
            attention_gluon(quantize_qkv_torch(q, k, v, None, 0.1), out)
    ok, reason = gluon_supported((8, 9), D)
    assert not ok and ("sm_89" in reason or "not importable" in reason)
    assert not gluon_supported((9, 0), 64)[0]


def test_queries_quantized_by_the_prologue_give_the_same_attention():
    """The model's FP8 path: the quantizing q/k prologue writes an image stream (RoPE) and a text stream into one
    joint sequence, int8 queries and 16-bit k, v; attention on that equals fp8_attention on the plain prologue's
    q, k, v (same quantizer per token), padding included; and it is close to float64 SDPA."""
    B, H, n_img, n_txt = 1, 2, 150, 40
    L = n_img + n_txt
    streams = []
    for n, n_rope in ((n_img, n_img), (n_txt, 0)):
        qkv = torch.randn(B, n, 3 * H * D).bfloat16()
        angles = torch.rand(n_rope, D // 2, dtype=torch.float64) * 50
        w = (torch.rand(D) + 0.5).bfloat16()
        streams.append((qkv, w, w, angles.cos().float(), angles.sin().float(), n_rope))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, -7:] = False
    q_out = empty_quantized_q(B, H, L, D, D**-0.5, torch.device("cpu"))
    kv = torch.empty(2, B, H, L, D, dtype=torch.bfloat16)
    row0, plain = 0, []
    for qkv, qw, kw, cos_t, sin_t, n_rope in streams:
        fused.qk_norm_rope_quant_q(qkv, qw, kw, cos_t, sin_t, n_rope, 1e-6, q_out, kv, row0)
        plain.append(fused.qk_norm_rope_reference(qkv, qw, kw, cos_t, sin_t, n_rope, 1e-6))
        row0 += qkv.shape[1]
    q, k, v = (torch.cat(parts, dim=2) for parts in zip(*plain))
    out = fp8_attention_quantized_q(q_out, kv[0], kv[1], key_padding_mask=mask)
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    assert torch.equal(out, fp8_attention(q, k, v, key_padding_mask=mask))
    assert cos(out, sdpa64(q, k, v, mask)) > 0.999


def test_quantized_q_must_match_k_and_v():
    q, k, v = _good()
    qq = empty_quantized_q(1, 2, 63, D, D**-0.5, torch.device("cpu"))
    with pytest.raises(ValueError, match="does not match"):
        fp8_attention_quantized_q(qq, k, v)
    with pytest.raises(ValueError, match="same"):
        fp8_attention_quantized_q(empty_quantized_q(1, 2, 64, D, 0.1, torch.device("cpu")), k, v[:, :, :32])


def _good():
    return inputs(64)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda q, k, v: (q[0], k[0], v[0], {}), ValueError, r"\[B, H, L, D\]"),
        (lambda q, k, v: (q, k[:, :, :32], v, {}), ValueError, "same"),
        (lambda q, k, v: (q.to(torch.int32), k, v, {}), ValueError, "floating"),
        (lambda q, k, v: (q, k.to(torch.float8_e4m3fn), v, {}), ValueError, "floating"),
        (lambda q, k, v: (q, k, v, {"backend": "cuda"}), ValueError, "unknown backend"),
        (lambda q, k, v: (q, k, v, {"sm_scale": 0.0}), ValueError, "sm_scale"),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": torch.ones(1, 64)}), ValueError, "bool"),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": torch.ones(1, 63, dtype=torch.bool)}), ValueError, "shape"),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": torch.zeros(1, 64, dtype=torch.bool)}), ValueError, "no valid"),
        (lambda q, k, v: (q, k, v, {"backend": "triton"}), RuntimeError, "CUDA GPUs"),
        (lambda q, k, v: (q[..., :48], k[..., :48], v[..., :48], {}), ValueError, "head dim 48"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    q, k, v, kwargs = change(*_good())
    with pytest.raises(error, match=match):
        fp8_attention(q, k, v, **kwargs)


def test_triton_path_is_one_opaque_op_for_torch_compile():
    """Under torch.compile the GPU path is the custom op ``hyvideo_fp8::fp8_attention``: its fake implementation gives
    Inductor the output's shape, dtype and layout without tracing the key packing or our Triton launchers."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 300, 3, 64, dtype=torch.bfloat16).transpose(1, 2)  # [B, H, L, D] view, as the model has
        mask = torch.empty(2, 300, dtype=torch.bool)
        out = torch.ops.hyvideo_fp8.fp8_attention(q, q, q, mask, 0.125, "gluon", "triton")
        assert out.shape == (2, 3, 300, 64) and out.dtype == torch.bfloat16 and out.is_contiguous()
        assert torch.ops.hyvideo_fp8.fp8_attention(q.float(), q.float(), q.float(), None, 0.1, "triton",
                                                   "torch").dtype == torch.float32
