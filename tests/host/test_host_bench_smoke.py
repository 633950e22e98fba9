"""The benchmarks that import ComfyUI still run (tiny shapes, CPU, the ComfyUI tree of ``COMFYUI_PATH``), so a lent
GPU's minutes are not lost to a broken harness. No figure is asserted: those live in bench/results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script,args", [
    ("bench_sample_memory.py", ["--tiny"]),
    ("bench_step.py", ["--tiny", "--device", "cpu", "--variants", "fp8-balanced,native-bf16", "--runs", "1"]),
])
def test_comfyui_benchmark_harness_runs_tiny_on_cpu(script, args, tmp_path):
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("set COMFYUI_PATH to a ComfyUI source tree")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, str(BENCH / script), "--comfyui", path, *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    assert len(table) >= 2, r.stdout[-2000:]  # the header and at least one row
    assert not any(word in "".join(table[1:]) for word in ("out of memory", "non-finite", "failed")), table
