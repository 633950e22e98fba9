"""The quality report's data and its three renderings: text for people, JSON for tools, a PNG plot (Pillow).

Kept apart from the runs themselves (``hunyuan.quality``) so a saved JSON can be re-rendered and the verdict rules
are in one readable place.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import write_atomic
from .quality_plot import FLOOR_COLOR, PALETTE, Series, line_plot, png_bytes

__all__ = ["RunResult", "QualityReport", "verdict", "REPORT_VERSION"]

REPORT_VERSION = 1

logger = logging.getLogger("hyvideo_fp8")


@dataclass
class RunResult:
    """One sampling run compared with the reference (all errors are against the reference run's tensors).

    ``step_rel_l2`` / ``step_cosine``: the model output at every step of this run's own trajectory (accumulated
    drift included). ``one_step_rel_l2``: this run's model on the reference's input of that step (the error one
    step adds, which ``PrecisionPolicy.error_budget`` bounds). Frames metrics are None without a VAE.
    """

    name: str
    kind: str  # "reference", "floor" or "candidate"
    description: str
    budget: float | None = None
    hybrid: tuple[int, int] = (0, 0)
    step_rel_l2: list[float] = field(default_factory=list)
    step_cosine: list[float] = field(default_factory=list)
    one_step_rel_l2: list[float] = field(default_factory=list)
    final_rel_l2: float | None = None
    final_cosine: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    wall_s: float = 0.0
    peak_memory_bytes: int | None = None
    nonfinite_step: int | None = None
    fp8_layers: int = 0
    rounded_high_precision_layers: int = 0
    verdict: str = ""

    @property
    def worst_one_step(self) -> tuple[float, int] | None:
        """(largest one-step error, its step); inf counts as the largest."""
        if not self.one_step_rel_l2:
            return None
        i = max(range(len(self.one_step_rel_l2)), key=lambda k: _sort_key(self.one_step_rel_l2[k]))
        return self.one_step_rel_l2[i], i


def _sort_key(v: float) -> float:
    return math.inf if math.isnan(v) else v


def verdict(run: RunResult, floor: RunResult | None) -> str:
    """One line: PASS/FAIL against the budget, BROKEN on non-finite output, NO BUDGET when the policy states none."""
    if run.nonfinite_step is not None:
        return f"BROKEN: non-finite model output at step {run.nonfinite_step}"
    worst = run.worst_one_step
    if worst is None:
        return "NO DATA: no steps were compared"
    err, step = worst
    floor_err = floor.worst_one_step[0] if floor is not None and floor.worst_one_step else None
    where = f"worst one-step error {err:.3g} at step {step}"
    noise = ""
    if floor_err is not None and err <= floor_err:
        noise = " (within the kernel noise floor)"
    elif floor_err:
        noise = f" ({err / floor_err:.1f}x the noise floor {floor_err:.3g})"
    budget = run.budget or 0.0
    if budget > 0:
        if err <= budget:
            return f"PASS: {where} <= budget {budget:g}{noise}"
        return f"FAIL: {where} > budget {budget:g}{noise}"
    if err == 0:
        return "PASS: identical to the reference at every step"
    return f"NO BUDGET: {where}{noise}; the policy states error_budget 0, set one to get a pass/fail verdict"


def _finite_or_str(v: Any) -> Any:
    """JSON has no inf/NaN: write them as strings so the file stays standard JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _finite_or_str(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_str(x) for x in v]
    return v


def _fmt(v: float | None, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


@dataclass
class QualityReport:
    """Everything the report says: the setup and its caveats (``notes``), the reference, the floor, the candidates."""

    setup: dict[str, Any]
    notes: list[str]
    reference: RunResult
    floor: RunResult | None
    candidates: list[RunResult]
    version: int = REPORT_VERSION

    def runs(self) -> list[RunResult]:
        return [self.reference, *([self.floor] if self.floor else []), *self.candidates]

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_str({
            "version": self.version, "setup": self.setup, "notes": self.notes,
            "reference": asdict(self.reference), "noise_floor": asdict(self.floor) if self.floor else None,
            "candidates": [asdict(c) for c in self.candidates],
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        s = self.setup
        lines = ["HunyuanVideo FP8 quality report", ""]
        lines += [f"{k}: {v}" for k, v in s.items()]
        lines += ["", *[f"* {n}" for n in self.notes], ""]
        header = (f"{'run':<28} {'1-step max':>10} {'last step':>10} {'final lat.':>10} {'final cos':>10} "
                  f"{'PSNR dB':>8} {'SSIM':>7} {'time':>8} {'peak mem':>10}")
        lines += [header, "-" * len(header)]
        for r in self.runs():
            worst = r.worst_one_step
            last = r.step_rel_l2[-1] if r.step_rel_l2 else None
            lines.append(
                f"{r.name[:28]:<28} {_fmt(worst[0] if worst else None):>10} {_fmt(last):>10} "
                f"{_fmt(r.final_rel_l2):>10} {_fmt(r.final_cosine, '.6f'):>10} {_fmt(r.psnr_db, '.2f'):>8} "
                f"{_fmt(r.ssim, '.4f'):>7} {r.wall_s:>7.2f}s {_gib(r.peak_memory_bytes):>10}")
        lines += ["", "relative L2 error of the model output per step (own trajectory):"]
        for r in self.runs()[1:]:
            lines.append(f"  {r.name[:28]:<28} " + " ".join(_fmt(v, ".2e") for v in r.step_rel_l2))
        lines += ["", "verdicts:"]
        lines += [f"  {c.name}: {c.verdict}" for c in self.candidates]
        return "\n".join(lines) + "\n"

    def plot(self) -> np.ndarray:
        """Per-step error of every candidate (solid), its budget (dashed, same colour) and the noise floor (grey)."""
        series = []
        if self.floor is not None:
            series.append(Series("noise floor (kernel swap)", self.floor.step_rel_l2, FLOOR_COLOR))
        for i, c in enumerate(self.candidates):
            color = PALETTE[i % len(PALETTE)]
            series.append(Series(c.name, c.step_rel_l2, color))
            if c.budget:
                series.append(Series(f"budget {c.budget:g} (one step)", [c.budget] * len(c.step_rel_l2), color,
                                     dashed=True))
        return line_plot(series, "rel. L2 error of the model output per step vs the bf16 reference (log)")

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``report.json``, ``report.txt`` and ``error_per_step.png`` into ``out_dir`` (created if needed),
        each atomically. Without Pillow the plot is left out with one warning; the returned paths say what was
        written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": write_atomic(out / "report.json", self.to_json().encode("utf-8")),
                 "text": write_atomic(out / "report.txt", self.to_text().encode("utf-8"))}
        try:
            image = png_bytes(self.plot())
        except ImportError as e:
            logger.warning("[hyvideo_fp8] error_per_step.png not written: %s", e)
        else:
            paths["plot"] = write_atomic(out / "error_per_step.png", image)
        return paths
