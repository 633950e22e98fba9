"""The command line: the README's main job (demo) runs end to end, and bad input gives one clear line."""

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoint_factory import write_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def _one_line_error(r: subprocess.CompletedProcess, rc: int = 2) -> str:
    assert r.returncode == rc, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_demo_runs_the_embedded_tiny_model(tmp_path):
    r = run("demo", "--out", str(tmp_path), "--steps", "3", "--device", "cpu", cwd=tmp_path, umask=0o022)
    assert r.returncode == 0, r.stderr
    assert "fp8-balanced" in r.stdout and "final latent rel. L2 vs bf16" in r.stdout
    lines = r.stdout.strip().splitlines()
    err = float(lines[-2].split("|")[3])
    assert 0 < err < 0.05  # measured 3e-4 on the tiny model: FP8 moves the result, not by much
    assert lines[-1].startswith("OK: fp8-balanced stays within 0.05 of bf16")
    assert "9 frames at 64x96 pixels (a 3x8x12 latent, 16 channels)" in r.stdout
    assert "ConversionReport(" not in r.stdout
    for f in tmp_path.iterdir():  # written under the umask, like any other tool's output
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert (tmp_path / "demo_latents.safetensors").exists()


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """tools.py's command line in this process (no interpreter start-up): exit code, stdout, stderr."""
    from hyvideo_fp8.hunyuan.cli import main

    rc = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err and (rc == 0 or len(err.strip().splitlines()) == 1), err
    return rc, out, err


def test_inspect_and_convert_report_bad_input_in_one_line(tmp_path, capsys):
    rc, _, err = _main(capsys, "inspect", str(tmp_path / "missing.safetensors"))
    assert rc == 2 and "does not exist" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    rc, _, err = _main(capsys, "convert", str(bad), str(tmp_path / "out.safetensors"))
    assert rc == 2 and "invalid JSON" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
    rc, _, err = _main(capsys, "inspect", str(tmp_path))
    assert rc == 2 and "is a folder, not a file" in err


def test_inspect_prints_parameters_in_a_unit_that_fits(tmp_path, capsys):
    write_checkpoint(tmp_path / "m.safetensors")
    rc, out, _ = _main(capsys, "inspect", str(tmp_path / "m.safetensors"))
    assert rc == 0 and re.search(r"size: +120 tensors, 632\.64 k parameters", out)


def test_convert_prints_its_summary_and_names_the_overwrite_flag(tmp_path, capsys):
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    write_checkpoint(src)
    dst.write_bytes(b"keep me")
    rc, _, err = _main(capsys, "convert", str(src), str(dst), "--policy", "fp8-max")
    assert rc == 2 and "already exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert dst.read_bytes() == b"keep me"
    rc, out, _ = _main(capsys, "convert", str(src), str(dst), "--policy", "fp8-max", "--overwrite")
    assert rc == 0 and out.startswith("src.safetensors (v1, comfyui, high precision) -> dst.safetensors [ours, policy")
    assert len(out.strip().splitlines()) == 1 and "ConversionReport(" not in out and " MiB in " in out
    rc, _, err = _main(capsys, "convert", str(src), str(tmp_path / "x.safetensors"), "--policy", "{}")
    assert rc == 2 and "stores no linear in FP8" in err


_SIGNAL = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from pack_path import load_pack
load_pack()
from hyvideo_fp8.hunyuan import cli
from hyvideo_fp8.hunyuan.checkpoint.writer import StreamingSafetensorsWriter
real = StreamingSafetensorsWriter.write
which = []

def write(self, name, tensor):  # the signal arrives from outside while the output is half written
    real(self, name, tensor)
    if self.written == 5:
        os.kill(os.getpid(), which[0])

StreamingSafetensorsWriter.write = write
codes = {{}}
for sig in (signal.SIGINT, signal.SIGTERM):
    which[:] = [sig]
    codes[sig.name] = cli.main(["convert", {src!r}, {dst!r}, "--policy", "fp8-max", "--overwrite"])
    codes[sig.name + "_files"] = sorted(os.listdir({folder!r}))
print(json.dumps(codes))
"""


def test_ctrl_c_and_sigterm_during_convert_leave_nothing_behind(tmp_path):
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    write_checkpoint(src)
    dst.write_bytes(b"old version")
    code = _SIGNAL.format(root=str(ROOT), src=str(src), dst=str(dst), folder=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    assert codes["SIGINT"] == codes["SIGTERM"] == 130
    assert codes["SIGINT_files"] == codes["SIGTERM_files"] == ["dst.safetensors", "src.safetensors"]
    assert dst.read_bytes() == b"old version"
    lines = r.stderr.strip().splitlines()
    assert lines == ["interrupted (Ctrl-C): convert stopped; no partial output was left behind",
                     "interrupted (SIGTERM): convert stopped; no partial output was left behind"]


def _tools():
    spec = importlib.util.spec_from_file_location("tools_entry", ROOT / "tools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_help_lists_the_benchmarks(capsys):
    tools = _tools()
    assert tools.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("step", "linear", "attention", "fused", "quality", "prologue"):
        assert f"\n  {name} " in out
    assert tools.main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'; choose one of attention" in err and len(err.strip().splitlines()) == 1
    assert "bench NAME" in tools.BENCH_EPILOG


def test_bench_without_a_gpu_says_so_at_once(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert _tools().main(["bench", "step", "--sizes", "480x848x61f"]) == 2
    err = capsys.readouterr().err
    assert "bench step needs a CUDA GPU" in err and "--tiny --device cpu" in err and len(err.strip().splitlines()) == 1
