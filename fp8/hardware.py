"""Can this device run FP8 matmuls? One place that answers, with a message that says what to do instead."""

from __future__ import annotations

import torch

__all__ = ["fp8_compute_support", "max_shared_memory_per_block", "MIN_CAPABILITY"]

MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90) have FP8 tensor cores


def fp8_compute_support(
    device: torch.device | str, capability: tuple[int, int] | None = None, device_name: str | None = None
) -> tuple[bool, str]:
    """``(supported, reason)`` for FP8 compute (``torch._scaled_mm``) on ``device``.

    CPU counts as supported: torch emulates ``_scaled_mm`` there (slowly), which lets CI run the real code path.
    ``capability``/``device_name`` override the CUDA query so tests can cover GPUs they do not have.
    """
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm"):
        return False, (f"torch {torch.__version__} has no torch._scaled_mm: "
                       "update torch or use the fp8-weight-only policy")
    if device.type == "cpu":
        return True, "CPU: torch emulates FP8 matmuls (correct but slow; meant for tests)"
    if device.type != "cuda":
        return False, f"{device.type} devices have no FP8 matmul in torch: use the fp8-weight-only policy"
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if device_name is None:
        device_name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "unknown GPU"
    sm = f"sm_{capability[0]}{capability[1]}"
    if tuple(capability) < MIN_CAPABILITY:
        return False, (f"this GPU ({sm}, {device_name}) has no FP8 tensor cores (needs sm_89 Ada or sm_90 Hopper): "
                       "use the fp8-weight-only policy")
    return True, f"{device_name} ({sm}) has FP8 tensor cores"


def max_shared_memory_per_block(capability: tuple[int, int]) -> int:
    """Largest dynamic shared memory one block may opt into, in bytes (CUDA C++ Programming Guide, technical
    specifications per compute capability): 227 KB on sm_90 / sm_10x, 99 KB on Ada (sm_89) and consumer Blackwell
    (sm_120). Other GPUs get the 99 KB floor: too small a limit only costs a slower fallback, too large a failed launch.
    """
    return 232_448 if (9, 0) <= tuple(capability) < (12, 0) else 101_376
