"""Test set-up: import the checkout as ``hyvideo_fp8`` and seed nothing globally (each test draws fresh inputs)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pack_path import load_pack  # noqa: E402

load_pack()


@pytest.fixture(scope="module")
def sd():
    """The strong random tiny model's canonical state dict (``tests/tiny_model.py``), seed 5; tests copy it."""
    from tests.tiny_model import strong_state_dict

    return strong_state_dict(seed=5)
