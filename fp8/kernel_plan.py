"""The kernel plan: which implementation runs each part of FP8 inference on one device, decided in one place.

Every kernel choice of the engine is made here, once per model and device (``make_plan``), from the hardware, the
installed Triton and the model's shapes: the W8A8 GEMM, the fused producers of its inputs, the q/k prologue (plain
and quantizing), FP8 attention and its quantizers. The plan is stored on the model and logged in one line; the code
that runs a part asks the plan instead of testing the device itself. A GPU run that would fall back to a torch
reference or an emulation (no Triton, a Triton too old for our kernels, no FP8 tensor cores) is logged as a warning
that names the cause and the fix.

Callers without a model (the ComfyUI attention override, tests, benchmarks) use ``device_plan(device)``, the plan of
a device for default shapes.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import os
from dataclasses import dataclass, replace

import torch

from .hardware import MIN_CAPABILITY, fp8_compute_support

__all__ = ["Kernel", "KernelPlan", "make_plan", "device_plan", "log_plan", "gemm_kernel", "gluon_failed",
           "record_gluon_failure", "with_gluon_failures", "FUSED_ENV", "FAST", "PARTS", "DEFAULT_HEADS",
           "DEFAULT_HEAD_DIM"]

logger = logging.getLogger("hyvideo_fp8")

FUSED_ENV = "HYVIDEO_FP8_FUSED"  # "0": the fused producers and prologues run their torch references everywhere
DEFAULT_HEADS = 24  # the shapes a plan assumes when no model gives them (HunyuanVideo's)
DEFAULT_HEAD_DIM = 128


class Kernel(str, enum.Enum):
    """An implementation of one part of the forward."""

    GLUON = "gluon"  # hand-scheduled Hopper kernel in Triton's Gluon dialect
    TRITON = "triton"  # one of the pack's Triton kernels
    TORCH = "torch"  # torch on the device: torch._scaled_mm for the GEMM, the pure-torch reference elsewhere
    EMULATED = "emulated"  # the kernel's arithmetic modelled in torch: correct, slow (CPU, tests)
    NONE = "none"  # not available: W8A8 layers compute weight-only / the part is not used


FAST = (Kernel.GLUON, Kernel.TRITON)  # the GPU kernels


@dataclass(frozen=True)
class KernelPlan:
    """Which implementation runs each part on ``device`` (see :class:`Kernel`).

    ``gemm``: the W8A8 GEMM of every fp8-mode ``FP8Linear``. ``producers``: LayerNorm+modulate / GELU / concat+GELU
    written straight to FP8 for those GEMMs. ``prologue``: RMS q/k norm + RoPE (16/32-bit q, k, v out).
    ``quant_prologue``: the same prologue writing int8 queries into FP8 attention's buffers (NONE: not used; the
    attention quantizes its own queries). ``attention``: the FP8 attention kernel; ``attention_quantizers``: the Q
    and K/V quantizers in front of it. ``notes`` say why a part is not on its fastest implementation.
    """

    device: str
    gemm: Kernel
    producers: Kernel
    prologue: Kernel
    quant_prologue: Kernel
    attention: Kernel
    attention_quantizers: Kernel
    notes: tuple[str, ...] = ()
    warn: bool = False  # a GPU run on a reference or emulated path: log the notes as warnings
    capability: tuple[int, int] | None = None  # the GPU's compute capability (None: not a CUDA device)

    def summary(self) -> str:
        """The one log line: ``[hyvideo_fp8] kernel plan on <device>: gemm=... attention=...``."""
        parts = " ".join(f"{name}={getattr(self, name).value}" for name in PARTS)
        return f"[hyvideo_fp8] kernel plan on {self.device}: {parts}"


PARTS = ("gemm", "producers", "prologue", "quant_prologue", "attention", "attention_quantizers")


def fused_enabled() -> bool:
    return os.environ.get(FUSED_ENV, "1").strip() != "0"


def _triton_problem() -> str | None:
    """None when the pack's Triton kernels import, else what is wrong and what to do."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed: install the Triton that matches your torch build (pip install triton)"
    try:
        from .attention import triton_kernel  # noqa: F401 (imports every Triton feature the kernels use)
    except Exception as e:  # noqa: BLE001 (ImportError, or AttributeError from a Triton without those features)
        import triton

        return (f"Triton {getattr(triton, '__version__', '?')} cannot build the pack's kernels ({e!r:.200}): "
                "install the Triton that matches your torch build")
    return None


_GLUON_FAILED: set[tuple[int, int]] = set()


def gluon_failed(capability: tuple[int, int]) -> bool:
    """Whether the Gluon kernel failed to compile on a GPU of this capability in this process."""
    return tuple(capability) in _GLUON_FAILED


def record_gluon_failure(capability: tuple[int, int], error: BaseException) -> None:
    """The Gluon kernel's first launch failed: from now on plans (and plans already made) run the Triton kernel."""
    _GLUON_FAILED.add(tuple(capability))
    logger.warning("[hyvideo_fp8] FP8 attention: the Gluon Hopper kernel failed (%s); using the Triton kernel from "
                   "now on (slower)", repr(error)[:300])


def make_plan(
    device: torch.device | str,
    compute_dtype: torch.dtype = torch.bfloat16,
    heads: int = DEFAULT_HEADS,
    head_dim: int = DEFAULT_HEAD_DIM,
    row_channels: int = 0,
    *,
    capability: tuple[int, int] | None = None,
    device_name: str | None = None,
    triton_problem: str | None = None,
    fused: bool | None = None,
) -> KernelPlan:
    """Decide every part's implementation for a model with these shapes on ``device``.

    Args:
        compute_dtype: the dtype activations are in (the attention quantizers' shared memory depends on it).
        heads, head_dim: the attention layout (the prologue holds all heads of a token in registers).
        row_channels: the widest row a fused producer quantizes (0: not checked).
        capability, device_name, triton_problem, fused: stand-ins for the CUDA query, the Triton import check and
            ``HYVIDEO_FP8_FUSED``, so tests can plan for GPUs and installs they do not have.
    """
    from .attention.quantize_qkv import KERNEL_HEAD_DIMS, triton_quantize_fits
    from .triton import MAX_ROW_BLOCK, QUANT_Q_PROLOGUE_DTYPES, next_power_of_2, prologue_fits

    device = torch.device(device)
    fused = fused_enabled() if fused is None else fused
    notes: list[str] = []
    if device.type != "cuda":
        gemm = Kernel.EMULATED if fp8_compute_support(device)[0] else Kernel.NONE
        if gemm is Kernel.NONE:
            notes.append(fp8_compute_support(device)[1])
        return KernelPlan(str(device), gemm, Kernel.TORCH, Kernel.TORCH, Kernel.NONE, Kernel.EMULATED, Kernel.TORCH,
                          tuple(notes))  # fmt: skip

    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    capability = tuple(capability)
    if device_name is None:
        device_name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "unknown GPU"
    sm = f"sm_{capability[0]}{capability[1]}"
    label = f"{device} ({device_name}, {sm})"
    has_fp8, reason = fp8_compute_support(device, capability, device_name)
    if triton_problem is None:
        triton_problem = _triton_problem()

    gemm = Kernel.TORCH if has_fp8 else Kernel.NONE
    if not has_fp8:
        notes.append(f"{reason}; FP8 layers compute weight-only")

    fits_rows = not row_channels or next_power_of_2(row_channels) <= MAX_ROW_BLOCK
    if not has_fp8:
        producers = Kernel.NONE  # nothing to feed: no layer computes W8A8 here
        prologue = Kernel.TORCH if not fused or triton_problem else Kernel.TRITON
        if prologue is Kernel.TRITON and not prologue_fits(heads, head_dim):
            prologue = Kernel.TORCH
    elif not fused:
        producers = prologue = Kernel.TORCH
        notes.append(f"{FUSED_ENV}=0: the fused producers and the q/k prologue run their torch references")
    elif triton_problem:
        producers = prologue = Kernel.TORCH
        notes.append(f"{triton_problem}; the fused producers and the q/k prologue run their torch references")
    else:
        producers = Kernel.TRITON if fits_rows else Kernel.TORCH
        if not fits_rows:
            notes.append(f"rows of {row_channels} channels exceed the fused kernels' {MAX_ROW_BLOCK}: producers "
                         "run their torch reference")
        prologue = Kernel.TRITON if prologue_fits(heads, head_dim) else Kernel.TORCH
        if prologue is Kernel.TORCH:
            notes.append(f"{heads} heads of dim {head_dim} do not fit the Triton q/k prologue: it runs in torch")

    if capability < MIN_CAPABILITY:
        attention = Kernel.EMULATED
        notes.append(f"this GPU ({device_name}, {sm}) has no FP8 tensor cores: FP8 attention would run the torch "
                     "emulation (very slow); use attention 'sdpa' or the fp8-weight-only policy")
    elif triton_problem:
        attention = Kernel.EMULATED
        notes.append(f"{triton_problem}; until then FP8 attention runs the torch emulation (very slow)")
    elif head_dim not in KERNEL_HEAD_DIMS:
        attention = Kernel.EMULATED
        notes.append(f"head dim {head_dim} is not supported by the FP8 attention kernels ({KERNEL_HEAD_DIMS}): "
                     "it runs the torch emulation (very slow); use attention 'sdpa'")
    else:
        from .attention.gluon_kernel import gluon_supported

        use_gluon, why_not = gluon_supported(capability, head_dim)
        attention = Kernel.GLUON if use_gluon and not gluon_failed(capability) else Kernel.TRITON
        if capability == (9, 0) and attention is Kernel.TRITON:
            notes.append(f"Gluon kernel not used ({why_not if not use_gluon else 'it failed to compile'})")

    quantizers = Kernel.TORCH
    quant_prologue = Kernel.NONE
    if attention in FAST:
        if triton_quantize_fits(compute_dtype, head_dim, capability):
            quantizers = Kernel.TRITON
        else:
            notes.append(f"{compute_dtype} inputs with head dim {head_dim} do not fit the Triton attention quantizers "
                         f"on {sm}: Q/K/V are quantized in torch (slower, more memory); bf16 compute avoids this")
        if compute_dtype in QUANT_Q_PROLOGUE_DTYPES:
            quant_prologue = prologue

    warn = attention is Kernel.EMULATED or gemm is Kernel.NONE or Kernel.TORCH in (producers, prologue, quantizers)
    return KernelPlan(label, gemm, producers, prologue, quant_prologue, attention, quantizers, tuple(notes), warn,
                      capability)


def log_plan(plan: KernelPlan, warn: bool = True) -> None:
    """The plan's line at INFO; on a GPU that falls back to a reference or emulated path, a WARNING per cause
    (``warn=False``: the caller uses no FP8 compute, so the fallbacks cost nothing)."""
    logger.info(plan.summary())
    if plan.warn and warn:
        for note in plan.notes:
            logger.warning("[hyvideo_fp8] %s: %s", plan.device, note)


_DEVICE_PLANS: dict[tuple[torch.device, torch.dtype, int], KernelPlan] = {}


@torch.compiler.disable
def _new_device_plan(device: torch.device, compute_dtype: torch.dtype, head_dim: int) -> KernelPlan:
    plan = _DEVICE_PLANS[device, compute_dtype, head_dim] = make_plan(device, compute_dtype, head_dim=head_dim)
    if device.type == "cuda":  # say once what runs there
        log_plan(plan)
    return plan


def device_plan(device: torch.device | str, compute_dtype: torch.dtype = torch.bfloat16,
                head_dim: int = DEFAULT_HEAD_DIM) -> KernelPlan:
    """The plan of ``device`` for default shapes (HunyuanVideo's heads), made and logged once per device, dtype and
    head dim; for callers without a model. A Gluon failure recorded since is applied. A plain dict lookup once
    made, so torch.compile traces it without a graph break."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    plan = _DEVICE_PLANS.get((device, compute_dtype, head_dim))
    if plan is None:
        plan = _new_device_plan(device, compute_dtype, head_dim)
    return with_gluon_failures(plan)


def with_gluon_failures(plan: KernelPlan) -> KernelPlan:
    """``plan`` with the Triton attention kernel in place of a Gluon one that has failed on this GPU since."""
    if plan.attention is Kernel.GLUON and gluon_failed(plan.capability):
        return replace(plan, attention=Kernel.TRITON)
    return plan


_GEMM_KERNELS: dict[torch.device, Kernel] = {}


def gemm_kernel(device: torch.device) -> Kernel:
    """The W8A8 GEMM's implementation on ``device`` (what ``FP8Linear`` asks at run time): ``torch._scaled_mm`` on
    FP8 tensor cores, emulated on the CPU, NONE elsewhere (reported once per device; the layers compute weight-only).
    A plain dict cache: cheap to call in a forward, and traceable by torch.compile."""
    kernel = _GEMM_KERNELS.get(device)
    if kernel is None:
        ok, reason = fp8_compute_support(device)
        kernel = (Kernel.EMULATED if device.type == "cpu" else Kernel.TORCH) if ok else Kernel.NONE
        if not ok:
            logger.warning("[hyvideo_fp8] %s; FP8 layers compute weight-only", reason)
        _GEMM_KERNELS[device] = kernel
    return kernel
