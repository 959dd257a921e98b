"""Which card each method needs: ``vram.md`` / ``vram.csv`` from a latency run's table (files only, like the report).

One row per method: its peak GPU memory plain and under each offload mode the run timed (``peak_mb``:
``torch.cuda.max_memory_allocated`` from before the method's load to its last timed edit, reset per method, see
:func:`benchmark.latency.time_method`), the smallest common card that holds it, and what the offload costs in
latency (p50 offloaded / p50 plain, same run). Fit rule: peak allocated + :data:`HEADROOM_GIB` (the CUDA context,
cuDNN workspaces and allocator slack, which ``max_memory_allocated`` does not count) within the card's nominal size.
Off CUDA the columns are there and say n/a: the host's memory says nothing about a card.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

CARDS_GB = (8, 12, 16, 24, 40, 80)  # common card sizes (GiB as sold: 8 GB = 8192 MiB)
HEADROOM_GIB = 1.0
NA = "n/a"


def smallest_card(peak_mb: float) -> str:
    """``"16 GB"`` for the smallest of :data:`CARDS_GB` holding ``peak_mb`` + headroom; ``"> 80 GB"``; n/a for NaN."""
    if peak_mb is None or not math.isfinite(float(peak_mb)):
        return NA
    need_gib = float(peak_mb) / 1024 + HEADROOM_GIB
    fits = [c for c in CARDS_GB if need_gib <= c]
    return f"{fits[0]} GB" if fits else f"> {CARDS_GB[-1]} GB"


def _gb(mb: Any) -> str:
    return NA if mb is None or not math.isfinite(float(mb)) else f"{float(mb) / 1024:.1f}"


def vram_table(table: pd.DataFrame) -> pd.DataFrame:
    """The display table: per method, Peak GB / Card per offload mode, and the offload's latency cost."""
    modes = list(dict.fromkeys(table.get("offload_asked", pd.Series(["none"] * len(table))).fillna("none")))
    rows = []
    for _, group in table.groupby("method", sort=False):
        by_mode = {r.get("offload_asked", "none") or "none": r for _, r in group.iterrows()}
        first = group.iloc[0]
        row: dict[str, Any] = {"Method": str(first["label"]).split(" [offload")[0],
                               "Res": "–" if pd.isna(first.get("resolution")) else str(int(first["resolution"]))}
        for mode in modes:
            r = by_mode.get(mode)
            ok = r is not None and r.get("status") == "ok"
            peak = float(r.get("peak_mb", math.nan)) if r is not None else math.nan
            name = "plain" if mode == "none" else f"offload {mode}"
            row[f"Peak GB ({name})"] = _gb(peak) if r is not None else NA
            row[f"Card ({name})"] = smallest_card(peak) if ok else (NA if r is None else str(r.get("status")))
            if mode != "none":
                cost = float(r.get("offload_cost", math.nan)) if r is not None else math.nan
                row[f"× latency ({name})"] = f"{cost:.2f}" if math.isfinite(cost) else NA
        rows.append(row)
    return pd.DataFrame(rows)


def write_vram_table(table: pd.DataFrame, meta: dict[str, Any], out: Path,
                     to_markdown: Callable[[pd.DataFrame], str]) -> dict[str, Path]:
    """Write ``vram.md`` and ``vram.csv`` next to the latency tables (``to_markdown``: the report's table writer,
    passed in so that this module does not import the report back); returns their paths."""
    out = Path(out)
    disp = vram_table(table)
    disp.to_csv(out / "vram.csv", index=False)
    env = meta.get("environment") or {}
    lines = [
        "# Which card each method needs", "",
        to_markdown(disp) if len(disp) else "(no method)", "",
        f"- device: {env.get('device_name')} ({env.get('device')}), dtype {meta.get('dtype')}, batch "
        f"{meta.get('batch_size')}" + (", random weights" if meta.get("random_weights") else ""),
        "- Peak GB: torch.cuda.max_memory_allocated from before the method's load to its last timed edit (reset per "
        "method), in GiB; n/a off CUDA",
        f"- Card: the smallest of {', '.join(map(str, CARDS_GB))} GB holding peak + {HEADROOM_GIB:g} GiB (CUDA "
        "context, workspaces, allocator slack)",
        "- × latency: p50 with that offload / p50 plain, same method, same run",
    ]
    (out / "vram.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"vram.md": out / "vram.md", "vram.csv": out / "vram.csv"}
