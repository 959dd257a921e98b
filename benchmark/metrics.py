"""Benchmark metrics as pure functions of embeddings, numbers and tables (no models here).

Per row (one edit):

* ``id_sim``: cosine between the source face's and the output face's identity embeddings (largest face of each).
  No face in the output: ``id_sim`` is null and ``no_face_output`` true; the row stays in the table and counts in
  ``no_face_output_rate``. No face in the source: ``no_face_source`` true, ``id_sim`` null (there is no identity
  to compare with); those rows are left out of the identity statistics and counted in ``no_face_source_rate``.
* ``id_sim_strict`` (derived in :func:`summarize`): ``id_sim`` with a missing output face scored 0, so a method
  cannot raise its identity mean by destroying faces.
* ``clip_t`` = cos(E_I(output), E_T(target caption)); ``clip_i`` = cos(E_I(source), E_I(output));
  ``clip_dir`` = cos(E_I(output) - E_I(source), E_T(target caption) - E_T(source caption)), 0 where either
  difference has norm below ``eps`` (as :meth:`instantportrait.eval.clip_score.ClipScorer.directional`).

Per method (:func:`summarize`): mean and 95% confidence interval of each score (Student-t interval on the mean:
``mean ± t_{0.975, n-1} · s / √n``), failure rates, latency p50/p95 (numpy's linear-interpolation percentiles) and
the speed-up of IPNet over the method (``method p50 / IPNet p50``, measured in the same run).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# The per-row scores live with the one Scorer (torch-free); named here too for the tables and older callers.
from instantportrait.eval.metrics import (  # noqa: F401
    DIRECTIONAL_EPS,
    clip_scores,
    cosine,
    directional,
    identity_scores,
)

CONFIDENCE = 0.95
REFERENCE_METHOD = "ipnet"

# (column, label, higher is better?) of the per-row scores, in table order.
SCORE_COLUMNS: tuple[tuple[str, str, bool | None], ...] = (
    ("id_sim", "ID sim", True),
    ("id_sim_strict", "ID sim (no face = 0)", True),
    ("id_sim_2", "ID sim (2nd model)", True),
    ("clip_t", "CLIP-T", True),
    ("clip_dir", "CLIP-dir", True),
    ("clip_i", "CLIP-I", None),  # high = close to the source: identity kept, or edit not made
)


# ---------------------------------------------------------------------------------------------------------- stats
@dataclass(frozen=True)
class MeanCI:
    """Mean with a two-sided Student-t confidence interval; ``lo``/``hi`` are NaN with fewer than 2 values."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0


def _clean(values: Iterable[Any]) -> np.ndarray:
    arr = pd.to_numeric(pd.Series(list(values), dtype="object"), errors="coerce").to_numpy(dtype=np.float64)
    return arr[np.isfinite(arr)]


def mean_ci(values: Iterable[Any], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and t-interval of the finite values (None / NaN are ignored)."""
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = _clean(values)
    n = int(arr.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(arr.mean())
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, n)
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sem
    return MeanCI(mean, mean - half, mean + half, n)


def percentile(values: Iterable[Any], q: float) -> float:
    """The ``q``-th percentile (0-100) of the finite values (linear interpolation); NaN when there are none."""
    arr = _clean(values)
    return float(np.percentile(arr, q)) if arr.size else math.nan


def rate(flags: Iterable[Any]) -> float:
    """Fraction of true values among the non-null ones; NaN when there are none."""
    vals = [bool(f) for f in flags if f is not None and not (isinstance(f, float) and math.isnan(f))]
    return sum(vals) / len(vals) if vals else math.nan


# ---------------------------------------------------------------------------------------------------------- tables
def flags(series: pd.Series, missing: bool) -> pd.Series:
    """A boolean Series from a column of True/False/None/NaN, with ``missing`` for None/NaN."""
    def one(v: Any) -> bool:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return missing
        return bool(v)

    return series.map(one).astype(bool)


def add_derived_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """``id_sim_strict`` (missing output face = 0, rows without a source face left out) on a copy of ``rows``."""
    df = rows.copy()
    for col in ("id_sim", "no_face_source", "no_face_output"):
        if col not in df:
            df[col] = None
    sim = pd.to_numeric(df["id_sim"], errors="coerce")
    no_out = flags(df["no_face_output"], False)
    has_src = ~flags(df["no_face_source"], True)  # unscored rows count as "no source face"
    strict = pd.Series(np.nan, index=df.index, dtype=np.float64)
    strict[has_src & no_out] = 0.0
    strict[has_src & ~no_out] = sim[has_src & ~no_out]
    df["id_sim_strict"] = strict
    return df


def summarize(rows: pd.DataFrame, methods: dict[str, dict[str, Any]] | None = None,
              reference: str = REFERENCE_METHOD, confidence: float = CONFIDENCE,
              order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method: score means and CIs, failure rates, latency percentiles, speed-up, facts.

    ``rows``: the per-sample rows (columns as written by the loop; ``status`` "ok" or "error"). ``methods``:
    per-method facts from the run (``status``, ``message``, ``label``, ``nfe``, ``params``, ``load_s``,
    ``loop_overhead_share``); a method there with no rows (e.g. unavailable) still gets a line. Scores are taken
    from rows with ``status == "ok"`` and ``scored`` true; latency from rows with ``status == "ok"``.
    """
    methods = methods or {}
    df = add_derived_columns(rows) if len(rows) else rows
    names = list(order) if order else []
    for name in list(df["method"].unique() if len(df) else []) + list(methods):
        if name not in names:
            names.append(name)
    records = []
    for name in names:
        info = methods.get(name, {})
        sub = df[df["method"] == name] if len(df) else df
        ok = sub[sub["status"] == "ok"] if len(sub) else sub
        scored = ok[flags(ok["scored"], False)] if len(ok) and "scored" in ok else ok.iloc[0:0]
        rec: dict[str, Any] = {
            "method": name, "label": info.get("label", name),
            "status": info.get("status", "ok" if len(sub) else "no rows"), "message": info.get("message", ""),
            "n_rows": int(len(sub)), "n_ok": int(len(ok)), "n_scored": int(len(scored)),
        }
        for col, _, _ in SCORE_COLUMNS:
            ci = mean_ci(scored[col] if col in scored else [], confidence)
            rec.update({f"{col}_mean": ci.mean, f"{col}_lo": ci.lo, f"{col}_hi": ci.hi, f"{col}_n": ci.n})
        with_src = scored[~flags(scored["no_face_source"], True)] if len(scored) else scored
        rec["no_face_output_rate"] = rate(with_src["no_face_output"]) if len(with_src) else math.nan
        if "no_face_output_2" in with_src and "no_face_source_2" in with_src and len(with_src):
            src2 = with_src[~flags(with_src["no_face_source_2"], True)]
            rec["no_face_output_rate_2"] = rate(src2["no_face_output_2"]) if len(src2) else math.nan
        else:
            rec["no_face_output_rate_2"] = math.nan
        rec["no_face_source_rate"] = rate(scored["no_face_source"]) if len(scored) else math.nan
        rec["error_rate"] = float((sub["status"] != "ok").mean()) if len(sub) else math.nan
        edit_ms = ok["edit_ms"] if "edit_ms" in ok else []
        rec["latency_p50_ms"] = percentile(edit_ms, 50)
        rec["latency_p95_ms"] = percentile(edit_ms, 95)
        rec["latency_mean_ms"] = float(np.mean(_clean(edit_ms))) if len(_clean(edit_ms)) else math.nan
        harness = _clean(ok["harness_ms"]) if "harness_ms" in ok else np.array([])
        edits = _clean(edit_ms)
        rec["harness_share"] = float(harness.sum() / edits.sum()) if harness.size and edits.sum() > 0 else math.nan
        rec["loop_overhead_share"] = _float(info.get("loop_overhead_share"))
        mem = _clean(ok["mem_peak_mb"]) if "mem_peak_mb" in ok else np.array([])
        rec["mem_peak_mb"] = float(mem.max()) if mem.size else math.nan
        rec["mem_kind"] = info.get("mem_kind") or (str(ok["mem_kind"].iloc[0]) if "mem_kind" in ok and len(ok)
                                                   else "")
        nfe = info.get("nfe", ok["nfe"].iloc[0] if "nfe" in ok and len(ok) else None)
        rec["nfe"] = _float(nfe)
        rec["params_m"] = _float(info.get("params")) / 1e6 if info.get("params") is not None else math.nan
        rec["load_s"] = _float(info.get("load_s"))
        rec["weights_mb"] = _float(info.get("weights_mb"))
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    if len(table):
        ref = table.loc[table["method"] == reference, "latency_p50_ms"]
        ref_p50 = float(ref.iloc[0]) if len(ref) and np.isfinite(ref.iloc[0]) and ref.iloc[0] > 0 else math.nan
        table["ipnet_speedup"] = table["latency_p50_ms"] / ref_p50
    return table


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan
