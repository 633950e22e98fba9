"""Which loader runs each file layout the converter writes, so the converter, its node and the README can say it.

``STOCK_LOADER`` records what ComfyUI's own "Load Diffusion Model" (UNETLoader) does with each layout in the ComfyUI
versions the pack is tested against (``tests/host/test_host_converted_files.py`` runs every cell against a real
ComfyUI of that version and fails when a cell is wrong): ``"runs"`` (the file's dequantized weights, correctly),
``"refuses"`` (a load error) or ``"wrong"`` (loads, but runs FP8 weights without their scales: never offer it there).
Our own loader reads every layout in every version.
"""

from __future__ import annotations

TESTED_COMFYUI = ("0.3.64", "0.29.0")

STOCK_LOADER: dict[str, dict[str, str]] = {
    # per-channel scales and a key prefix that stock detection does not strip: refused, never misread
    "ours": {"0.3.64": "refuses", "0.29.0": "refuses"},
    # 0.3.64 predates comfy_quant: it drops the scales and runs the raw FP8 values
    "comfy_quant": {"0.3.64": "wrong", "0.29.0": "runs"},
    # the legacy per-tensor layout: read by old and new ComfyUI (0.29 converts it on load)
    "scaled_fp8": {"0.3.64": "runs", "0.29.0": "runs"},
}


def stock_outcome(output_format: str, comfyui_version: str) -> str | None:
    """What the stock loader of ``comfyui_version`` does with ``output_format`` (``None``: not tested)."""
    if output_format not in STOCK_LOADER:
        raise ValueError(f"unknown output format {output_format!r}; known: {list(STOCK_LOADER)}")
    return STOCK_LOADER[output_format].get(comfyui_version)


def loaders_note(output_format: str) -> str:
    """One sentence naming the loaders that run a file of ``output_format``."""
    stock = STOCK_LOADER[output_format]
    runs = [v for v, outcome in stock.items() if outcome == "runs"]
    wrong = [v for v, outcome in stock.items() if outcome == "wrong"]
    note = "loads with the HunyuanVideo FP8 Loader (any ComfyUI)"
    if runs:
        note += f" and ComfyUI's own Load Diffusion Model in {', '.join(runs)} (tested)"
    else:
        note += "; ComfyUI's own Load Diffusion Model refuses it"
    if wrong:
        note += (f"; NOT with ComfyUI {', '.join(wrong)}'s own loader, which would run it wrongly "
                 "(convert to scaled_fp8 for that version)")
    return note


def markdown_table() -> str:
    """The README's table: each layout against each tested ComfyUI's stock loader, and ours."""
    words = {"runs": "runs it", "refuses": "refuses it", "wrong": "**runs it wrongly: do not use**"}
    head = ["layout", *(f"ComfyUI {v} Load Diffusion Model" for v in TESTED_COMFYUI), "HunyuanVideo FP8 Loader"]
    rows = [head, ["---"] * len(head)]
    for fmt, stock in STOCK_LOADER.items():
        rows.append([f"`{fmt}`", *(words[stock[v]] for v in TESTED_COMFYUI), "runs it"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


__all__ = ["TESTED_COMFYUI", "STOCK_LOADER", "stock_outcome", "loaders_note", "markdown_table"]
