"""The Ray actor class itself, shipped to the workers by value: a worker process cannot import the pack by name
(ComfyUI imports it from its folder under the folder's name, tests under ``hyvideo_fp8``), so the actor first
registers the pack's folder under the driver's package name, then hosts a ``worker.Worker``.

Only the standard library is used at module level here: this code runs before the pack is importable. Every
machine of a Ray cluster needs the pack at the same path.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class PackActor:
    """``ray.remote(PackActor)``: ``call(method, *args)`` runs ``Worker.<method>``."""

    def __init__(self, package: str, root: str) -> None:
        if package not in sys.modules:  # the package without its __init__ (which would look for ComfyUI)
            module = types.ModuleType(package)
            module.__path__ = [root]
            sys.modules[package] = module
        self.worker = importlib.import_module(f"{package}.hunyuan.parallel.worker").Worker()

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)


__all__ = ["PackActor"]
