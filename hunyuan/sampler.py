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
from typing import Any, Callable, ContextManager, Iterator, Mapping, Optional, Sequence, Union

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


def _batch_conditions(pos: TextCondition, neg: TextCondition) -> TextCondition:
    """Stack positive then negative along the batch (one forward per step for true CFG)."""
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


def _inputs_on(inputs: Optional[Mapping[str, Any]], batch: int, device, dtype: torch.dtype,
               which: str) -> dict[str, Any]:
    """Further model inputs on the device: tensors batch first (floating ones in the activation dtype), other values
    (flags such as ``disable_time_r``) as given."""
    out = {}
    for key, value in (inputs or {}).items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
            continue
        if value.dim() == 0 or value.shape[0] != batch:
            raise ValueError(f"{which}model input {key!r} has shape {tuple(value.shape)}: it must be batch first, "
                             f"batch {batch} as the latent")
        out[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    return out


def _channels_on(channels: Optional[torch.Tensor], noise: torch.Tensor, extra: int, device, dtype: torch.dtype,
                 which: str) -> Optional[torch.Tensor]:
    """The image-conditioning channels concatenated after the latent: as given (shape checked), zeros where the
    model takes some and none are given (text-to-video), None where the model takes none."""
    expected = (noise.shape[0], extra, *noise.shape[2:])
    if channels is None:
        return noise.new_zeros(expected, device=device, dtype=dtype) if extra else None
    if tuple(channels.shape) != expected:
        raise ValueError(f"{which}image_channels has shape {tuple(channels.shape)}; this model takes {extra} image-"
                         f"conditioning channels beside the {noise.shape[1]}-channel latent, i.e. {expected} "
                         "[batch, channels, frames, height, width] at the latent's batch and size")
    return channels.to(device=device, dtype=dtype)


def _stackable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two halves' inputs go through one forward as a batch (same keys, shapes and flags)."""
    if a.keys() != b.keys():
        return False
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor):
            if va.shape != vb.shape:
                return False
        elif isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor) or va != vb:
            return False
    return True


def _mask_on(mask: Optional[torch.Tensor], keep: Optional[torch.Tensor], noise: torch.Tensor,
             device) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The denoise mask (0/1 or soft, broadcast over the latent) and the latent kept where it is 0, fp32 on the
    device; both or neither."""
    if mask is None and keep is None:
        return None, None
    if mask is None or keep is None:
        raise ValueError("denoise_mask and keep_latent go together: the mask says where the kept latent stays")
    b, c, *size = noise.shape
    if tuple(keep.shape) != tuple(noise.shape):
        raise ValueError(f"keep_latent has shape {tuple(keep.shape)}, the latent {tuple(noise.shape)}")
    if mask.dim() != 5 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, c) or list(mask.shape[2:]) != size:
        raise ValueError(f"denoise_mask has shape {tuple(mask.shape)}; it must be [{b} or 1, {c} or 1, "
                         f"{', '.join(map(str, size))}] over the latent {tuple(noise.shape)}")
    return (mask.to(device=device, dtype=torch.float32).expand(noise.shape),
            keep.to(device=device, dtype=torch.float32))


@dataclass
class _Call:
    """One model call per step: the rows of the latent it takes (1 or 2 copies, for stacked true CFG) and its
    conditioning."""

    copies: int
    context: torch.Tensor
    y: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    guidance: Optional[torch.Tensor]
    channels: Optional[torch.Tensor]
    inputs: dict[str, Any]


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
    model_inputs: Optional[Mapping[str, Any]] = None,
    image_channels: Optional[torch.Tensor] = None,
    negative_model_inputs: Optional[Mapping[str, Any]] = None,
    negative_image_channels: Optional[torch.Tensor] = None,
    denoise_mask: Optional[torch.Tensor] = None,
    keep_latent: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Denoise from pure noise to a clean latent (fp32, model latent space, on ``device``).

    Args:
        model: a transformer with ComfyUI's HunyuanVideo forward signature.
        noise_or_shape: the starting noise ``[B, C, T, H, W]`` (used as is), or a shape to draw it for ``seed``.
        context, y, attention_mask: the positive prompt (``[B, L, D]``, ``[B, 768]`` (``[B, 0]`` for a model without a
            pooled input), optional 0/1 ``[B, L]``).
        guidance: embedded guidance scale (None: the model gets no guidance input).
        cfg: true classifier-free guidance; > 1 needs ``negative`` and doubles the batch.
        hybrid: (N, M) steps at the start and end run under ``high_precision(model)``.
        dtype: activation dtype fed to the model (default: ``model.dtype``, else fp32).
        model_inputs: further conditioning the model takes by keyword: tensors batch first (1.5's ``txt_byt5`` glyph
            tokens, ``clip_fea`` image features, v1 I2V's ``guiding_frame_index``, ``ref_latent``), or flags such as
            ``disable_time_r``.
        image_channels: what a model with more input channels than the latent has (``model.config.in_channels``)
            takes there: the image-to-video conditioning (image latent and mask) ``[B, in_channels - C, T, H, W]``,
            concatenated after the latent at every step. None: zeros, text-to-video as ComfyUI feeds it.
        negative_model_inputs, negative_image_channels: the negative prompt's own (true CFG; default: the
            positive's). Where the two halves' inputs cannot stack (other keys or shapes), each step runs them as
            two forwards, as ComfyUI does with conditionings that cannot be batched.
        denoise_mask, keep_latent: a masked latent (given together, ``[B or 1, C or 1, T, H, W]`` and ``[B, C, T, H,
            W]``): where the mask is 0 the model sees ``keep_latent`` at every step, its estimate of the clean latent
            is ``keep_latent`` there and so is the sample (HunyuanImageToVideo's "v2 (replace)" start frames), as
            ComfyUI's samplers treat a noise mask; where it is 1 the latent is denoised.
    """
    pos = TextCondition(context, y, attention_mask)
    if cfg < 1.0:
        raise ValueError(f"cfg must be >= 1 (1 disables true CFG), got {cfg}")
    use_cfg = cfg > 1.0
    if use_cfg and negative is None:
        raise ValueError(f"cfg {cfg} > 1 needs a negative prompt; connect one or set cfg to 1")
    if use_cfg and (negative.context.shape[0] != pos.context.shape[0] or negative.context.shape[2] != context.shape[2]):
        raise ValueError(f"negative prompt shape {tuple(negative.context.shape)} does not match the positive "
                         f"{tuple(context.shape)} in batch or width")
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
    batch = noise.shape[0]

    extra_channels = getattr(getattr(model, "config", None), "in_channels", noise.shape[1]) - noise.shape[1]
    if extra_channels < 0:
        raise ValueError(f"latent has {noise.shape[1]} channels but the model takes {noise.shape[1] + extra_channels} "
                         "input channels in all: pass the latent to denoise alone")

    def call(cond: TextCondition, copies: int, inputs: dict, channels: Optional[torch.Tensor]) -> _Call:
        rows = batch * copies
        g = None if guidance is None else torch.full((rows,), float(guidance), device=device, dtype=dtype)
        mask = cond.attention_mask.to(device) if cond.attention_mask is not None else None
        return _Call(copies, cond.context.to(device=device, dtype=dtype), cond.y.to(device=device, dtype=dtype),
                     mask, g, channels, inputs)

    pos_inputs = _inputs_on(model_inputs, batch, device, dtype, "")
    pos_channels = _channels_on(image_channels, noise, extra_channels, device, dtype, "")
    if not use_cfg:
        calls = [call(pos, 1, pos_inputs, pos_channels)]
    else:
        neg_inputs = pos_inputs if negative_model_inputs is None else _inputs_on(
            negative_model_inputs, batch, device, dtype, "negative ")
        neg_channels = pos_channels if negative_image_channels is None else _channels_on(
            negative_image_channels, noise, extra_channels, device, dtype, "negative ")
        if _stackable(pos_inputs, neg_inputs):
            stacked = {k: torch.cat([v, neg_inputs[k]]) if isinstance(v, torch.Tensor) else v
                       for k, v in pos_inputs.items()}
            channels = None if pos_channels is None else torch.cat([pos_channels, neg_channels])
            calls = [call(_batch_conditions(pos, negative), 2, stacked, channels)]
        else:
            calls = [call(pos, 1, pos_inputs, pos_channels), call(negative, 1, neg_inputs, neg_channels)]

    options = dict(transformer_options or {})
    options["sample_sigmas"] = sigmas.to(device)
    mask, keep = _mask_on(denoise_mask, keep_latent, noise, device)
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
            options["sigmas"] = sigmas[i : i + 1].to(device)
            seen = x if mask is None else x * mask + keep * (1 - mask)
            outs = []
            for c in calls:
                xin = torch.cat([seen] * c.copies) if c.copies > 1 else seen
                t = torch.full((xin.shape[0],), sigma * TIMESTEP_SCALE, device=device, dtype=torch.float32)
                xin = xin.to(dtype) if c.channels is None else torch.cat([xin.to(dtype), c.channels], dim=1)
                outs.append(model(xin, t, c.context, c.y, guidance=c.guidance, attention_mask=c.attention_mask,
                                  transformer_options=options, **c.inputs).float())
            v = torch.cat(outs) if len(outs) > 1 else outs[0]
            if not bool(torch.isfinite(v).all()):
                raise NonFiniteStepError(
                    f"sampling step {i + 1} of {steps} (sigma {sigma:.4f}) gave NaN/Inf from the model: stopped "
                    "rather than decode a black video. The weights or activations overflow in this precision: try a "
                    "policy with more high-precision layers (fp8-balanced, bf16) or check the checkpoint with "
                    "tools.py inspect")
            if use_cfg:
                v_pos, v_neg = v.chunk(2)
                v = v_neg + cfg * (v_pos - v_neg)
            if mask is not None:  # the clean estimate is the kept latent where masked; step from the sampler's x
                v = (x - ((seen - sigma * v) * mask + keep * (1 - mask))) / sigma
            if callback is not None:
                callback(i, steps, x - sigma * v)
            x = x + v * (sigmas[i + 1].item() - sigma)
    return x


__all__ = [
    "DEFAULT_SHIFT", "DEFAULT_GUIDANCE", "TIMESTEP_SCALE", "NonFiniteStepError", "TextCondition", "time_shift",
    "flow_sigmas", "precision_plan", "initial_noise", "model_compute_dtype", "default_high_precision", "sample",
]
