"""Test set-up: import the checkout as ``hyvideo_fp8`` and seed nothing globally (each test draws fresh inputs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pack_path import load_pack  # noqa: E402

load_pack()
