"""Command-line entry for the pack's tools, from a plain checkout or a ComfyUI custom_nodes folder.

    python tools.py demo                      # tiny random model: convert, load in FP8, sample, compare with bf16
    python tools.py convert SRC DST --policy fp8-balanced
    python tools.py inspect FILE
    python tools.py quality FILE --policies fp8-balanced,fp8-max
    python tools.py bench NAME [args...]       # GPU benchmarks in bench/ (tools.py bench --help lists them)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from pack_path import load_pack  # noqa: E402

BENCH = ROOT / "bench"
BENCH_EPILOG = "bench NAME [args]: the GPU benchmarks in bench/ (tools.py bench --help lists them)"


def benchmarks() -> dict[str, Path]:
    """Benchmark name -> script: every ``bench/bench_<name>.py``."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH.glob("bench_*.py"))}


def _summary(script: Path) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def bench_help() -> str:
    lines = ["usage: tools.py bench NAME [args...]   (tools.py bench NAME --help: that benchmark's options)", "",
             "benchmarks (they need a CUDA GPU; those with --tiny also run on the CPU with --tiny --device cpu):"]
    lines += [f"  {name:<10} {_summary(path)}" for name, path in benchmarks().items()]
    return "\n".join(lines)


def _cuda_available() -> bool:
    import warnings

    import torch

    with warnings.catch_warnings():  # a driver too old for this torch only warns; the answer is what counts
        warnings.simplefilter("ignore")
        return torch.cuda.is_available()


def _wants_cpu(args: list[str]) -> bool:
    return any(a == "--device=cpu" or (a == "--device" and args[i + 1:i + 2] == ["cpu"]) for i, a in enumerate(args))


def run_bench(args: list[str]) -> int:
    """``tools.py bench NAME [args]``: run ``bench/bench_NAME.py`` in a new interpreter, or say why not in one line."""
    scripts = benchmarks()
    if not args or args[0] in ("-h", "--help"):
        print(bench_help())
        return 0
    name, rest = args[0], args[1:]
    if name not in scripts:
        print(f"error: unknown benchmark {name!r}; choose one of {', '.join(scripts)} (tools.py bench --help)",
              file=sys.stderr)
        return 2
    if not any(a in ("-h", "--help") for a in rest) and not _wants_cpu(rest) and not _cuda_available():
        hint = ""
        if "--tiny" in scripts[name].read_text(encoding="utf-8"):
            hint = f"; a CPU smoke test of the harness: tools.py bench {name} --tiny --device cpu"
        print(f"error: bench {name} needs a CUDA GPU and this machine has none usable by torch "
              f"(torch.cuda.is_available() is False){hint}", file=sys.stderr)
        return 2
    try:
        return subprocess.call([sys.executable, str(scripts[name]), *rest])
    except KeyboardInterrupt:
        print(f"interrupted: bench {name} stopped", file=sys.stderr)
        return 130


def main(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    load_pack()
    from hyvideo_fp8.hunyuan.cli import main as cli_main

    return cli_main(argv, epilog=BENCH_EPILOG)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
