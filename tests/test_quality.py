"""Quality report: metrics against float64 closed forms, the plot, candidate parsing, and end-to-end runs on a
tiny model (reference vs itself is exactly zero, a broken FP8 candidate is flagged, numbers reproduce, the shared
MODEL is restored, ``tools.py quality`` writes its files)."""

import builtins
import io
import json
import logging
import math

import numpy as np
import pytest
import torch

from hyvideo_fp8.fp8.quantize import saturating_cast
from hyvideo_fp8.hunyuan.config import tiny_config
from hyvideo_fp8.hunyuan.loader import load_transformer, random_state_dict
from hyvideo_fp8.hunyuan.policies import PRESETS
from hyvideo_fp8.hunyuan.quality import (
    Candidate,
    QualityInputs,
    parse_candidate,
    parse_candidates,
    run_quality,
)
from hyvideo_fp8.hunyuan.quality_metrics import cosine, psnr, rel_l2, ssim
from hyvideo_fp8.hunyuan.quality_plot import PALETTE, PILLOW_MISSING, Series, line_plot, png_bytes


def run_quality_cli(argv: list[str]) -> int:
    """``tools.py quality ARGS`` in this process."""
    from hyvideo_fp8.hunyuan.cli import main

    return main(["quality", *argv])

CFG = tiny_config()
LATENT = (1, CFG.in_channels, 2, 4, 4)
STEPS = 3


# --- metrics ------------------------------------------------------------------------------------------------------

def test_rel_l2_and_cosine_match_float64_closed_form():
    rng = np.random.default_rng()
    ref = rng.standard_normal((3, 5, 7)).astype(np.float32)
    a = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    r64, a64 = ref.astype(np.float64).ravel(), a.astype(np.float64).ravel()
    assert rel_l2(a, ref) == pytest.approx(np.sqrt(((a64 - r64) ** 2).sum() / (r64**2).sum()), rel=1e-12)
    assert cosine(a, ref) == pytest.approx(a64 @ r64 / np.sqrt((a64 @ a64) * (r64 @ r64)), rel=1e-12)
    assert rel_l2(ref, ref) == 0.0 and cosine(ref, ref) == pytest.approx(1.0, abs=1e-12)


def test_metrics_never_call_nan_accurate():
    ref = np.random.default_rng().standard_normal((4, 4))
    bad = ref.copy()
    bad[1, 2] = np.nan
    assert rel_l2(bad, ref) == math.inf
    assert math.isnan(cosine(bad, ref))
    frames = np.random.default_rng().random((1, 16, 16, 3))
    broken = frames.copy()
    broken[0, 0, 0, 0] = np.inf
    assert psnr(broken, frames) == 0.0 and ssim(broken, frames) == 0.0


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        rel_l2(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"frames \[F, H, W, C\]"):
        psnr(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.ones((1, 8, 8, 3)), np.ones((1, 8, 8, 3)))


def test_psnr_closed_form():
    rng = np.random.default_rng()
    ref = rng.random((2, 12, 12, 3))
    noisy = ref + rng.choice([-0.01, 0.01], size=ref.shape)  # MSE exactly 1e-4 -> 40 dB
    assert psnr(noisy, ref) == pytest.approx(40.0, abs=1e-9)
    assert psnr(ref, ref) == math.inf


def _ssim_naive(x: np.ndarray, y: np.ndarray) -> float:
    """Per-window loop over an 11x11 Gaussian (float64), the textbook definition."""
    g1 = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g = np.outer(g1, g1) / np.outer(g1, g1).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(x.shape[2]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                a, b = x[i:i + 11, j:j + 11, ch], y[i:i + 11, j:j + 11, ch]
                ma, mb = (g * a).sum(), (g * b).sum()
                va, vb = (g * a * a).sum() - ma**2, (g * b * b).sum() - mb**2
                cov = (g * a * b).sum() - ma * mb
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_naive_window_loop():
    rng = np.random.default_rng()
    ref = rng.random((16, 15, 3))
    noisy = np.clip(ref + 0.3 * rng.standard_normal(ref.shape), 0, 1)
    expected = _ssim_naive(noisy, ref)
    assert ssim(noisy, ref) == pytest.approx(expected, rel=1e-10)  # measured: equal to ~1e-15
    assert expected < 0.9  # measured 0.58-0.73 over 20 draws: the comparison is not vacuous
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)


# --- plot ---------------------------------------------------------------------------------------------------------

def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return np.asarray(img).copy()


def test_plot_png_round_trip_and_draws_every_series():
    values = [0.0, 1e-3, 0.02, math.inf]
    img = line_plot([Series("a", values, PALETTE[0]), Series("budget", [0.05] * 4, PALETTE[1], dashed=True)],
                    "title 0123")
    assert img.shape == (420, 800, 3) and img.dtype == np.uint8
    assert (img == PALETTE[0]).all(axis=2).sum() > 100 and (img == PALETTE[1]).all(axis=2).sum() > 50
    np.testing.assert_array_equal(_decode_png(png_bytes(img)), img)
    with pytest.raises(ValueError, match="at least one series"):
        line_plot([], "t")
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        png_bytes(img.astype(np.float32))


def test_without_pillow_the_report_is_written_and_the_plot_left_out(tmp_path, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_pillow(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    _, model = _bf16_model()
    report = run_quality(model, _inputs(), [Candidate(PRESETS["fp8-weight-only"])], with_noise_floor=False)
    monkeypatch.setattr(builtins, "__import__", no_pillow)
    with pytest.raises(ImportError, match="pip install pillow"):
        report.plot()
    with caplog.at_level(logging.WARNING, logger="hyvideo_fp8"):
        paths = report.save(tmp_path)
    assert sorted(paths) == ["json", "text"] and PILLOW_MISSING in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.txt"]


# --- candidates ---------------------------------------------------------------------------------------------------

def test_parse_candidates_options_and_errors():
    c = parse_candidate("fp8-max+hybrid=2/1+attention=sdpa+budget=0.5")
    assert c.hybrid == (2, 1) and c.policy.attention == "sdpa" and c.policy.error_budget == 0.5
    assert c.name == "fp8-max+hybrid=2/1+attention=sdpa+budget=0.5"
    assert [x.name for x in parse_candidates("fp8-balanced, fp8-max\nbf16")] == ["fp8-balanced", "fp8-max", "bf16"]
    json_line = PRESETS["fp8-max"].with_overrides(name="mine").to_json().replace("\n", " ")
    assert parse_candidates(json_line)[0].name == "mine"
    with pytest.raises(ValueError, match="unknown option 'speed'"):
        parse_candidate("fp8-max+speed=11")
    with pytest.raises(ValueError, match="hybrid"):
        parse_candidate("fp8-max+hybrid=a/b")
    with pytest.raises(ValueError, match="not a preset name"):
        parse_candidate("fp8-maxx")
    with pytest.raises(ValueError, match="no candidate policies"):
        parse_candidates(" \n ")


# --- end to end ---------------------------------------------------------------------------------------------------

def _inputs(seed: int = 0) -> QualityInputs:
    gen = torch.Generator().manual_seed(1234)
    ctx = torch.randn(1, 6, CFG.context_in_dim, generator=gen)
    y = torch.randn(1, CFG.vec_in_dim, generator=gen)
    return QualityInputs(ctx, y, LATENT, seed=seed, steps=STEPS)


def _fake_vae(latent: torch.Tensor) -> np.ndarray:
    """A fixed smooth map latent -> 16x16 RGB frames in 0..1 (enough for PSNR/SSIM plumbing)."""
    x = latent[0, :3].permute(1, 0, 2, 3)  # [T, 3, h, w]
    return torch.sigmoid(torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear")).permute(0, 2, 3, 1).numpy()


def _bf16_model(scale: float = 1.0):
    sd = random_state_dict(CFG, seed=7)
    if scale != 1.0:
        sd = {k: v * scale if v.dim() == 2 or k.endswith(".bias") else v for k, v in sd.items()}
    return sd, load_transformer(dict(sd), PRESETS["bf16"], config=CFG)


def test_reference_against_itself_is_exactly_zero():
    _, model = _bf16_model()
    report = run_quality(model, _inputs(), [Candidate(PRESETS["bf16"])], vae_decode=_fake_vae,
                         with_noise_floor=False)
    (run,) = report.candidates
    assert run.step_rel_l2 == [0.0] * STEPS and run.one_step_rel_l2 == [0.0] * STEPS
    assert run.final_rel_l2 == 0.0 and run.final_cosine == pytest.approx(1.0, abs=1e-12)
    assert run.psnr_db == math.inf and run.ssim == pytest.approx(1.0, abs=1e-12)
    assert run.verdict.startswith("PASS: identical")
    json.loads(report.to_json(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_broken_unscaled_fp8_candidate_is_flagged_and_scaled_fp8_passes():
    # Linear weights and biases ~2e-4 (N(0, 0.02) * 1e-2): e4m3fn's smallest subnormal is 2^-9 ~ 2e-3, so casting
    # them without a scale flushes nearly all to zero; the per-channel scaled FP8 of the same weights is fine.
    sd, _ = _bf16_model(scale=1e-2)
    broken = PRESETS["fp8-max"].with_overrides(name="unscaled", attention="sdpa")

    def factory(policy):
        if policy.name != "unscaled":
            return load_transformer(dict(sd), policy, config=CFG)
        cast = {k: saturating_cast(v, torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in sd.items()}
        return load_transformer(cast, policy, config=CFG)  # no weight_scale: the loader uses scale 1

    good = Candidate(PRESETS["fp8-max"].with_overrides(attention="sdpa"))
    report = run_quality(factory, _inputs(), [good, Candidate(broken)], with_noise_floor=False)
    good, bad = report.candidates
    assert good.verdict.startswith("PASS") and max(good.one_step_rel_l2) < 0.12  # measured 0.036
    assert bad.verdict.startswith("FAIL") and max(bad.one_step_rel_l2) > 0.5  # measured 0.986
    assert "fresh per run" in report.setup["weights"]


def test_nonfinite_candidate_is_broken_and_nonfinite_reference_is_refused():
    sd, _ = _bf16_model()

    def factory(policy):
        model = load_transformer(dict(sd), policy, config=CFG)
        if policy.name == "poisoned":
            with torch.no_grad():
                model.final_layer.linear.bias.fill_(float("nan"))
        return model

    poisoned = PRESETS["bf16"].with_overrides(name="poisoned", error_budget=0.1)
    report = run_quality(factory, _inputs(), [Candidate(poisoned)], with_noise_floor=False)
    assert report.candidates[0].verdict == "BROKEN: non-finite model output at step 0"
    with pytest.raises(ValueError, match="reference .* non-finite"):
        run_quality(factory, _inputs(), [Candidate(PRESETS["bf16"])], reference=poisoned, with_noise_floor=False)


def test_numbers_reproduce_and_shared_weights_restore_the_model():
    _, model = _bf16_model()
    layers_before = {n: m for n, m in model.named_modules()}
    x = torch.randn(LATENT)
    t, ctx, y = torch.tensor([500.0]), _inputs().context, _inputs().y
    with torch.no_grad():
        out_before = model(x, t, ctx, y, guidance=torch.tensor([6.0]))
    cands = [Candidate(PRESETS["fp8-max"].with_overrides(attention="sdpa")), Candidate(PRESETS["bf16"])]
    first = run_quality(model, _inputs(), cands).to_dict()
    second = run_quality(model, _inputs(), cands).to_dict()
    for d in (first, second):
        for run in [d["reference"], d["noise_floor"], *d["candidates"]]:
            run.pop("wall_s")
    assert first == second
    assert {n: m for n, m in model.named_modules()} == layers_before and model.policy is PRESETS["bf16"]
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx, y, guidance=torch.tensor([6.0])), out_before, rtol=0, atol=0)
    fp8 = first["candidates"][0]
    assert 0 < max(fp8["one_step_rel_l2"]) < 0.12  # measured 0.037 on this model
    assert 0 < max(first["noise_floor"]["one_step_rel_l2"]) < max(fp8["one_step_rel_l2"])  # floor measured 3.7e-4
    assert first["candidates"][1]["step_rel_l2"] == [0.0] * STEPS


def test_shared_weights_refuse_settings_one_model_cannot_hold():
    _, model = _bf16_model()
    e5m2 = PRESETS["fp8-max"].with_overrides(name="e5m2", fp8_format="e5m2")
    with pytest.raises(ValueError, match="differ in fp8_format"):
        run_quality(model, _inputs(), [Candidate(PRESETS["fp8-max"]), Candidate(e5m2)])
    with pytest.raises(ValueError, match="must be unique"):
        run_quality(model, _inputs(), [Candidate(PRESETS["bf16"]), Candidate(PRESETS["bf16"])])


def test_cli_writes_report_files(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in random_state_dict(CFG, seed=3).items()}, str(ckpt))
    out = tmp_path / "report"
    rc = run_quality_cli([str(ckpt), "--policies", "bf16,fp8-weight-only", "--steps", "2", "--size", "32x32x5",
                          "--tokens", "5", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    assert [c["name"] for c in data["candidates"]] == ["bf16", "fp8-weight-only"]
    assert data["setup"]["latent"] == [1, 16, 2, 4, 4]
    assert data["candidates"][1]["verdict"].startswith("PASS")
    assert _decode_png((out / "error_per_step.png").read_bytes()).shape == (420, 800, 3)
    assert "verdicts:" in (out / "report.txt").read_text()


@pytest.mark.parametrize("variant", ["1.5", "v1-i2v"])
def test_cli_reports_on_image_conditioned_family_members(tmp_path, variant):
    """1.5 and v1 image-to-video checkpoints: the latent has the model's output channels (1.5: 32, 16x spatial VAE)
    and the image-conditioning channels get zeros, as ComfyUI's text-to-video does; the report is finite."""
    from safetensors.torch import save_file

    from hyvideo_fp8.hunyuan.config import tiny_variant_config

    cfg = tiny_variant_config(variant)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in random_state_dict(cfg, seed=4).items()}, str(ckpt))
    out = tmp_path / "report"
    rc = run_quality_cli([str(ckpt), "--policies", "fp8-max", "--steps", "2", "--size", "64x64x5", "--tokens", "5",
                          "--out", str(out), "--device", "cpu"])
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    spatial = 64 // cfg.vae_spatial_compression
    assert data["setup"]["latent"] == [1, cfg.out_channels, 2, spatial, spatial]
    errors = data["candidates"][0]["one_step_rel_l2"]
    assert data["candidates"][0]["nonfinite_step"] is None
    assert all(math.isfinite(e) for e in errors) and max(errors) > 0  # FP8 really ran, and stayed finite


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "report"
    assert run_quality_cli([str(tmp_path / "none.safetensors"), "--size", "30x32x5", "--out", str(out)]) == 2
    assert "multiples of 16" in capsys.readouterr().err
    assert not out.exists()


def test_cli_on_an_fp8_checkpoint_says_the_reference_carries_its_rounding(tmp_path):
    from safetensors.torch import save_file

    from hyvideo_fp8.hunyuan.checkpoint.convert import convert_checkpoint

    src, dst, out = tmp_path / "bf16.safetensors", tmp_path / "fp8.safetensors", tmp_path / "report"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in random_state_dict(CFG, seed=5).items()}, str(src))
    convert_checkpoint(src, dst, PRESETS["fp8-weight-only"])
    rc = run_quality_cli([str(dst), "--policies", "fp8-weight-only", "--steps", "2", "--size", "32x32x1",
                          "--no-floor", "--out", str(out), "--device", "cpu"])
    data = json.loads((out / "report.json").read_text())
    assert rc == 0 and data["noise_floor"] is None
    assert data["reference"]["rounded_high_precision_layers"] > 0 and "NOT measured" in data["notes"][0]
    # the file's FP8 weights are in both runs and weight-only computes exactly like the reference's bf16 mode
    # (dequantize, then a bf16 matmul): the report must show no error, not invent one
    assert data["candidates"][0]["one_step_rel_l2"] == [0.0, 0.0]
