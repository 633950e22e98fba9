"""Make this checkout importable as the package ``hyvideo_fp8`` without installing it.

Used by ``tools.py`` and ``tests/conftest.py``: a plain checkout or a ComfyUI ``custom_nodes`` folder of
any name works the same way.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "hyvideo_fp8"
ROOT = Path(__file__).resolve().parent


def load_pack() -> ModuleType:
    """Import the checkout as ``hyvideo_fp8`` (idempotent) and return the package module."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module
