"""The command line: the README's main job (demo) runs end to end, and bad input gives one clear line."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_demo_runs_the_embedded_tiny_model(tmp_path):
    r = run("demo", "--out", str(tmp_path), "--steps", "3", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fp8-balanced" in r.stdout and "final latent rel. L2 vs bf16" in r.stdout
    err = float(r.stdout.strip().splitlines()[-2].split("|")[3])
    assert 0 < err < 0.05  # measured 3e-4 on the tiny model: FP8 moves the result, not by much
    assert (tmp_path / "demo_latents.safetensors").exists()


def test_inspect_and_convert_report_bad_input_in_one_line(tmp_path):
    r = run("inspect", str(tmp_path / "missing.safetensors"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    r = run("convert", str(bad), str(tmp_path / "out.safetensors"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "out.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
