"""The GPU benchmark scripts still run (tiny shapes, CPU), so a lent GPU's minutes are not lost to a broken harness.

No timing is asserted here: speed and memory live in bench/ and bench/results/.
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script,args", [
    ("bench_step.py", ["--tiny", "--device", "cpu", "--variants", "ours-bf16,fp8-balanced,fp8-max+sdpa+swap",
                       "--runs", "1", "--runs-rest", "1", "--warmup-rest", "0"]),
    ("bench_step.py", ["--tiny", "--device", "cpu", "--family", "1.5", "--variants", "ours-bf16,fp8-balanced",
                       "--runs", "1"]),
    ("bench_memory.py", ["--tiny", "--device", "cpu", "--runs", "1"]),
    ("bench_linear.py", ["--tiny"]),
])
def test_benchmark_harness_runs_tiny_on_cpu(script, args, tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    assert len(table) >= 3 and "failed" not in r.stdout and "nan |" not in "".join(table[2:]).replace("| nan |", "")
