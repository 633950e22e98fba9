"""Shared helpers for the GPU benchmarks: environment record, timing, result files.

Each benchmark is one script run in one process; it prints a short table last and writes the same
table plus the raw numbers to ``bench/results/<name>-<date>-<gpu>.{md,json}``.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def load_pack() -> None:
    """Import the checkout as ``hyvideo_fp8`` (benchmarks run from a plain checkout)."""
    sys.path.insert(0, str(REPO))
    from pack_path import load_pack as _load

    _load()


def import_comfy(path: str):
    """``(comfy.sd, comfy.model_management)`` from the ComfyUI source tree at ``path``, imported as a library (no
    argument parsing), once per process."""
    if path not in sys.path:
        sys.path.insert(0, path)
    sys.dont_write_bytecode = True
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()  # read when comfy.model_management is imported
    import comfy.model_management
    import comfy.sd
    import comfyui_version  # noqa: F401  (recorded by environment())

    return comfy.sd, comfy.model_management


def environment() -> dict:
    """Date, GPU, torch/Triton/CUDA versions and the command line: what every result file records."""
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["cudnn"] = torch.backends.cudnn.version()
    if "comfyui_version" in sys.modules:  # a ComfyUI tree was imported for the native baseline
        env["comfyui"] = sys.modules["comfyui_version"].__version__
    return env


@dataclass
class Measured:
    """One call's output (None when it ran out of memory), seconds, peak GPU memory above ``floor`` and a note."""

    out: object
    seconds: float
    peak: int
    note: str


def measure_peak(fn: Callable[[], torch.Tensor], floor: int | None = None) -> Measured:
    """Run ``fn`` under ``torch.inference_mode`` (as ComfyUI runs its nodes), synchronized: its seconds and peak GPU
    memory above ``floor`` bytes (default: what is allocated when it starts), "out of memory" instead of raising,
    "non-finite" for an output with NaN/Inf."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        floor = torch.cuda.memory_allocated() if floor is None else floor
    started = time.perf_counter()
    out, note = None, "ok"
    try:
        with torch.inference_mode():
            out = fn()
        if cuda:
            torch.cuda.synchronize()
        if not torch.isfinite(out).all():
            note = "non-finite"
    except torch.OutOfMemoryError as e:
        note = "out of memory"
        print(f"[{Path(sys.argv[0]).stem}] {str(e).splitlines()[0]}", flush=True)
    peak = torch.cuda.max_memory_allocated() - floor if cuda else 0
    return Measured(out, time.perf_counter() - started, peak, note)


def time_cuda(fn: Callable[[], object], warmup: int = 1, runs: int = 3) -> list[float]:
    """Seconds per call, timed with CUDA events after warm-up (host clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            import time

            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_result(name: str, env: dict, table_md: str, data: dict, notes: str = "") -> Path:
    """Write ``<name>-<date>-<gpu>.md`` and ``.json`` under bench/results and return the .md path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    gpu = env["gpu"].replace("NVIDIA ", "").replace(" ", "-").lower()
    stem = f"{name}-{env['date'][:10]}-{gpu}"
    md = RESULTS / f"{stem}.md"
    head = "\n".join(f"- {k}: {v}" for k, v in env.items())
    md.write_text(f"# {name}\n\n{head}\n\n{table_md}\n\n{notes}\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"env": env, "data": data}, indent=1, default=str))
    return md
