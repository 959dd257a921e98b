"""A results folder's files and how to read them back: ``run.json``, ``rows.jsonl`` (one row per edit),
``methods.jsonl`` (one record per method and session), ``scores.jsonl`` (scores added after the run). Reads and writes
files only (no torch, no models), so the report and the loop share it without importing each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmark import store

RUN_FILE = "run.json"
ROWS = "rows"
METHODS = "methods"
SCORES = "scores"


def read_run(out: Path) -> dict[str, Any] | None:
    path = out / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_run(out: Path, run: dict[str, Any]) -> None:
    """Atomic write (tmp + rename) of run.json."""
    tmp = out / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(store.jsonable(run), indent=2, sort_keys=False, default=str))
    os.replace(tmp, out / RUN_FILE)



def merged_rows(out: Path) -> list[dict[str, Any]]:
    """Rows (one per key) with later scores (``scores.jsonl``) applied over inline ones."""
    rows = store.dedupe(store.read_all(out, ROWS))
    scores = {store.row_key(s): s for s in store.read_jsonl(out / f"{SCORES}.jsonl")}
    merged = []
    for row in rows:
        s = scores.get(store.row_key(row))
        if s is not None:
            row = {**row, **{k: v for k, v in s.items() if k not in store.KEY_FIELDS}}
        merged.append(row)
    return merged
