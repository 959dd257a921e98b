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

Per method (:func:`summarize`), for every numeric score column found in the rows (:func:`score_columns`: the ones
above, and any a scorer adds): the mean and a 95% percentile-bootstrap interval over *images*
(:func:`cluster_bootstrap`: the rows of one portrait, all its instructions and seeds, are resampled together, because
they share a face and are not independent), the share of rows without that score (errors, missing faces, unscored
rows: counted, never silently dropped), and the paired difference to IPNet (:func:`paired_difference`: the same
image x instruction x seed in both, the mean difference with the same image bootstrap). Also failure rates, latency
p50/p95 (numpy's linear-interpolation percentiles) and the speed-up of IPNet over the method (``method p50 / IPNet
p50``, measured in the same run; not for reference rows such as ``no-edit``, whose "latency" is the harness's). The
old row-level Student-t interval (``mean ± t_{0.975, n-1} · s / √n``, which treats rows as independent and is too
narrow) stays in the CSV/JSON only, as ``<score>_t_lo`` / ``<score>_t_hi``.
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
REFERENCE_METHOD = "ipnet"  # the speed-up's and the paired differences' baseline
NO_EDIT_METHOD = "no-edit"  # the registry's reference editor (instantportrait.methods.reference.NO_EDIT)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CLUSTER_COLUMN = "image"  # what the bootstrap resamples: whole images
PAIR_KEYS = ("image", "instruction_id", "seed")  # what a paired difference matches on
# Numeric row fields that are facts of the edit or bookkeeping, not scores (columns ending in _ms / _mb too).
NON_SCORE_COLUMNS = frozenset({"seed", "width", "height", "nfe", "rank", "time"})

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


def _floats(values: Iterable[Any]) -> np.ndarray:
    """Float64 array of ``values``, NaN for None / NaN / anything not a number (positions kept)."""
    return pd.to_numeric(pd.Series(list(values), dtype="object"), errors="coerce").to_numpy(dtype=np.float64)


def _clean(values: Iterable[Any]) -> np.ndarray:
    arr = _floats(values)
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


# ---------------------------------------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Bootstrap:
    """How every interval of the tables is computed: a seeded percentile bootstrap over clusters (images).

    Why images: the rows of one portrait share its face, lighting and framing, so 3 images x 20 instructions are not
    60 independent samples; resampling rows would give intervals far too narrow, resampling whole images does not.
    """

    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    confidence: float = CONFIDENCE
    cluster: str = CLUSTER_COLUMN

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")

    @property
    def percentiles(self) -> tuple[float, float]:
        """The interval's percentiles, e.g. (2.5, 97.5)."""
        tail = round(50.0 * (1.0 - self.confidence), 10)  # 2.5, not 2.5000000000000022
        return tail, 100.0 - tail

    def describe(self) -> str:
        lo, hi = self.percentiles
        return (f"{100 * self.confidence:g}% percentile bootstrap over {self.cluster}s ({self.resamples} resamples, "
                f"numpy seed {self.seed}; each resample draws as many {self.cluster}s as there are, with replacement, "
                f"keeping every row of a drawn {self.cluster} (all its instructions and seeds), and takes the mean of "
                f"their rows; interval = the {lo:g}th and {hi:g}th percentiles of those means)")


@dataclass(frozen=True)
class BootCI:
    """Mean of the finite values, its bootstrap interval (NaN with fewer than 2 clusters), how many values and
    clusters it used, and how many values were missing (None / NaN: counted, not silently dropped)."""

    mean: float
    lo: float
    hi: float
    n: int
    clusters: int
    missing: int

    @property
    def missing_rate(self) -> float:
        total = self.n + self.missing
        return self.missing / total if total else math.nan


def cluster_bootstrap(values: Iterable[Any], clusters: Iterable[Any] | None = None,
                      boot: Bootstrap | None = None) -> BootCI:
    """The mean of the finite ``values`` and a percentile-bootstrap interval of it, resampling ``clusters`` (one
    label per value, e.g. the image; ``None``: every value its own cluster, the row-level bootstrap).

    A resample draws as many clusters as there are, with replacement, and takes the mean of all finite values of
    the drawn clusters (a cluster drawn twice counts twice), so a cluster weighs by its rows as in the plain mean.
    Clusters are the labels of the finite values, sorted, so the result depends on the data and the seed only, not
    on the row order.
    """
    boot = boot or Bootstrap()
    vals = _floats(values)
    labels = np.arange(vals.size) if clusters is None else pd.Series(list(clusters), dtype="object").astype(str)
    if len(labels) != vals.size:
        raise ValueError(f"{vals.size} values but {len(labels)} cluster labels")
    finite = np.isfinite(vals)
    n, missing = int(finite.sum()), int(vals.size - finite.sum())
    if n == 0:
        return BootCI(math.nan, math.nan, math.nan, 0, 0, missing)
    codes, uniques = pd.factorize(np.asarray(labels)[finite], sort=True)
    sums = np.bincount(codes, weights=vals[finite])  # (C,)
    counts = np.bincount(codes).astype(np.float64)  # (C,)
    mean, k = float(vals[finite].mean()), len(uniques)
    if k < 2:
        return BootCI(mean, math.nan, math.nan, n, k, missing)
    rng = np.random.default_rng(boot.seed)
    chunk = max(1, 2_000_000 // k)  # bounds memory for large runs; fixed by k, so still reproducible
    means = []
    for start in range(0, boot.resamples, chunk):
        idx = rng.integers(0, k, size=(min(chunk, boot.resamples - start), k))  # (B, C) drawn clusters
        means.append(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))  # (B,)
    lo, hi = np.percentile(np.concatenate(means), boot.percentiles)
    return BootCI(mean, float(lo), float(hi), n, k, missing)


def paired_difference(rows: pd.DataFrame, method: str, baseline: str, column: str,
                      boot: Bootstrap | None = None, keys: Sequence[str] = PAIR_KEYS) -> BootCI:
    """``method``'s ``column`` minus ``baseline``'s on the same ``keys`` (image x instruction x seed): the mean
    difference and its bootstrap interval over images (:func:`cluster_bootstrap`).

    Every key either method has is a pair; a pair without a finite value on both sides (an error, a missing face, a
    row only one method has) is counted in ``missing``. Keys are unique per method (the results store keeps one row
    per key).
    """
    boot = boot or Bootstrap()

    def side(name: str) -> pd.DataFrame:
        sub = rows[rows["method"] == name]
        values = pd.to_numeric(sub[column], errors="coerce") if column in sub else pd.Series(np.nan, index=sub.index)
        return sub[list(keys)].assign(_v=values.astype(np.float64))

    pairs = side(method).merge(side(baseline), on=list(keys), how="outer", suffixes=("", "_base"))
    cluster = boot.cluster if boot.cluster in keys else keys[0]
    return cluster_bootstrap(pairs["_v"] - pairs["_v_base"], pairs[cluster], boot)


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


def score_columns(rows: pd.DataFrame) -> list[str]:
    """The score columns to aggregate: :data:`SCORE_COLUMNS` (always, in table order), then every other column of
    ``rows`` holding numbers only (not booleans, not numeric-looking strings), in the order found, so a scorer's new
    column (e.g. another identity backend's) gets its interval without a change here. Facts of the edit
    (:data:`NON_SCORE_COLUMNS`, ``*_ms``, ``*_mb``) are not scores."""
    names = [c for c, _, _ in SCORE_COLUMNS]
    for col in rows.columns:
        if col in names or col in NON_SCORE_COLUMNS or str(col).endswith(("_ms", "_mb")):
            continue
        values = rows[col].dropna()
        if not len(values) or pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_numeric_dtype(values) or values.map(
                lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        ).all():
            names.append(col)
    return names


def score_frame(rows: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of ``rows`` with each score column as floats, NaN where the row has no valid score (an error row, or
    not scored yet), so every statistic counts those rows as missing instead of leaving them out unseen."""
    df = rows.copy()
    if "status" in df and "scored" in df:
        valid = (df["status"] == "ok") & flags(df["scored"], False)
    else:
        valid = pd.Series(False, index=df.index)
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)
        df[col] = values.astype(np.float64).where(valid)
    return df


def is_reference_row(name: str, info: dict[str, Any] | None = None) -> bool:
    """A reference row (``no-edit``, or a method whose recorded ``describe`` says ``reference``): scored like a
    method, but not an edit, so left out of latency ratios."""
    return name == NO_EDIT_METHOD or bool(((info or {}).get("describe") or {}).get("reference"))


def summarize(rows: pd.DataFrame, methods: dict[str, dict[str, Any]] | None = None,
              reference: str = REFERENCE_METHOD, confidence: float = CONFIDENCE,
              order: Sequence[str] | None = None, boot: Bootstrap | None = None) -> pd.DataFrame:
    """One row per method: score means and intervals, paired differences to ``reference``, failure rates, latency
    percentiles, speed-up, facts.

    ``rows``: the per-sample rows (columns as written by the loop; ``status`` "ok" or "error"). ``methods``:
    per-method facts from the run (``status``, ``message``, ``label``, ``nfe``, ``params``, ``load_s``,
    ``loop_overhead_share``, ``describe``); a method there with no rows (e.g. unavailable) still gets a line. Scores
    are taken from rows with ``status == "ok"`` and ``scored`` true (every other row counts as missing in
    ``<score>_missing_rate``); latency from rows with ``status == "ok"``. ``boot``: how intervals are computed
    (default: :class:`Bootstrap` at ``confidence``).
    """
    methods = methods or {}
    boot = boot or Bootstrap(confidence=confidence)
    df = add_derived_columns(rows) if len(rows) else rows
    columns = score_columns(df)
    scores = score_frame(df, columns) if len(df) else df
    names = list(order) if order else []
    for name in list(df["method"].unique() if len(df) else []) + list(methods):
        if name not in names:
            names.append(name)
    records = []
    for name in names:
        info = methods.get(name, {})
        sub = scores[scores["method"] == name] if len(scores) else scores
        ok = sub[sub["status"] == "ok"] if len(sub) else sub
        scored = ok[flags(ok["scored"], False)] if len(ok) and "scored" in ok else ok.iloc[0:0]
        rec: dict[str, Any] = {
            "method": name, "label": info.get("label", name), "is_reference": is_reference_row(name, info),
            "status": info.get("status", "ok" if len(sub) else "no rows"), "message": info.get("message", ""),
            "n_rows": int(len(sub)), "n_ok": int(len(ok)), "n_scored": int(len(scored)),
            "n_images": int(sub[boot.cluster].nunique()) if boot.cluster in sub else 0,
        }
        rec.update(_score_stats(sub, columns, boot))
        rec.update(_face_rates(scored))
        rec["error_rate"] = float((sub["status"] != "ok").mean()) if len(sub) else math.nan
        rec.update(_run_facts(ok, info))
        rec.update(_paired_stats(scores, name, reference, columns, boot))
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    if len(table):
        method_rows = ~table["is_reference"].astype(bool)
        ref = table.loc[(table["method"] == reference) & method_rows, "latency_p50_ms"]
        ref_p50 = float(ref.iloc[0]) if len(ref) and np.isfinite(ref.iloc[0]) and ref.iloc[0] > 0 else math.nan
        table["ipnet_speedup"] = (table["latency_p50_ms"] / ref_p50).where(method_rows)
    return table


def _interval_fields(prefix: str, ci: BootCI) -> dict[str, Any]:
    return {f"{prefix}_mean": ci.mean, f"{prefix}_lo": ci.lo, f"{prefix}_hi": ci.hi, f"{prefix}_n": ci.n,
            f"{prefix}_images": ci.clusters, f"{prefix}_missing_rate": ci.missing_rate}


def _score_stats(sub: pd.DataFrame, columns: Sequence[str], boot: Bootstrap) -> dict[str, Any]:
    """Per score: mean, image-bootstrap interval, values and images used, missing share; and the old row-level
    Student-t interval as ``<score>_t_lo`` / ``<score>_t_hi`` (labelled: it treats rows as independent)."""
    rec: dict[str, Any] = {}
    clusters = sub[boot.cluster] if boot.cluster in sub else None
    for col in columns:
        values = sub[col] if col in sub else pd.Series(np.nan, index=sub.index)
        rec.update(_interval_fields(col, cluster_bootstrap(values, clusters, boot)))
        t = mean_ci(values, boot.confidence)
        rec.update({f"{col}_t_lo": t.lo, f"{col}_t_hi": t.hi})
    return rec


def _paired_stats(scores: pd.DataFrame, name: str, baseline: str, columns: Sequence[str],
                  boot: Bootstrap) -> dict[str, Any]:
    """``diff_<score>_*``: the paired difference to ``baseline`` (NaN for the baseline itself, or without it)."""
    has_pairs = (len(scores) > 0 and name != baseline and all(k in scores for k in PAIR_KEYS)
                 and bool((scores["method"] == baseline).any()) and bool((scores["method"] == name).any()))
    rec: dict[str, Any] = {}
    for col in columns:
        ci = (paired_difference(scores, name, baseline, col, boot) if has_pairs
              else BootCI(math.nan, math.nan, math.nan, 0, 0, 0))
        rec.update(_interval_fields(f"diff_{col}", ci))
    return rec


def _face_rates(scored: pd.DataFrame) -> dict[str, float]:
    """Shares of scored rows with no face in the output (of those whose source has one; per face model) and with no
    face in the source."""
    rec: dict[str, float] = {}
    with_src = scored[~flags(scored["no_face_source"], True)] if len(scored) else scored
    rec["no_face_output_rate"] = rate(with_src["no_face_output"]) if len(with_src) else math.nan
    if "no_face_output_2" in with_src and "no_face_source_2" in with_src and len(with_src):
        src2 = with_src[~flags(with_src["no_face_source_2"], True)]
        rec["no_face_output_rate_2"] = rate(src2["no_face_output_2"]) if len(src2) else math.nan
    else:
        rec["no_face_output_rate_2"] = math.nan
    rec["no_face_source_rate"] = rate(scored["no_face_source"]) if len(scored) else math.nan
    return rec


def _run_facts(ok: pd.DataFrame, info: dict[str, Any]) -> dict[str, Any]:
    """Latency percentiles and harness share of the ok rows, memory, NFE, parameters, load time, weights."""
    rec: dict[str, Any] = {}
    edit_ms = ok["edit_ms"] if "edit_ms" in ok else []
    edits = _clean(edit_ms)
    rec["latency_p50_ms"] = percentile(edit_ms, 50)
    rec["latency_p95_ms"] = percentile(edit_ms, 95)
    rec["latency_mean_ms"] = float(np.mean(edits)) if len(edits) else math.nan
    harness = _clean(ok["harness_ms"]) if "harness_ms" in ok else np.array([])
    rec["harness_share"] = float(harness.sum() / edits.sum()) if harness.size and edits.sum() > 0 else math.nan
    rec["loop_overhead_share"] = _float(info.get("loop_overhead_share"))
    mem = _clean(ok["mem_peak_mb"]) if "mem_peak_mb" in ok else np.array([])
    rec["mem_peak_mb"] = float(mem.max()) if mem.size else math.nan
    rec["mem_kind"] = info.get("mem_kind") or (str(ok["mem_kind"].iloc[0]) if "mem_kind" in ok and len(ok) else "")
    nfe = info.get("nfe", ok["nfe"].iloc[0] if "nfe" in ok and len(ok) else None)
    rec["nfe"] = _float(nfe)
    rec["params_m"] = _float(info.get("params")) / 1e6 if info.get("params") is not None else math.nan
    rec["load_s"] = _float(info.get("load_s"))
    rec["weights_mb"] = _float(info.get("weights_mb"))
    return rec


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan
