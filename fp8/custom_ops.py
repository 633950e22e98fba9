"""Our Triton paths as ``torch.library`` custom ops under torch.compile, and plain calls in eager mode.

Inside a compiled graph a custom op is one opaque node whose output shapes come from a fake implementation: Dynamo
traces neither the launchers' Python nor data-dependent host logic, and Inductor never re-launches our kernels
through its own wrappers.
"""

from __future__ import annotations

import torch

__all__ = ["register_custom_op", "compiling_or_eager"]


def register_custom_op(name: str, fn, fake):
    """Register ``hyvideo_fp8::<name>`` once per process (the pack may be imported under two names)."""
    if hasattr(torch.ops.hyvideo_fp8, name):
        return getattr(torch.ops.hyvideo_fp8, name)
    op = torch.library.custom_op(f"hyvideo_fp8::{name}", mutates_args=())(fn)
    op.register_fake(fake)
    return op


def compiling_or_eager(op, eager):
    """``op`` while torch.compile traces, ``eager`` otherwise (the custom-op wrapper costs a dispatch per call)."""

    def call(*args):
        return op(*args) if torch.compiler.is_compiling() else eager(*args)

    return call
