"""bench/readme_tables.py: the README's benchmark tables are exactly what bench/results holds, and the cell rules."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_results():
    assert _module().main(["--check"]) == 0, "run: python bench/readme_tables.py --write"


def _write(folder: Path, name: str, date: str, rows: list[tuple[str, str, float]], gpu: str = "GPU") -> None:
    results = [{"variant": v, "size": s, "step_s": t, "peak_gib": 2 * t, "weight_gib": 1.0,
                "rel_l2_vs_ours_bf16": 0.0 if v == "ours-bf16" else 0.05} for v, s, t in rows]
    (folder / name).write_text(json.dumps({"env": {"date": date, "gpu": gpu}, "data": {"results": results}}))


def test_each_cell_is_the_newest_run_with_its_own_baseline(tmp_path):
    rt = _module()
    small = "480x848x61f"
    _write(tmp_path, "step-old.json", "2026-01-01 00:00 UTC",
           [("native-bf16", small, 2.0), ("fp8-max", small, 1.0), ("fp8-balanced", small, 1.5)])
    _write(tmp_path, "step-new.json", "2026-02-01 00:00 UTC",
           [("native-bf16", small, 4.0), ("fp8-balanced", small, 1.0)])
    _write(tmp_path, "step-no-baseline.json", "2026-03-01 00:00 UTC", [("fp8-max", small, 0.1)])
    found = rt.cells(rt.load_runs(tmp_path))
    assert found["fp8-balanced", small, "GPU"][2]["file"] == "step-new.json"  # newest run with both
    assert found["fp8-max", small, "GPU"][2]["file"] == "step-old.json"  # the newer one: no native bf16
    text = rt.tables(rt.load_runs(tmp_path))
    assert "**1.000 s (4.00x)**" in text and "**1.000 s (2.00x)**" in text  # each against its own run's baseline
    assert "544x960x129f" not in text  # sizes nobody ran are left out


def test_runs_on_different_gpus_get_their_own_columns(tmp_path):
    rt = _module()
    small = "480x848x61f"
    _write(tmp_path, "step-a.json", "2026-01-01 00:00 UTC", [("native-bf16", small, 2.0), ("fp8-max", small, 1.0)],
           gpu="NVIDIA H200")
    _write(tmp_path, "step-b.json", "2026-02-01 00:00 UTC", [("native-bf16", small, 3.0), ("fp8-balanced", small, 1.0)],
           gpu="NVIDIA H100 80GB HBM3")
    text = rt.tables(rt.load_runs(tmp_path))
    assert f"| variant | {small} (H200) | {small} (H100) |" in text
    # each GPU's cells against that GPU's own baseline; a variant one GPU did not run is "–" there
    assert "| ours, `fp8-max` | **1.000 s (2.00x)** | – |" in text
    assert "| ours, `fp8-balanced` (default) | – | **1.000 s (3.00x)** |" in text


def test_replacing_the_block_needs_the_markers():
    rt = _module()
    text = f"intro\n{rt.BEGIN}\nold\n{rt.END}\noutro"
    assert rt.replace_block(text, "NEW") == "intro\nNEW\noutro"
    with pytest.raises(ValueError, match="generated-tables block"):
        rt.replace_block("no markers", "NEW")
