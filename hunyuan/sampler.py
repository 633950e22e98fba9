"""Flow-matching Euler sampler for HunyuanVideo, as the released model is sampled (host independent).

Schedule: sigmas ``linspace(1, 0, steps+1)`` time-shifted by ``shift`` (SD3 shift, 7.0 for the released model),
model timestep ``sigma * 1000``, Euler ``x += v * (sigma[i+1] - sigma[i])`` in fp32. The embedded guidance is passed
to the model as the raw scale (a ``[B]`` tensor), exactly as ComfyUI's ``HunyuanVideo.extra_conds`` does; the model
embeds it at ``time_factor`` 1000. Noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in fp32, the
same stream ComfyUI's ``prepare_noise`` draws, so a seed gives the same video on every device and in both samplers.

The hybrid precision schedule runs the first ``N`` and last ``M`` steps under a high-precision compute context (by
default :func:`default_high_precision`: the same FP8 weights dequantized to the policy's compute dtype via
``fp8.apply.compute_override``, SDPA attention) and the rest under the model's FP8 policy, without reloading
weights. Contexts are entered with ``with``, so an exception raised by a progress/interrupt callback or by the model
leaves the compute modes as they were.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Mapping, Optional, Sequence, Union

import torch

DEFAULT_SHIFT = 7.0
DEFAULT_GUIDANCE = 6.0
TIMESTEP_SCALE = 1000.0

class NonFiniteStepError(FloatingPointError):
    """A sampling step produced NaN/Inf; the message names the step."""


ProgressCallback = Callable[[int, int, torch.Tensor], None]
"""``callback(step, total, x0)``: ``step`` is the 0-based index of the step just finished, ``x0`` the model's
current estimate of the clean latent (fp32, model latent space). Raise from it to interrupt sampling."""


@dataclass(frozen=True)
class TextCondition:
    """One prompt as the transformer consumes it: token states, pooled vector, optional 0/1 token mask."""

    context: torch.Tensor  # [B, L, context_in_dim]
    y: torch.Tensor  # [B, vec_in_dim]
    attention_mask: Optional[torch.Tensor] = None  # [B, L] 0/1 (1 = real token), as ComfyUI's text encoders give

    def __post_init__(self) -> None:
        if self.context.dim() != 3:
            raise ValueError(f"text context must be [batch, tokens, dim], got shape {tuple(self.context.shape)}")
        if self.y.dim() != 2:
            raise ValueError(f"pooled text vector y must be [batch, dim], got shape {tuple(self.y.shape)}")
        if self.attention_mask is not None and tuple(self.attention_mask.shape) != tuple(self.context.shape[:2]):
            raise ValueError(
                f"attention_mask shape {tuple(self.attention_mask.shape)} does not match the context's "
                f"[batch, tokens] {tuple(self.context.shape[:2])}"
            )


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 resolution shift: keeps more of the schedule at high noise for large ``shift``."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """``steps + 1`` noise levels from 1 to 0 (fp32, computed in fp64)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (the released model uses {DEFAULT_SHIFT}), got {shift!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return time_shift(t, float(shift)).to(torch.float32)


def precision_plan(steps: int, hybrid: Sequence[int] = (0, 0)) -> list[bool]:
    """Per step: True where the step runs under high-precision compute (the first N and the last M steps)."""
    if len(hybrid) != 2:
        raise ValueError(f"hybrid must be (first_steps, last_steps), got {hybrid!r}")
    first, last = hybrid
    for name, n in (("first", first), ("last", last)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"hybrid {name}-steps count must be an integer >= 0, got {n!r}")
    return [i < first or i >= steps - last for i in range(steps)]


def initial_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal fp32 noise drawn on the CPU: identical for a seed on every device (and to ComfyUI's)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")


def _pad_tokens(cond: TextCondition, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a prompt's tokens with zeros up to ``length``; returns (context, 0/1 integer mask) so two prompts batch."""
    b, n, _ = cond.context.shape
    if cond.attention_mask is None:
        mask = torch.ones(b, n, dtype=torch.long, device=cond.context.device)
    else:
        mask = cond.attention_mask.to(cond.context.device).long()
    if n == length:
        return cond.context, mask
    ctx = torch.nn.functional.pad(cond.context, (0, 0, 0, length - n))
    return ctx, torch.nn.functional.pad(mask, (0, length - n))


def _batch_conditions(pos: TextCondition, neg: Optional[TextCondition]) -> TextCondition:
    """Stack positive then negative along the batch (one forward per step for true CFG)."""
    if neg is None:
        return pos
    if neg.context.shape[0] != pos.context.shape[0] or neg.context.shape[2] != pos.context.shape[2]:
        raise ValueError(
            f"negative prompt shape {tuple(neg.context.shape)} does not match the positive "
            f"{tuple(pos.context.shape)} in batch or width"
        )
    if pos.attention_mask is None and neg.attention_mask is None and pos.context.shape[1] == neg.context.shape[1]:
        return TextCondition(torch.cat([pos.context, neg.context]), torch.cat([pos.y, neg.y]))
    length = max(pos.context.shape[1], neg.context.shape[1])
    (pc, pm), (nc, nm) = _pad_tokens(pos, length), _pad_tokens(neg, length)
    return TextCondition(torch.cat([pc, nc]), torch.cat([pos.y, neg.y]), torch.cat([pm, nm]))


def model_compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype activations enter the transformer in (``model.dtype`` as ComfyUI reads it, else fp32)."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype.itemsize >= 2:
        return dtype
    return torch.float32


@contextlib.contextmanager
def default_high_precision(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The hybrid schedule's accurate steps: the same FP8 weights dequantized to the policy's compute dtype (bf16 by
    default) and SDPA attention, restored on exit (also when the body raises)."""
    from ..fp8.apply import compute_override

    policy = getattr(model, "policy", None)
    with compute_override(model, policy.compute_dtype if policy is not None else "bf16"):
        if policy is None or policy.attention == "sdpa":
            yield model
            return
        model.policy = policy.with_overrides(attention="sdpa")
        try:
            yield model
        finally:
            model.policy = policy


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    noise_or_shape: Union[torch.Tensor, Sequence[int]],
    context: torch.Tensor,
    y: torch.Tensor,
    *,
    attention_mask: Optional[torch.Tensor] = None,
    steps: int = 30,
    shift: float = DEFAULT_SHIFT,
    guidance: Optional[float] = DEFAULT_GUIDANCE,
    cfg: float = 1.0,
    negative: Optional[TextCondition] = None,
    seed: int = 0,
    hybrid: Sequence[int] = (0, 0),
    high_precision: Optional[Callable[[torch.nn.Module], ContextManager]] = None,
    callback: Optional[ProgressCallback] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    transformer_options: Optional[dict] = None,
    model_inputs: Optional[Mapping[str, torch.Tensor]] = None,
) -> torch.Tensor:
    """Denoise from pure noise to a clean latent (fp32, model latent space, on ``device``).

    Args:
        model: a transformer with ComfyUI's HunyuanVideo forward signature.
        noise_or_shape: the starting noise ``[B, C, T, H, W]`` (used as is), or a shape to draw it for ``seed``.
        context, y, attention_mask: the positive prompt (``[B, L, D]``, ``[B, 768]``, optional 0/1 ``[B, L]``).
        guidance: embedded guidance scale (None: the model gets no guidance input).
        cfg: true classifier-free guidance; > 1 needs ``negative`` and doubles the batch.
        hybrid: (N, M) steps at the start and end run under ``high_precision(model)``.
        dtype: activation dtype fed to the model (default: ``model.dtype``, else fp32).
        model_inputs: further conditioning tensors the model takes by keyword, batch first (1.5's ``txt_byt5``
            glyph tokens, ``clip_fea`` image features); with true CFG the negative half gets the same.
    """
    pos = TextCondition(context, y, attention_mask)
    if cfg < 1.0:
        raise ValueError(f"cfg must be >= 1 (1 disables true CFG), got {cfg}")
    use_cfg = cfg > 1.0
    if use_cfg and negative is None:
        raise ValueError(f"cfg {cfg} > 1 needs a negative prompt; connect one or set cfg to 1")
    sigmas = flow_sigmas(steps, shift)
    plan = precision_plan(steps, hybrid)
    if isinstance(noise_or_shape, torch.Tensor):
        noise = noise_or_shape
    else:
        noise = initial_noise(noise_or_shape, seed)
    if noise.dim() != 5:
        raise ValueError(f"latent must be 5-D [batch, channels, frames, height, width], got {tuple(noise.shape)}")
    if noise.shape[0] != context.shape[0]:
        raise ValueError(f"latent batch {noise.shape[0]} does not match the prompt batch {context.shape[0]}")
    if device is None:
        device = noise.device
    dtype = dtype or model_compute_dtype(model)
    high_precision = high_precision or default_high_precision

    cond = _batch_conditions(pos, negative if use_cfg else None)
    ctx = cond.context.to(device=device, dtype=dtype)
    vec = cond.y.to(device=device, dtype=dtype)
    mask = cond.attention_mask.to(device) if cond.attention_mask is not None else None
    batch = ctx.shape[0]
    g = None if guidance is None else torch.full((batch,), float(guidance), device=device, dtype=dtype)
    extra = {}
    for key, value in (model_inputs or {}).items():
        if value.shape[0] != noise.shape[0]:
            raise ValueError(f"model input {key!r} has batch {value.shape[0]}, the latent {noise.shape[0]}")
        value = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        extra[key] = torch.cat([value, value]) if use_cfg else value
    options = dict(transformer_options or {})
    options["sample_sigmas"] = sigmas.to(device)

    # A model that also takes image-conditioning channels (image-to-video, 1.5) gets zeros there: text-to-video, as
    # ComfyUI feeds them without an image.
    extra_channels = getattr(getattr(model, "config", None), "in_channels", noise.shape[1]) - noise.shape[1]
    if extra_channels < 0:
        raise ValueError(f"latent has {noise.shape[1]} channels but the model takes {noise.shape[1] + extra_channels} "
                         "input channels in all: pass the latent to denoise alone")
    x = noise.to(device=device, dtype=torch.float32)
    with contextlib.ExitStack() as stack:
        high_now = False
        for i in range(steps):
            if plan[i] != high_now:  # enter/leave the override only where the mode changes
                if plan[i]:
                    stack.enter_context(high_precision(model))
                else:
                    stack.close()
                high_now = plan[i]
            sigma = sigmas[i].item()
            xin = torch.cat([x, x]) if use_cfg else x
            t = torch.full((batch,), sigma * TIMESTEP_SCALE, device=device, dtype=torch.float32)
            options["sigmas"] = sigmas[i : i + 1].to(device)
            if extra_channels:
                xin = torch.cat([xin, xin.new_zeros(xin.shape[0], extra_channels, *xin.shape[2:])], dim=1)
            out = model(xin.to(dtype), t, ctx, vec, guidance=g, attention_mask=mask, transformer_options=options,
                        **extra)
            v = out.float()
            if not bool(torch.isfinite(v).all()):
                raise NonFiniteStepError(
                    f"sampling step {i + 1} of {steps} (sigma {sigma:.4f}) gave NaN/Inf from the model: stopped "
                    "rather than decode a black video. The weights or activations overflow in this precision: try a "
                    "policy with more high-precision layers (fp8-balanced, bf16) or check the checkpoint with "
                    "tools.py inspect")
            if use_cfg:
                v_pos, v_neg = v.chunk(2)
                v = v_neg + cfg * (v_pos - v_neg)
            if callback is not None:
                callback(i, steps, x - sigma * v)
            x = x + v * (sigmas[i + 1].item() - sigma)
    return x


__all__ = [
    "DEFAULT_SHIFT", "DEFAULT_GUIDANCE", "TIMESTEP_SCALE", "NonFiniteStepError", "TextCondition", "time_shift",
    "flow_sigmas", "precision_plan", "initial_noise", "model_compute_dtype", "default_high_precision", "sample",
]
