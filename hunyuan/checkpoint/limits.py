"""This machine's memory limits, for errors that blame the machine rather than the file when an allocation fails."""

from __future__ import annotations

import os

_OOM_MARKS = ("cannot allocate memory", "can't allocate memory", "out of memory", "not enough memory")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the OS or an allocator refusing memory (torch reports it as a RuntimeError)."""
    return isinstance(e, MemoryError) or any(m in str(e).lower() for m in _OOM_MARKS)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def memory_limits() -> str:
    """RAM, available RAM, swap and the address-space limit (``ulimit -v``), as far as the OS tells them."""
    parts = []
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
        parts.append(f"{_gib(info['MemTotal'])} RAM, {_gib(info['MemAvailable'])} available, "
                     f"{_gib(info['SwapTotal'])} swap")
    except (OSError, KeyError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            parts.append(f"address space limited to {_gib(soft)} (ulimit -v)")
    except (ImportError, OSError, ValueError):
        pass
    if not parts and hasattr(os, "sysconf"):
        try:
            parts.append(f"{_gib(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} RAM")
        except (OSError, ValueError):
            pass
    return "; ".join(parts) or "limits unknown"


def allocation_error(what: str, nbytes: int) -> MemoryError:
    """The error for an allocation this machine refused: what needed how much, and the machine's limits."""
    return MemoryError(f"{what} needs {_gib(nbytes)} of memory, which this machine refused ({memory_limits()}). "
                       "The file is fine: free memory, raise the limit, or use a machine with more RAM")


__all__ = ["is_out_of_memory", "memory_limits", "allocation_error"]
