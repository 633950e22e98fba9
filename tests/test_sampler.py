"""Flow-matching sampler: schedule, Euler integration, seeds, CFG, hybrid precision schedule, interruption."""

import math

import pytest
import torch
from torch import nn

from hyvideo_fp8.fp8.formats import ComputeMode
from hyvideo_fp8.fp8.linear import FP8Linear
from hyvideo_fp8.hunyuan.sampler import (
    TextCondition,
    flow_sigmas,
    initial_noise,
    precision_plan,
    sample,
)

SHAPE = (1, 4, 3, 4, 6)  # [B, C, T, H, W]


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def text(batch: int = 1, tokens: int = 5, dim: int = 8, vec: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, tokens, dim), torch.randn(batch, vec)


class Recorder(nn.Module):
    """Toy transformer with ComfyUI's forward signature; ``field(x, sigma, context)`` gives the velocity."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.calls: list[dict] = []

    def forward(self, x, timestep, context, y, guidance=None, attention_mask=None, transformer_options=None, **kw):
        self.calls.append(dict(x=x.clone(), t=timestep.clone(), context=context, y=y, guidance=guidance,
                               mask=attention_mask))
        return self.field(x, timestep / 1000.0, context)


# --- schedule -----------------------------------------------------------------------------------------------------


def test_sigmas_hand_computed_shift7_4steps():
    # t = 1, .75, .5, .25, 0 -> 7t / (1 + 6t)
    expected = torch.tensor([1.0, 5.25 / 5.5, 3.5 / 4.0, 1.75 / 2.5, 0.0])
    assert torch.allclose(flow_sigmas(4, 7.0), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("steps", [1, 3, 10, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0, 17.0])
def test_sigmas_match_formula(steps, shift):
    s = flow_sigmas(steps, shift)
    ref = [shift * (1 - i / steps) / (1 + (shift - 1) * (1 - i / steps)) for i in range(steps + 1)]
    assert s.dtype == torch.float32 and s.shape == (steps + 1,)
    assert torch.allclose(s.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-7, rtol=0)
    assert s[0] == 1.0 and s[-1] == 0.0 and bool((s[1:] < s[:-1]).all())


def test_shift_one_is_linear():
    assert torch.equal(flow_sigmas(5, 1.0), torch.linspace(1, 0, 6))


@pytest.mark.parametrize("steps, shift", [(0, 7.0), (-3, 7.0), (2.5, 7.0), (10, 0.0), (10, -1.0)])
def test_bad_schedule_rejected(steps, shift):
    with pytest.raises(ValueError, match="steps|shift"):
        flow_sigmas(steps, shift)


# --- Euler --------------------------------------------------------------------------------------------------------


def test_linear_path_lands_exactly_and_model_inputs_follow_comfyui():
    target = torch.randn(SHAPE)
    model = Recorder(lambda x, sigma, ctx: (x - target) / sigma.view(-1, 1, 1, 1, 1))  # = x1 - x0 on the path
    context, y = text()
    previews = []
    out = sample(model, SHAPE, context, y, steps=8, shift=7.0, guidance=6.0, seed=3,
                 callback=lambda i, n, x0: previews.append((i, n, x0)))
    assert rel_l2(out, target) < 1e-6  # measured 1.1e-7 (fp32 rounding only)
    sig = flow_sigmas(8, 7.0)
    assert [c["t"].item() for c in model.calls] == pytest.approx((sig[:-1] * 1000).tolist(), rel=1e-7)
    for c in model.calls:
        assert c["guidance"].shape == (1,) and c["guidance"].item() == 6.0  # raw scale, like extra_conds
        assert c["context"].shape == context.shape and c["y"].shape == y.shape and c["mask"] is None
        assert c["x"].dtype == torch.float32
    # the x0 preview of a straight path is the target at every step
    assert [p[:2] for p in previews] == [(i, 8) for i in range(8)]
    assert max(rel_l2(p[2], target) for p in previews) < 1e-5  # measured 2e-7


def test_euler_matches_exact_euler_product_on_linear_ode():
    # v = x  =>  Euler gives x_N = x_0 * prod(1 + dsigma_i); the ODE solution is x_0 * exp(-1)
    model = Recorder(lambda x, sigma, ctx: x)
    context, y = text()
    noise = torch.randn(SHAPE)
    for steps in (5, 40):
        sig = flow_sigmas(steps, 3.0).double()
        factor = torch.prod(1 + (sig[1:] - sig[:-1])).item()
        out = sample(model, noise, context, y, steps=steps, shift=3.0)
        assert rel_l2(out, noise * factor) < 1e-6  # measured ~1e-7
    err5 = abs(math.prod(1 + d for d in (flow_sigmas(5, 3.0)[1:] - flow_sigmas(5, 3.0)[:-1]).tolist()) - math.exp(-1))
    err40 = abs(factor - math.exp(-1))
    assert err40 < err5 / 4  # first-order convergence towards the ODE solution


def test_noise_tensor_used_as_given_and_output_fp32():
    model = Recorder(lambda x, sigma, ctx: torch.zeros_like(x))
    noise = torch.randn(SHAPE, dtype=torch.float64)
    context, y = text()
    out = sample(model, noise, context, y, steps=3)
    assert out.dtype == torch.float32 and torch.equal(out, noise.float())


# --- seeds --------------------------------------------------------------------------------------------------------


def test_seed_reproducible_and_same_stream_as_comfyui():
    a, b, c = initial_noise(SHAPE, 42), initial_noise(SHAPE, 42), initial_noise(SHAPE, 43)
    assert torch.equal(a, b) and not torch.equal(a, c)
    comfy_style = torch.randn(SHAPE, generator=torch.manual_seed(42), dtype=torch.float32, device="cpu")
    assert torch.equal(a, comfy_style)
    assert a.device.type == "cpu" and a.dtype == torch.float32


def test_sampling_reproducible_for_a_seed():
    model = Recorder(lambda x, sigma, ctx: torch.tanh(x) + ctx.mean())
    context, y = text()
    r1 = sample(model, SHAPE, context, y, steps=4, seed=7)
    r2 = sample(model, SHAPE, context, y, steps=4, seed=7)
    r3 = sample(model, SHAPE, context, y, steps=4, seed=8)
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    assert torch.isfinite(r1).all()


# --- CFG ----------------------------------------------------------------------------------------------------------


def test_true_cfg_combines_velocities_and_doubles_batch():
    def field(x, sigma, ctx):
        return x * 0 + ctx.sum(dim=(1, 2)).view(-1, 1, 1, 1, 1)  # velocity = sum of the prompt tokens

    model = Recorder(field)
    pos, pos_y = text()
    neg, neg_y = text()
    noise = torch.randn(SHAPE)
    out = sample(model, noise, pos, pos_y, steps=2, cfg=3.5, negative=TextCondition(neg, neg_y))
    assert all(c["x"].shape[0] == 2 for c in model.calls)
    v = neg.sum() + 3.5 * (pos.sum() - neg.sum())
    assert rel_l2(out, noise - v) < 1e-6  # sum of dsigma is -1; measured 3e-8


def test_cfg_pads_prompts_of_different_length_with_a_mask():
    model = Recorder(lambda x, sigma, ctx: torch.zeros_like(x))
    pos, pos_y = text(tokens=5)
    neg, neg_y = text(tokens=2)
    sample(model, SHAPE, pos, pos_y, steps=1, cfg=2.0, negative=TextCondition(neg, neg_y))
    call = model.calls[0]
    assert call["context"].shape == (2, 5, 8)
    assert call["mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert torch.equal(call["context"][1, :2], neg[0]) and bool((call["context"][1, 2:] == 0).all())


def test_cfg_one_ignores_negative():
    model = Recorder(lambda x, sigma, ctx: torch.zeros_like(x))
    pos, pos_y = text()
    sample(model, SHAPE, pos, pos_y, steps=1, cfg=1.0, negative=TextCondition(*text()))
    assert model.calls[0]["x"].shape[0] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(cfg=2.0), "negative prompt"),
    (dict(cfg=0.5), "cfg must be >= 1"),
    (dict(hybrid=(1, -1)), "hybrid"),
    (dict(hybrid=(1,)), "hybrid"),
    (dict(steps=0), "steps"),
])
def test_bad_arguments_rejected_before_any_model_call(kwargs, match):
    model = Recorder(lambda x, sigma, ctx: torch.zeros_like(x))
    with pytest.raises(ValueError, match=match):
        sample(model, SHAPE, *text(), **kwargs)
    assert model.calls == []


def test_bad_shapes_rejected():
    model = Recorder(lambda x, sigma, ctx: torch.zeros_like(x))
    with pytest.raises(ValueError, match="5-D"):
        sample(model, (1, 4, 4, 6), *text(), steps=1)
    with pytest.raises(ValueError, match="batch"):
        sample(model, (2, *SHAPE[1:]), *text(batch=1), steps=1)
    with pytest.raises(ValueError, match="attention_mask"):
        sample(model, SHAPE, *text(tokens=5), attention_mask=torch.ones(1, 4), steps=1)
    assert model.calls == []


# --- hybrid precision schedule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, hybrid, expected", [
    (10, (2, 3), [1, 1, 0, 0, 0, 0, 0, 1, 1, 1]),
    (5, (0, 0), [0, 0, 0, 0, 0]),
    (4, (0, 1), [0, 0, 0, 1]),
    (3, (2, 2), [1, 1, 1]),
])
def test_precision_plan(steps, hybrid, expected):
    assert precision_plan(steps, hybrid) == [bool(e) for e in expected]


class FP8Toy(nn.Module):
    """Two real FP8Linear layers; records the compute mode each one had at every forward."""

    def __init__(self):
        super().__init__()
        self.a = FP8Linear.from_float(torch.randn(32, 16), torch.randn(32), mode="fp8", compute_dtype=torch.float32)
        self.b = FP8Linear.from_float(torch.randn(16, 32), None, mode="fp8-weight-only",
                                      compute_dtype=torch.float32)
        self.seen: list[tuple[str, str]] = []

    def forward(self, x, timestep, context, y, guidance=None, attention_mask=None, transformer_options=None, **kw):
        self.seen.append((self.a.mode.value, self.b.mode.value))
        h = self.b(self.a(context[:, :, :16]))
        return x * 0.01 + h.mean()


def test_hybrid_switches_exactly_at_requested_steps_and_restores_modes():
    model = FP8Toy()
    context, y = torch.randn(1, 3, 16), torch.randn(1, 4)
    sample(model, SHAPE, context, y, steps=9, hybrid=(2, 3))
    high, low = ("bf16", "bf16"), ("fp8", "fp8-weight-only")
    assert model.seen == [high] * 2 + [low] * 4 + [high] * 3
    assert (model.a.mode, model.b.mode) == (ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY)


def test_hybrid_with_custom_high_precision_context():
    model = FP8Toy()
    events = []

    class Marker:
        def __init__(self, m):
            assert m is model

        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")

    sample(model, SHAPE, torch.randn(1, 3, 16), torch.randn(1, 4), steps=6, hybrid=(1, 2), high_precision=Marker)
    assert events == ["enter", "exit", "enter", "exit"]  # entered once per high-precision stretch


class Stop(RuntimeError):
    pass


@pytest.mark.parametrize("stop_at", [0, 3, 5])  # inside the first bf16 stretch, the fp8 middle, the last stretch
def test_interrupt_leaves_model_usable(stop_at):
    model = FP8Toy()
    context, y = torch.randn(1, 3, 16), torch.randn(1, 4)
    reference = sample(model, SHAPE, context, y, steps=7, hybrid=(2, 2), seed=5)

    def interrupt(i, n, x0):
        if i == stop_at:
            raise Stop("user pressed cancel")

    with pytest.raises(Stop):
        sample(model, SHAPE, context, y, steps=7, hybrid=(2, 2), seed=5, callback=interrupt)
    assert (model.a.mode, model.b.mode) == (ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY)
    again = sample(model, SHAPE, context, y, steps=7, hybrid=(2, 2), seed=5)
    assert torch.equal(again, reference)


def test_hybrid_on_the_real_transformer():
    from hyvideo_fp8.hunyuan.config import tiny_config
    from hyvideo_fp8.hunyuan.loader import build_random
    from hyvideo_fp8.hunyuan.policies import get_preset

    cfg, policy = tiny_config(), get_preset("fp8-balanced")
    model = build_random(cfg, policy, seed=2)
    qkv = model.double_blocks[1].img_attn.qkv
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append((qkv.mode.value, m.attention_modes()[1][1])))
    context, y = torch.randn(1, 6, cfg.context_in_dim), torch.randn(1, cfg.vec_in_dim)
    shape = (1, 16, 2, 4, 4)
    mixed = sample(model, shape, context, y, steps=4, hybrid=(1, 1), seed=1)
    assert seen == [("bf16", "sdpa"), ("fp8", "fp8"), ("fp8", "fp8"), ("bf16", "sdpa")]
    assert model.policy is policy and qkv.mode is ComputeMode.FP8
    high = sample(model, shape, context, y, steps=4, hybrid=(4, 0), seed=1)
    fp8 = sample(model, shape, context, y, steps=4, seed=1)
    # the high-precision steps are exactly the policy's compute dtype with SDPA on the same FP8 weights
    model.set_policy(policy.with_overrides(rules=(), default_mode="bf16", attention="sdpa"))
    assert torch.equal(high, sample(model, shape, context, y, steps=4, seed=1))
    model.set_policy(policy)
    assert torch.equal(fp8, sample(model, shape, context, y, steps=4, seed=1))
    assert torch.isfinite(mixed).all() and 0 < rel_l2(fp8, high) < 1e-2  # measured 3.2e-4 (tiny random model)
    assert rel_l2(mixed, high) < rel_l2(fp8, high)


def test_a_latent_wider_than_the_model_input_is_refused():
    from hyvideo_fp8.hunyuan.config import tiny_variant_config
    from hyvideo_fp8.hunyuan.loader import build_random

    cfg = tiny_variant_config("1.5")
    model = build_random(cfg, None, seed=1)
    context = torch.randn(1, 3, cfg.context_in_dim)
    with pytest.raises(ValueError, match="pass the latent to denoise alone"):
        sample(model, (1, cfg.in_channels + 1, 1, 4, 4), context, torch.zeros(1, 0), steps=1)


# --- image-conditioning channels and further model inputs ----------------------------------------------------------

LATENT_C, IMAGE_C = 4, 3  # a toy model taking the latent plus 3 image-conditioning channels


class Conditioned(Recorder):
    """Toy transformer taking ``LATENT_C + IMAGE_C`` input channels; the velocity is the per-sample mean of its image
    channels plus, where given, the mean of a ``feat`` keyword input (constant along the path, so Euler is exact)."""

    config = type("Config", (), {"in_channels": LATENT_C + IMAGE_C})()

    def __init__(self):
        def field(x, sigma, ctx):
            return x[:, :LATENT_C] * 0 + x[:, LATENT_C:].mean(dim=(1, 2, 3, 4)).view(-1, 1, 1, 1, 1)

        super().__init__(field)
        self.keywords: list[dict] = []

    def forward(self, x, timestep, context, y, guidance=None, attention_mask=None, transformer_options=None, **kw):
        self.keywords.append(kw)
        v = super().forward(x, timestep, context, y, guidance, attention_mask, transformer_options)
        feat = kw.get("feat")
        return v if feat is None else v + feat.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


def image(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, IMAGE_C, *SHAPE[2:], generator=torch.Generator().manual_seed(seed))


def test_image_channels_reach_the_model_in_place_of_zeros():
    model = Conditioned()
    noise, channels = torch.randn(SHAPE), image()
    out = sample(model, noise, *text(), steps=3, image_channels=channels)
    for call in model.calls:
        assert call["x"].shape == (1, LATENT_C + IMAGE_C, *SHAPE[2:])
        assert torch.equal(call["x"][:, LATENT_C:], channels)
    # the velocity is the channels' mean at every step and the steps' dsigma sum to -1
    assert rel_l2(out, noise - channels.double().mean().float()) < 1e-6  # measured 2.4e-8 (fp32 rounding)
    zeros = sample(Conditioned(), noise, *text(), steps=3)  # text-to-video: zeros there
    assert torch.equal(zeros, noise)


def test_image_channels_follow_true_cfg():
    """Stacked CFG: the positive's channels then the negative's (the positive's when none are given)."""
    model = Conditioned()
    noise, pos_img, neg_img = torch.randn(SHAPE), image(seed=1), image(seed=2)
    out = sample(model, noise, *text(), steps=2, cfg=4.0, negative=TextCondition(*text()), image_channels=pos_img,
                 negative_image_channels=neg_img)
    assert len(model.calls) == 2  # one forward per step, batch 2
    assert torch.equal(model.calls[0]["x"][:, LATENT_C:], torch.cat([pos_img, neg_img]))
    v_pos, v_neg = pos_img.double().mean(), neg_img.double().mean()
    assert rel_l2(out, noise - (v_neg + 4.0 * (v_pos - v_neg)).float()) < 1e-6  # measured 3.6e-8
    model = Conditioned()
    sample(model, noise, *text(), steps=1, cfg=2.0, negative=TextCondition(*text()), image_channels=pos_img)
    assert torch.equal(model.calls[0]["x"][:, LATENT_C:], torch.cat([pos_img, pos_img]))


def test_negative_inputs_of_other_shape_run_as_a_second_forward():
    """A negative prompt without the positive's keyword input (1.5's byT5 tokens come with quoted text only): the two
    halves cannot stack, each step runs them one after the other and combines them as stacked CFG would."""
    model = Conditioned()
    noise, channels = torch.randn(SHAPE), image(seed=3)
    feat = torch.randn(1, 6, 5)
    pos, neg = text(tokens=5), text(tokens=2)
    out = sample(model, noise, *pos, steps=3, cfg=2.5, negative=TextCondition(*neg), image_channels=channels,
                 model_inputs={"feat": feat, "flag": False}, negative_model_inputs={"flag": False})
    assert len(model.calls) == 6 and [c["x"].shape[0] for c in model.calls] == [1] * 6
    assert [c["context"].shape[1] for c in model.calls[:2]] == [5, 2]  # each prompt unpadded, positive first
    assert model.calls[1]["mask"] is None
    assert [sorted(k) for k in model.keywords[:2]] == [["feat", "flag"], ["flag"]]
    assert model.keywords[0]["flag"] is False  # a flag passes as given
    v_neg = channels.double().mean()
    v_pos = v_neg + feat.double().mean()
    assert rel_l2(out, noise - (v_neg + 2.5 * (v_pos - v_neg)).float()) < 1e-6  # measured 4.6e-8


def test_same_inputs_on_both_halves_stack_into_one_forward():
    model = Conditioned()
    feat = torch.randn(1, 6, 5)
    sample(model, SHAPE, *text(), steps=1, cfg=2.0, negative=TextCondition(*text()), model_inputs={"feat": feat},
           image_channels=image())
    assert len(model.calls) == 1 and torch.equal(model.keywords[0]["feat"], torch.cat([feat, feat]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_channels=torch.zeros(1, IMAGE_C + 1, *SHAPE[2:])), r"image_channels has shape \(1, 4, 3, 4, 6\)"),
    (dict(image_channels=torch.zeros(1, IMAGE_C, 2, 4, 6)), r"takes 3 image-conditioning channels.*\(1, 3, 3, 4, 6\)"),
    (dict(image_channels=torch.zeros(2, IMAGE_C, *SHAPE[2:])), "at the latent's batch"),
    (dict(cfg=2.0, negative=TextCondition(*text()), negative_image_channels=torch.zeros(1, 1, *SHAPE[2:])),
     "negative image_channels"),
    (dict(model_inputs={"feat": torch.zeros(2, 6, 5)}), "model input 'feat' has shape .* batch 1"),
    (dict(model_inputs={"feat": torch.tensor(1.0)}), "batch first"),
    (dict(cfg=2.0, negative=TextCondition(*text()), negative_model_inputs={"feat": torch.zeros(3, 2)}),
     "negative model input 'feat'"),
    (dict(cfg=2.0, negative=TextCondition(*text(batch=2)), model_inputs={"feat": torch.zeros(1, 6, 5)},
          negative_model_inputs={}), r"negative prompt shape \(2, 5, 8\) does not match"),
    (dict(cfg=2.0, negative=TextCondition(*text(dim=6)), model_inputs={"feat": torch.zeros(1, 6, 5)},
          negative_model_inputs={}), "in batch or width"),
])
def test_bad_conditioning_inputs_rejected_before_any_model_call(kwargs, match):
    model = Conditioned()
    with pytest.raises(ValueError, match=match):
        sample(model, SHAPE, *text(), steps=1, **kwargs)
    assert model.calls == []


def test_image_channels_refused_for_a_model_without_them():
    model = Recorder(lambda x, sigma, ctx: torch.zeros_like(x))
    with pytest.raises(ValueError, match="takes 0 image-conditioning channels"):
        sample(model, SHAPE, *text(), steps=1, image_channels=image())
    assert model.calls == []


def test_image_channels_on_the_real_15_transformer():
    """Zeros given explicitly are text-to-video exactly; an image latent there changes the sample."""
    from hyvideo_fp8.hunyuan.config import tiny_variant_config
    from hyvideo_fp8.hunyuan.loader import build_random

    cfg = tiny_variant_config("1.5")
    model = build_random(cfg, None, seed=1)
    shape = (1, cfg.out_channels, 2, 4, 4)
    context, y = torch.randn(1, 3, cfg.context_in_dim), torch.zeros(1, 0)
    extra = cfg.in_channels - cfg.out_channels
    t2v = sample(model, shape, context, y, steps=2, guidance=None, seed=4)
    zeros = sample(model, shape, context, y, steps=2, guidance=None, seed=4,
                   image_channels=torch.zeros(1, extra, *shape[2:]))
    assert torch.equal(t2v, zeros)
    start = torch.randn(1, extra, *shape[2:], generator=torch.Generator().manual_seed(5))
    i2v = sample(model, shape, context, y, steps=2, guidance=None, seed=4, image_channels=start)
    assert torch.isfinite(i2v).all() and rel_l2(i2v, t2v) > 1e-2  # measured 0.12


# --- a masked latent (kept where the mask is 0) --------------------------------------------------------------------


def test_masked_latent_keeps_its_frames_and_denoises_the_rest():
    """On the straight path to ``target`` the sample is ``target`` where the mask is 1 and the kept latent where it is
    0; the model sees the kept latent there at every step, and the preview's clean estimate is the blend."""
    target, keep = torch.randn(SHAPE), torch.randn(SHAPE)
    mask = torch.ones(1, 1, *SHAPE[2:])
    mask[:, :, 0] = 0  # keep the first frame, as the image-to-video "replace" mode does
    model = Recorder(lambda x, sigma, ctx: (x - target) / sigma.view(-1, 1, 1, 1, 1))
    previews = []
    out = sample(model, SHAPE, *text(), steps=6, seed=2, denoise_mask=mask, keep_latent=keep,
                 callback=lambda i, n, x0: previews.append(x0))
    expected = target * mask + keep * (1 - mask)
    assert rel_l2(out, expected) < 1e-6  # measured below 5e-8 (fp32 rounding)
    assert all(torch.equal(c["x"][:, :, 0], keep[:, :, 0]) for c in model.calls)
    assert max(rel_l2(p, expected) for p in previews) < 1e-5
    unmasked = sample(Recorder(model.field), SHAPE, *text(), steps=6, seed=2, denoise_mask=torch.ones(1, 1, *SHAPE[2:]),
                      keep_latent=keep)
    assert rel_l2(unmasked, sample(Recorder(model.field), SHAPE, *text(), steps=6, seed=2)) < 1e-6


@pytest.mark.parametrize("kwargs, match", [
    (dict(denoise_mask=torch.ones(1, 1, *SHAPE[2:])), "go together"),
    (dict(keep_latent=torch.zeros(SHAPE)), "go together"),
    (dict(denoise_mask=torch.ones(1, 1, *SHAPE[2:]), keep_latent=torch.zeros(2, *SHAPE[1:])), "keep_latent has shape"),
    (dict(denoise_mask=torch.ones(1, 2, *SHAPE[2:]), keep_latent=torch.zeros(SHAPE)), r"denoise_mask has shape"),
    (dict(denoise_mask=torch.ones(1, 1, 2, 4, 6), keep_latent=torch.zeros(SHAPE)), r"\[1 or 1, 4 or 1, 3, 4, 6\]"),
])
def test_bad_masked_latent_rejected_before_any_model_call(kwargs, match):
    model = Recorder(lambda x, sigma, ctx: torch.zeros_like(x))
    with pytest.raises(ValueError, match=match):
        sample(model, SHAPE, *text(), steps=1, **kwargs)
    assert model.calls == []


# --- the node's latent checks (no ComfyUI needed) ------------------------------------------------------------------


@pytest.mark.parametrize("shape, match", [
    ((1, 32, 45, 80), r"\[batch, 32, frames, height/16, width/16\] from 'EmptyHunyuanVideo15Latent'"),
    ((1, 16, 3, 45, 80), "latent has 16 channels, the model takes 32: use 'EmptyHunyuanVideo15Latent' or "
                         "'HunyuanVideo15ImageToVideo' \\(32 channels\\)"),
])
def test_latent_check_names_the_15_latent(shape, match):
    from hyvideo_fp8.hunyuan.config import tiny_variant_config
    from hyvideo_fp8.nodes.sampler import check_latent

    cfg = tiny_variant_config("1.5")
    with pytest.raises(ValueError, match=match):
        check_latent(torch.zeros(shape), cfg.out_channels, cfg.patch_size, cfg.vae_spatial_compression)
    check_latent(torch.zeros(1, 32, 31, 45, 80), cfg.out_channels, cfg.patch_size, cfg.vae_spatial_compression)


def test_latent_entries_the_node_cannot_apply_are_named():
    from hyvideo_fp8.nodes.sampler import check_latent_entries

    check_latent_entries({"samples": torch.zeros(1), "downscale_ratio_spacial": 16, "noise_mask": torch.ones(1)}, {})
    with pytest.raises(ValueError, match="'batch_index'"):
        check_latent_entries({"samples": torch.zeros(1), "batch_index": [0]}, {})
    with pytest.raises(ValueError, match="denoise_mask_function"):
        check_latent_entries({"samples": torch.zeros(1), "noise_mask": torch.ones(1)},
                             {"denoise_mask_function": print})
