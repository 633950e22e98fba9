"""Ray, the optional dependency of the multi-GPU model: imported here only, with the way to install it."""

from __future__ import annotations

from types import ModuleType

INSTALL = "pip install 'ray>=2.9'"  # also: pip install 'hyvideo-fp8[multigpu]'


class RayMissingError(ImportError):
    """Ray is not installed; the message says how to install it."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or ``RayMissingError`` naming the install command."""
    try:
        import ray
    except ImportError as err:
        raise RayMissingError(
            f"the multi-GPU HunyuanVideo model runs its GPUs as Ray workers, and Ray is not installed in this Python "
            f"({err}): run {INSTALL} in ComfyUI's environment and restart ComfyUI. Single-GPU use needs nothing more"
        ) from err
    return ray


__all__ = ["RayMissingError", "require_ray", "INSTALL"]
