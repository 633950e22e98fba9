"""FP8 against bf16 on the user's own checkpoint and prompt: the same sampling (seed, noise, conditioning, steps,
shift, guidance) under a reference policy and each candidate, compared step by step.

Weights, one model in memory (``run_quality(model, ...)``): the model is switched between policies with
``set_policy``. The reference and the noise floor run first, while every layer still holds the weights the model was
loaded with, so a model loaded in bf16 gives an exact reference. Candidates then run in order of increasing FP8
coverage and ``set_policy`` quantizes a layer the first time a candidate needs it. A layer an earlier candidate
quantized but a later one keeps in high precision computes from the FP8 weight; the report counts those per run.
``restore=True`` (the ComfyUI node, whose MODEL the rest of the workflow shares) puts the original layers, modes
and policy back afterwards, keeping the replaced layers alive until then.

Fresh weights (``run_quality(factory, ...)`` with ``factory(policy) -> model``; the CLI's ``--exact-reference``):
every run builds its own model, so no run carries another's rounding; one load per run, one model at a time.

``checkpoint_quality`` runs the report on a checkpoint file (``tools.py quality``, whose options live in
``hunyuan/cli.py``).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ContextManager

import numpy as np
import torch
from torch import Tensor, nn

from ..fp8.formats import HIGH_PRECISION_DTYPES, ComputeMode
from ..fp8.linear import FP8Linear
from ..fp8.policy import PrecisionPolicy, Rule
from .policies import PRESETS, load_policy
from .quality_metrics import cosine, psnr, rel_l2, ssim
from .quality_report import QualityReport, RunResult, verdict
from .sampler import (
    DEFAULT_GUIDANCE,
    DEFAULT_SHIFT,
    NonFiniteStepError,
    default_high_precision,
    initial_noise,
    precision_plan,
    sample,
)

__all__ = ["Candidate", "QualityInputs", "parse_candidate", "parse_candidates", "run_quality", "storage_policy",
           "noise_floor", "parse_size", "checkpoint_quality", "CANDIDATE_OPTIONS"]

FP8_MODES = (ComputeMode.FP8, ComputeMode.FP8_WEIGHT_ONLY)
HIGH_MODES = (ComputeMode.BF16, ComputeMode.FP32)
CANDIDATE_OPTIONS = "hybrid=N/M, attention=sdpa|fp8, boundary=N, budget=X"

VaeDecode = Callable[[Tensor], np.ndarray]
StepCallback = Callable[[int, int, Tensor], None]


# --- what is compared ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A policy plus the hybrid schedule (first/last steps in high precision on the same weights)."""

    policy: PrecisionPolicy
    hybrid: tuple[int, int] = (0, 0)
    name: str = ""

    def __post_init__(self) -> None:
        precision_plan(1, self.hybrid)  # validates the pair
        object.__setattr__(self, "hybrid", tuple(self.hybrid))
        if not self.name:
            suffix = f"+hybrid={self.hybrid[0]}/{self.hybrid[1]}" if any(self.hybrid) else ""
            object.__setattr__(self, "name", self.policy.name + suffix)


def parse_candidate(spec: str) -> Candidate:
    """``PRESET_OR_FILE[+key=value...]`` (keys: hybrid=N/M, attention, boundary, budget) or a policy JSON object."""
    spec = spec.strip()
    if spec.startswith("{"):
        return Candidate(load_policy(spec))
    base, *options = spec.split("+")
    policy = load_policy(base.strip())
    hybrid = (0, 0)
    for option in options:
        key, sep, value = (s.strip() for s in option.partition("="))
        try:
            if not sep:
                raise ValueError("missing '='")
            if key == "hybrid":
                first, _, last = value.partition("/")
                hybrid = (int(first), int(last or 0))
            elif key == "attention":
                policy = policy.with_overrides(attention=value)
            elif key == "boundary":
                policy = policy.with_overrides(high_precision_boundary_blocks=int(value))
            elif key == "budget":
                policy = policy.with_overrides(error_budget=float(value))
            else:
                raise ValueError(f"unknown option {key!r}")
        except ValueError as e:
            raise ValueError(f"candidate {spec!r}, option {option!r}: {e}; options are {CANDIDATE_OPTIONS}") from None
    return Candidate(policy, hybrid, name=spec)


def parse_candidates(text: str) -> list[Candidate]:
    """One candidate per line or comma-separated; a line starting with ``{`` is one policy JSON object."""
    specs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        specs += [line] if line.startswith("{") else [s for s in (p.strip() for p in line.split(",")) if s]
    if not specs:
        raise ValueError(f"no candidate policies given: name presets ({', '.join(PRESETS)}), policy JSON files or "
                         f"JSON objects, optionally with +{CANDIDATE_OPTIONS.replace(', ', ' +')}")
    return [parse_candidate(s) for s in specs]


@dataclass(frozen=True)
class QualityInputs:
    """The sampling every run repeats: prompt tensors, latent shape, seed and schedule."""

    context: Tensor
    y: Tensor
    latent_shape: tuple[int, ...]
    attention_mask: Tensor | None = None
    seed: int = 0
    steps: int = 8
    shift: float = DEFAULT_SHIFT
    guidance: float | None = DEFAULT_GUIDANCE
    conditioning: str = "given"
    model_inputs: Mapping[str, Tensor] = field(default_factory=dict)  # 1.5's txt_byt5 / clip_fea, batch first
    image_channels: Tensor | None = None  # image-to-video: the model's image-conditioning input channels (else zeros)

    def __post_init__(self) -> None:
        if len(self.latent_shape) != 5:
            raise ValueError(f"latent shape must be [batch, channels, frames, height, width], got {self.latent_shape}")
        if self.context.shape[0] != self.latent_shape[0]:
            raise ValueError(f"conditioning batch {self.context.shape[0]} does not match the latent batch "
                             f"{self.latent_shape[0]}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")


# --- one run ------------------------------------------------------------------------------------------------------

@dataclass
class _Trace:
    """What the reference's model saw and returned at every step (inputs kept for the one-step replays)."""

    inputs: list[tuple[tuple, dict]] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)


class _StepRecorder:
    """Forward hook: records the reference's calls, or compares another run's outputs with them step by step."""

    def __init__(self, reference: _Trace | None) -> None:
        self.reference = reference
        self.trace = _Trace()
        self.rel: list[float] = []
        self.cos: list[float] = []
        self.nonfinite_step: int | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        out = output.detach().float().cpu().numpy()
        step = len(self.rel) if self.reference is not None else len(self.trace.outputs)
        if self.nonfinite_step is None and not np.isfinite(out).all():
            self.nonfinite_step = step
        if self.reference is None:
            x, t, *rest = args
            options = dict(kwargs.get("transformer_options") or {})
            self.trace.inputs.append(((x.detach().cpu(), t.detach().cpu(), *rest),
                                      {**kwargs, "transformer_options": options}))
            self.trace.outputs.append(out)
            return
        if step >= len(self.reference.outputs):
            raise RuntimeError(f"this run called the model {step + 1} times, the reference only "
                               f"{len(self.reference.outputs)}: the runs do not share one sampling schedule")
        self.rel.append(rel_l2(out, self.reference.outputs[step]))
        self.cos.append(cosine(out, self.reference.outputs[step]))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample_recorded(model: nn.Module, inputs: QualityInputs, noise: Tensor, hybrid: tuple[int, int],
                     recorder: _StepRecorder, callback: StepCallback | None) -> tuple[Tensor, float, int | None]:
    """One sampling run under the recorder: (final latent on the CPU, wall seconds, peak CUDA bytes or None)."""
    device = _device(model)
    handle = model.register_forward_hook(recorder, with_kwargs=True)
    try:
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            latent = sample(model, noise.clone(), inputs.context, inputs.y, attention_mask=inputs.attention_mask,
                            steps=inputs.steps, shift=inputs.shift, guidance=inputs.guidance, seed=inputs.seed,
                            hybrid=hybrid, callback=callback, device=device, model_inputs=inputs.model_inputs,
                            image_channels=inputs.image_channels)
        except NonFiniteStepError:
            if recorder.nonfinite_step is None:
                raise
            latent = torch.full(noise.shape, float("nan"))  # the sampler stopped: the run is reported BROKEN
        _sync(device)
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    finally:
        handle.remove()
    return latent.cpu(), wall, peak


@torch.no_grad()
def _one_step_errors(model: nn.Module, trace: _Trace, hybrid: tuple[int, int]) -> list[float]:
    """The model (in this run's mode for each step) on the reference's input of each step, against its output."""
    device = _device(model)
    plan = precision_plan(len(trace.inputs), hybrid)
    errors = []
    for i, ((x, t, *rest), kwargs) in enumerate(trace.inputs):
        with default_high_precision(model) if plan[i] else contextlib.nullcontext():
            out = model(x.to(device), t.to(device), *rest, **kwargs)
        errors.append(rel_l2(out.float().cpu().numpy(), trace.outputs[i]))
    return errors


def _decode(vae_decode: VaeDecode, latent: Tensor) -> np.ndarray:
    frames = np.asarray(vae_decode(latent), dtype=np.float64)
    if frames.ndim == 5:
        frames = frames.reshape(-1, *frames.shape[2:])
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"the VAE decode must return frames [F, H, W, 3] in 0..1, got shape {frames.shape}")
    return frames


# --- the noise floor ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _sdpa_flash_not_cudnn() -> Iterator[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .attention import cuda_sdpa_priority

    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with cuda_sdpa_priority(order), sdpa_kernel(order):
        yield


def noise_floor(device: torch.device) -> tuple[Callable[[], ContextManager], str]:
    """(context factory, description) of the bf16-vs-bf16 kernel swap the floor run uses on ``device``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type == "cuda":
        return _sdpa_flash_not_cudnn, ("the bf16 reference again with SDPA on flash-attention (memory-efficient "
                                       "where a padding mask is used) instead of cuDNN")
    return (lambda: sdpa_kernel([SDPBackend.MATH])), ("the bf16 reference again with PyTorch's SDPA math backend "
                                                      "instead of its fused CPU flash kernel")


# --- weights ------------------------------------------------------------------------------------------------------

def _linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FP8Linear) or type(m) is nn.Linear}


def _block_order(model: nn.Module) -> list[str]:
    config = getattr(model, "config", None)
    return config.block_order() if config is not None else []


def _fp8_coverage(model: nn.Module, policy: PrecisionPolicy) -> int:
    order = _block_order(model)
    return sum(policy.mode_for(n, order) in FP8_MODES for n in _linears(model))


def _layer_counts(model: nn.Module) -> tuple[int, int]:
    """(linears computing in an FP8 mode, FP8-stored linears computing in high precision) right now."""
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    return sum(m.mode in FP8_MODES for m in layers), sum(m.mode in HIGH_MODES for m in layers)


def _fp8_settings(policy: PrecisionPolicy) -> tuple[str, str, str]:
    return policy.fp8_format, policy.activation_scaling, policy.compute_dtype


def _check_shared(model: nn.Module, candidates: Sequence[Candidate]) -> None:
    """Refuse comparisons that shared weights would silently falsify: an FP8 layer keeps the format, activation
    scaling and compute dtype it was built with, whatever a later policy says."""
    order = _block_order(model)
    names = ("fp8_format", "activation_scaling", "compute_dtype")
    fp8_candidates = [c for c in candidates if _fp8_coverage(model, c.policy)]
    for c in fp8_candidates[1:]:
        first = fp8_candidates[0]
        for what, a, b in zip(names, _fp8_settings(first.policy), _fp8_settings(c.policy)):
            if a != b:
                raise ValueError(f"candidates {first.name!r} and {c.name!r} differ in {what} ({a} vs {b}), which "
                                 "one shared set of FP8 weights cannot represent: compare them in separate reports "
                                 "or with fresh weights per run (CLI --exact-reference)")
    for c in fp8_candidates:
        for name, layer in _linears(model).items():
            if not isinstance(layer, FP8Linear) or c.policy.mode_for(name, order) not in FP8_MODES:
                continue
            held = (layer.fp8_format, layer.activation_scaling, layer.compute_dtype)
            wanted = (c.policy.fp8_format, c.policy.activation_scaling, HIGH_PRECISION_DTYPES[c.policy.compute_dtype])
            for what, h, w in zip(names, held, wanted):
                if h != w:
                    raise ValueError(f"candidate {c.name!r} wants {what} {w} but the model's layer {name} was built "
                                     f"with {h}: load the model under that policy, or compare with fresh weights per "
                                     "run (CLI --exact-reference)")


class _SharedModel:
    """One model switched between policies; optionally restored exactly afterwards."""

    fresh = False

    def __init__(self, model: nn.Module, restore: bool) -> None:
        if not hasattr(model, "set_policy"):
            raise ValueError(f"{type(model).__name__} has no set_policy: the quality report needs a "
                             "HunyuanVideoTransformer (hunyuan.loader.load_transformer or the FP8 loader node)")
        self.model = model
        self._policy = getattr(model, "policy", None)
        self._layers = _linears(model) if restore else {}
        self._modes = {n: m.mode for n, m in self._layers.items() if isinstance(m, FP8Linear)}

    @contextlib.contextmanager
    def use(self, policy: PrecisionPolicy) -> Iterator[nn.Module]:
        self.model.set_policy(policy)
        yield self.model

    def close(self) -> None:
        if not self._layers:
            return
        for name, layer in self._layers.items():
            parent, _, child = name.rpartition(".")
            owner = self.model.get_submodule(parent)
            if getattr(owner, child) is not layer:
                setattr(owner, child, layer)
            if name in self._modes:
                layer.mode = self._modes[name]
        self.model.policy = self._policy


class _FreshModels:
    """A new model per run from ``factory(policy)``, released before the next one is built."""

    fresh = True

    def __init__(self, factory: Callable[[PrecisionPolicy], nn.Module]) -> None:
        self.factory = factory

    @contextlib.contextmanager
    def use(self, policy: PrecisionPolicy) -> Iterator[nn.Module]:
        model = self.factory(policy)
        try:
            yield model
        finally:
            device = _device(model)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def close(self) -> None:
        pass


def _has_fp8(policy: PrecisionPolicy) -> bool:
    return any(m in FP8_MODES for m in [policy.default_mode, *(r.mode for r in policy.rules)])


def storage_policy(fp8_layers: Sequence[str], candidates: Sequence[Candidate]) -> PrecisionPolicy:
    """The policy to load a checkpoint under for one shared model: FP8 storage (weight-only) exactly on the layers
    the file stores in FP8, so their weights are used as they are; high precision elsewhere, so the reference is as
    exact as the file allows and candidates quantize the rest on demand. FP8 settings follow the first FP8 candidate
    (``run_quality`` refuses candidates whose settings differ)."""
    base = next((c.policy for c in candidates if _has_fp8(c.policy)), PRESETS["bf16"])
    return PrecisionPolicy(name="quality-storage", description="FP8 where the checkpoint stores FP8",
                           rules=[Rule(n, ComputeMode.FP8_WEIGHT_ONLY) for n in fp8_layers],
                           default_mode=ComputeMode(base.compute_dtype), fp8_format=base.fp8_format,
                           activation_scaling=base.activation_scaling, compute_dtype=base.compute_dtype)


# --- the report ---------------------------------------------------------------------------------------------------

def _describe(policy: PrecisionPolicy, hybrid: tuple[int, int]) -> str:
    s = (f"policy {policy.name}: default {policy.default_mode.value}, {len(policy.rules)} rules, attention "
         f"{policy.attention}, boundary blocks {policy.high_precision_boundary_blocks}")
    if _has_fp8(policy):
        s += f", {policy.fp8_format} weights, {policy.activation_scaling} activations"
    return s + (f", hybrid first {hybrid[0]} / last {hybrid[1]} steps in {policy.compute_dtype}" if any(hybrid) else "")


def _compare(run: RunResult, recorder: _StepRecorder, latent: Tensor, ref_latent: Tensor,
             frames: np.ndarray | None, ref_frames: np.ndarray | None) -> None:
    run.step_rel_l2, run.step_cosine, run.nonfinite_step = recorder.rel, recorder.cos, recorder.nonfinite_step
    run.final_rel_l2 = rel_l2(latent.numpy(), ref_latent.numpy())
    run.final_cosine = cosine(latent.numpy(), ref_latent.numpy())
    if frames is not None and ref_frames is not None:
        run.psnr_db, run.ssim = psnr(frames, ref_frames), ssim(frames, ref_frames)


def run_quality(
    model: nn.Module | Callable[[PrecisionPolicy], nn.Module],
    inputs: QualityInputs,
    candidates: Sequence[Candidate],
    *,
    reference: PrecisionPolicy | None = None,
    vae_decode: VaeDecode | None = None,
    with_noise_floor: bool = True,
    restore: bool = True,
    step_callback: StepCallback | None = None,
    on_run: Callable[[int, int, str], None] | None = None,
    setup: dict | None = None,
) -> QualityReport:
    """Sample under the reference, the noise floor and every candidate; compare; return the report.

    Args:
        model: one model shared by all runs (see the module docstring), or a factory ``policy -> model`` for fresh
            weights per run.
        reference: the reference policy (default: the ``bf16`` preset).
        vae_decode: ``latent -> frames [F, H, W, 3]`` in 0..1 (model latent space in); enables PSNR/SSIM.
        restore: shared model only: put the original layers, modes and policy back at the end.
        step_callback: passed to the sampler of every run (progress; raise from it to interrupt).
        on_run: ``(run index, number of runs, name)`` before each run.
        setup: extra lines for the report header (checkpoint path, ...).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no candidate policies to compare with the reference")
    names = [c.name for c in candidates]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"candidate names must be unique, {dupes} repeat(s)")
    reference = reference or PRESETS["bf16"]
    source = _FreshModels(model) if not isinstance(model, nn.Module) else _SharedModel(model, restore)
    order = candidates
    if isinstance(source, _SharedModel):
        _check_shared(source.model, candidates)
        order = sorted(candidates, key=lambda c: _fp8_coverage(source.model, c.policy))
    total = 1 + int(with_noise_floor) + len(candidates)
    noise = initial_noise(inputs.latent_shape, inputs.seed)
    results: dict[str, RunResult] = {}
    floor_run: RunResult | None = None
    floor_text = ""
    total_linears = 0
    try:
        with source.use(reference) as m:
            device = _device(m)
            total_linears = len(_linears(m))
            if on_run:
                on_run(0, total, "reference")
            rec = _StepRecorder(None)
            ref_latent, wall, peak = _sample_recorded(m, inputs, noise, (0, 0), rec, step_callback)
            if rec.nonfinite_step is not None:
                raise ValueError(f"the reference ({reference.name}) produced non-finite model output at step "
                                 f"{rec.nonfinite_step}: the checkpoint or the inputs are broken, nothing to compare "
                                 "against")
            trace = rec.trace
            fp8_now, rounded = _layer_counts(m)
            ref_run = RunResult("reference", "reference", _describe(reference, (0, 0)), wall_s=wall,
                                peak_memory_bytes=peak, fp8_layers=fp8_now, rounded_high_precision_layers=rounded)
            ref_frames = _decode(vae_decode, ref_latent) if vae_decode else None
            if with_noise_floor:
                floor_context, floor_text = noise_floor(device)
                if on_run:
                    on_run(1, total, "noise floor")
                rec = _StepRecorder(trace)
                with floor_context():
                    latent, wall, peak = _sample_recorded(m, inputs, noise, (0, 0), rec, step_callback)
                    one_step = _one_step_errors(m, trace, (0, 0))
                floor_run = RunResult("noise floor", "floor", floor_text, wall_s=wall, peak_memory_bytes=peak,
                                      one_step_rel_l2=one_step)
                _compare(floor_run, rec, latent, ref_latent,
                         _decode(vae_decode, latent) if vae_decode else None, ref_frames)
        for k, cand in enumerate(order):
            if on_run:
                on_run(1 + int(with_noise_floor) + k, total, cand.name)
            with source.use(cand.policy) as m:
                rec = _StepRecorder(trace)
                latent, wall, peak = _sample_recorded(m, inputs, noise, cand.hybrid, rec, step_callback)
                fp8_now, rounded = _layer_counts(m)
                family = getattr(getattr(m, "config", None), "family", None)
                run = RunResult(cand.name, "candidate", _describe(cand.policy, cand.hybrid),
                                budget=cand.policy.budget_for(family), hybrid=cand.hybrid, wall_s=wall,
                                peak_memory_bytes=peak, fp8_layers=fp8_now, rounded_high_precision_layers=rounded,
                                one_step_rel_l2=_one_step_errors(m, trace, cand.hybrid))
                _compare(run, rec, latent, ref_latent, _decode(vae_decode, latent) if vae_decode else None,
                         ref_frames)
                results[cand.name] = run
    finally:
        source.close()
    runs = [results[c.name] for c in candidates]
    for run in runs:
        run.verdict = verdict(run, floor_run)
    header = {
        **(setup or {}),
        "latent": list(inputs.latent_shape), "steps": inputs.steps, "shift": inputs.shift,
        "guidance": inputs.guidance, "seed": inputs.seed, "conditioning": inputs.conditioning,
        "device": str(device), "reference": _describe(reference, (0, 0)),
        "weights": "fresh per run" if source.fresh else "one shared model",
    }
    notes = _notes(source.fresh, ref_run, floor_run, runs, [c.name for c in order], total_linears, vae_decode)
    return QualityReport(setup=header, notes=notes, reference=ref_run, floor=floor_run, candidates=runs)


def _notes(fresh: bool, ref: RunResult, floor: RunResult | None, runs: list[RunResult], order: list[str],
           total_linears: int, vae_decode: VaeDecode | None) -> list[str]:
    """The caveats a reader needs to trust (or discount) the numbers."""
    notes = []
    if ref.rounded_high_precision_layers:
        notes.append(f"The reference computes {ref.rounded_high_precision_layers} of {total_linears} linear layers in "
                     "bf16 from FP8-stored weights (the model was loaded with FP8 weights): their weight rounding "
                     "is in the reference too and is NOT measured. Load the model with the bf16 preset from a bf16 "
                     "checkpoint for an exact reference.")
    else:
        notes.append("The reference runs on the model's own high-precision weights: exact bf16, no FP8 rounding.")
    if fresh:
        notes.append("Every run loaded its own weights: no run carries another's quantization.")
    else:
        notes.append(f"One shared set of weights; candidates ran in the order {order} (increasing FP8 coverage), each "
                     "layer quantized the first time a candidate needed it.")
        for r in runs:
            if r.rounded_high_precision_layers > ref.rounded_high_precision_layers:
                extra = r.rounded_high_precision_layers - ref.rounded_high_precision_layers
                notes.append(f"{r.name}: {extra} layers it keeps in high precision compute from FP8 weights an "
                             "earlier candidate made, so its error includes their weight rounding (report it alone, "
                             "or use fresh weights, to exclude that).")
    if floor is not None:
        notes.append(f"Noise floor: {floor.description}. Errors at or below it cannot be told from kernel noise.")
    notes.append("'1-step max': the largest error of one step computed on the reference's own input at that step "
                 "(what a policy's error_budget bounds; the verdict uses it). 'last step' and the plot follow each "
                 "run's own trajectory, so they include drift accumulated over the steps. 'final lat.': final latent "
                 "vs the reference latent. All errors are relative L2 ||x - ref|| / ||ref||.")
    if vae_decode is None:
        notes.append("No VAE: PSNR/SSIM of decoded frames not computed.")
    else:
        notes.append("PSNR: one MSE over all decoded frames (0..1 range); SSIM: Gaussian 11x11, sigma 1.5, mean over "
                     "frames and RGB channels.")
    if ref.peak_memory_bytes is None:
        notes.append("Peak memory is measured on CUDA only (torch.cuda.max_memory_allocated), not on the CPU.")
    return notes


# --- a checkpoint file -------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int, int]:
    """``WIDTHxHEIGHTxFRAMES`` in pixels, checked against what HunyuanVideo's VAE and patches take."""
    try:
        w, h, f = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be WIDTHxHEIGHTxFRAMES in pixels, e.g. 256x256x9; got {text!r}") from None
    if w <= 0 or h <= 0 or w % 16 or h % 16 or f < 1 or (f - 1) % 4:
        raise ValueError(f"--size {text}: width and height must be positive multiples of 16 and frames 4k+1 "
                         "(1, 5, 9, ...), as HunyuanVideo's VAE compresses 8x in space and 4x in time")
    return w, h, f


def _conditioning(path: str | None, config, seed: int, tokens: int) -> tuple[Tensor, Tensor, Tensor | None, str]:
    if path is None:
        gen = torch.Generator().manual_seed(int(seed) + 1)
        context = torch.randn(1, tokens, config.context_in_dim, generator=gen)
        y = torch.randn(1, max(config.vec_in_dim, 1), generator=gen)
        return context, y, None, (f"random N(0,1) text states [1, {tokens}, {config.context_in_dim}] and pooled "
                                  f"vector (seed {seed + 1}): a synthetic prompt; pass --cond for a real one")
    from safetensors.torch import load_file

    tensors = load_file(path)
    missing = [k for k in ("context", "y") if k not in tensors]
    if missing:
        raise ValueError(f"conditioning file {path} lacks {missing}; it needs 'context' [B, L, "
                         f"{config.context_in_dim}], 'y' [B, {config.vec_in_dim}] and optionally 'attention_mask'")
    context, y = tensors["context"].float(), tensors["y"].float()
    if context.dim() != 3 or context.shape[2] != config.context_in_dim:
        raise ValueError(f"conditioning {path}: 'context' has shape {tuple(context.shape)}, expected "
                         f"[B, L, {config.context_in_dim}]")
    return context, y, tensors.get("attention_mask"), f"from {path}"


def checkpoint_quality(
    checkpoint: str,
    candidates: str,
    *,
    size: str = "256x256x9",
    steps: int = 20,
    seed: int = 0,
    shift: float = DEFAULT_SHIFT,
    guidance: float = DEFAULT_GUIDANCE,
    cond: str | None = None,
    tokens: int = 64,
    exact_reference: bool = False,
    with_noise_floor: bool = True,
    device: str | torch.device = "cpu",
    on_run: Callable[[int, int, str], None] | None = None,
) -> QualityReport:
    """The report on a checkpoint file: ``candidates`` as :func:`parse_candidates` reads them, the video ``size``
    as :func:`parse_size` does; ``cond`` a safetensors file with ``context``/``y`` (default: seeded random text
    states). One model streamed from the file and shared by the runs, or (``exact_reference``) fresh weights per
    run from one copy held in host memory. Bad input raises ``ValueError`` before anything is loaded."""
    from ..fp8.formats import FP8_DTYPES
    from .checkpoint.canonical import load_canonical_state_dict, open_canonical
    from .loader import load_transformer

    cands = parse_candidates(candidates)
    width, height, frames = parse_size(size)
    device = torch.device(device)
    if not exact_reference:  # one shared model, streamed from the file: the model plus one tensor in memory
        with open_canonical(checkpoint) as ckpt:
            info, cfg = ckpt.info, ckpt.info.config
            fp8_layers = [k[: -len(".weight")] for k, s in ckpt.specs.items()
                          if k.endswith(".weight") and len(s.shape) == 2 and s.dtype in FP8_DTYPES]
            model = load_transformer(ckpt.lazy_state_dict(), storage_policy(fp8_layers, cands), device, config=cfg,
                                     consume=True)
    else:  # a fresh model per run, built from one copy of the weights held in memory
        sd, info = load_canonical_state_dict(checkpoint)
        cfg = info.config
        model = lambda policy: load_transformer(sd, policy, device, config=cfg)  # noqa: E731
    context, y, mask, cond_text = _conditioning(cond, cfg, seed, tokens)
    latent = cfg.latent_shape(context.shape[0], width, height, frames)
    inputs = QualityInputs(context, y, latent, mask, seed, steps, shift, guidance, cond_text)
    setup = {"checkpoint": f"{checkpoint} ({info.layout} layout, "
                           f"{info.fp8_flavour + ' FP8' if info.fp8_flavour else 'high precision'})",
             "video": f"{width}x{height}, {frames} frames"}
    return run_quality(model, inputs, cands, with_noise_floor=with_noise_floor, restore=False, setup=setup,
                       on_run=on_run)
