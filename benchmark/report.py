"""Tables, plots and the side-by-side grid from a results folder (``python -m benchmark report results/``).

Writes, next to ``rows.jsonl``:

* ``summary.md`` / ``summary.csv`` / ``summary.tex`` / ``summary.json``: one line per method, the ``no-edit``
  reference row included (mean and 95% image-bootstrap interval of every score with the share of rows missing it,
  failure rates, latency p50/p95, IPNet's speed-up over the method, NFE, parameters, harness overhead), then the paired
  differences to IPNet; the CSV and JSON hold every number, the Markdown and LaTeX the readable selection, and
  ``summary.md`` says how each interval was computed and which captions CLIP-T and CLIP-dir scored against;
* ``summary_by_category.csv``: the same per (method, instruction category);
* ``samples.csv``: every row with its scores (later scores applied);
* ``identity_vs_fidelity.png`` (identity vs CLIP-T, marker area grows with latency) and ``edit_latency.png`` (p50 bars,
  p95 whiskers, log axis);
* ``grid.html``: per instruction, the source and every method's output side by side (relative image paths, so the
  folder can be moved or served as is).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark import metrics, store
from benchmark.results import METHODS, merged_rows, read_run
from benchmark.vram import write_vram_table

SUMMARY_FILES = ("summary.md", "summary.csv", "summary.tex", "summary.json", "summary_by_category.csv",
                 "samples.csv", "identity_vs_fidelity.png", "edit_latency.png", "grid.html")


# ---------------------------------------------------------------------------------------------------------- loading
def method_facts(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, from ``methods.jsonl``: the latest record, with timing facts pooled over every ok record.

    A method that ran before keeps status ok even if a later session found it unavailable (its rows are valid).
    """
    by_method: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_method.setdefault(rec["method"], []).append(rec)
    facts: dict[str, dict[str, Any]] = {}
    for name, recs in by_method.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        latest = dict((ok or recs)[-1])
        if ok:
            edit = sum(float(r.get("edit_total_s") or 0.0) for r in ok)
            wall = sum(float(r.get("loop_wall_s") or 0.0) for r in ok)
            latest["loop_overhead_share"] = (wall - edit) / edit if edit > 0 else None
            loads = [float(r["load_s"]) for r in ok if r.get("load_s") is not None]
            latest["load_s"] = float(np.median(loads)) if loads else None
        facts[name] = latest
    return facts


def load_results(out: str | Path) -> tuple[pd.DataFrame, dict[str, dict[str, Any]], dict[str, Any]]:
    """(rows with later scores applied, per-method facts, run.json) of a results folder."""
    out = Path(out)
    run = read_run(out) or {}
    rows = pd.DataFrame.from_records(merged_rows(out))
    if len(rows) == 0:
        rows = pd.DataFrame(columns=[*store.KEY_FIELDS, "status", "scored", "edit_ms"])
    facts = method_facts(store.read_all(out, METHODS))
    return rows, facts, run


# ---------------------------------------------------------------------------------------------------------- formatting
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _fmt_ci(mean: float, lo: float, hi: float, missing: float = math.nan, digits: int = 3) -> str:
    """``mean [lo, hi]`` (a bootstrap interval need not be symmetric), and the share of rows without the score."""
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    if math.isfinite(missing) and missing > 0:
        text += f" ({_fmt_pct(missing)} missing)"
    return text


def _fmt_pct(x: Any) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.1f}%"


def _fmt_ms(x: Any) -> str:
    if x is None or not math.isfinite(float(x)):
        return "–"
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


# Always in the Markdown/LaTeX table (other score columns only when some method has values).
SHOWN_SCORES = ("id_sim", "id_sim_strict", "clip_t", "clip_dir", "clip_i")
_HEADERS = {"id_sim": "ID sim ↑", "id_sim_strict": "ID sim, no face = 0 ↑", "id_sim_2": "ID sim (2nd) ↑",
            "clip_t": "CLIP-T ↑", "clip_dir": "CLIP-dir ↑", "clip_i": "CLIP-I"}


def summary_scores(summary: pd.DataFrame, prefix: str = "") -> list[str]:
    """The score columns of a :func:`metrics.summarize` table (``prefix="diff_"``: its paired differences) worth a
    column: the standard ones, and any other with values for some method."""
    cols = [c[len(prefix):-len("_mean")] for c in summary.columns
            if c.startswith(prefix) and c.endswith("_mean") and f"{c[:-len('_mean')]}_images" in summary
            and (prefix or not c.startswith("diff_"))]
    return [c for c in cols if c in SHOWN_SCORES or (summary[f"{prefix}{c}_n"].fillna(0) > 0).any()]


def _method_label(r: pd.Series) -> str:
    label = str(r["label"])
    return label + (" (reference)" if r.get("is_reference") and "reference" not in label.lower() else "")


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The readable selection of the summary (strings), for Markdown and LaTeX: every score as ``mean [lo, hi]``
    (95% bootstrap over images) with the share of rows missing it."""
    rows = []
    for _, r in summary.iterrows():
        d = {"Method": _method_label(r), "Status": r["status"], "N": int(r["n_rows"]),
             "Images": int(r["n_images"]) if "n_images" in r else "–"}
        for col in summary_scores(summary):
            d[_HEADERS.get(col, col)] = _fmt_ci(r[f"{col}_mean"], r[f"{col}_lo"], r[f"{col}_hi"],
                                                r.get(f"{col}_missing_rate", math.nan))
            if col == "id_sim_strict":
                d["No face out ↓"] = _fmt_pct(r["no_face_output_rate"])
        d.update({
            "p50 ms": _fmt_ms(r["latency_p50_ms"]), "p95 ms": _fmt_ms(r["latency_p95_ms"]),
            "IPNet speed-up": "–" if not math.isfinite(r["ipnet_speedup"]) else f"{r['ipnet_speedup']:.1f}×",
            "NFE": "–" if not math.isfinite(r["nfe"]) else str(int(r["nfe"])),
            "Params (M)": _fmt(r["params_m"], 1),
            "Errors": _fmt_pct(r["error_rate"]),
            "Harness overhead": _fmt_pct(r["loop_overhead_share"]),
        })
        rows.append(d)
    return pd.DataFrame(rows)


def paired_table(summary: pd.DataFrame, baseline: str = metrics.REFERENCE_METHOD) -> pd.DataFrame:
    """Per method, ``method − baseline`` of every score on the same image × instruction × seed: ``mean [lo, hi]``
    (95% bootstrap over images), the pairs and images used; the baseline's own line says so."""
    cols = summary_scores(summary, "diff_")
    rows = []
    for _, r in summary.iterrows():
        d: dict[str, Any] = {"Method": _method_label(r)}
        if r["method"] == baseline:
            d.update({"Pairs": "–", "Images": "–", **{f"Δ {_HEADERS.get(c, c)}": "baseline" for c in cols}})
        else:
            d["Pairs"] = int(max([r[f"diff_{c}_n"] for c in cols] or [0]))
            d["Images"] = int(max([r[f"diff_{c}_images"] for c in cols] or [0]))
            for c in cols:
                d[f"Δ {_HEADERS.get(c, c)}"] = _fmt_ci(r[f"diff_{c}_mean"], r[f"diff_{c}_lo"], r[f"diff_{c}_hi"],
                                                      r[f"diff_{c}_missing_rate"])
        rows.append(d)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (no extra dependency); ``|`` in cells is escaped."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(df.columns))) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "×": r"$\times$", "–": "--",
                  "Δ": r"$\Delta$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    cols = "l" + "r" * (len(df.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{cols}}}",
             r"\toprule", " & ".join(latex_escape(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def describe_run(run: dict[str, Any]) -> list[str]:
    """Bullet lines saying what produced the numbers (device, models, thresholds, versions, commit)."""
    env = run.get("environment") or {}
    scoring = run.get("scoring") or {}
    models = scoring.get("models") or {}
    face = models.get("face_model") or {}
    face2 = models.get("second_face_model") or {}
    identity = scoring.get("identity") or {}  # column -> backend (or "unavailable: why")
    clip = models.get("clip") or {}
    th = run.get("thresholds") or {}
    git = env.get("git") or {}
    versions = env.get("versions") or {}
    lines = [
        f"device: {env.get('device_name', '?')} ({env.get('device', '?')}, "
        f"dtype {(run.get('fingerprint') or {}).get('dtype', '?')}, {env.get('world_size', 1)} process(es))",
        f"resolution: long side {run.get('resolution', '?')} px; images: {(run.get('images') or {}).get('count', '?')}"
        f"; instructions: {(run.get('instructions') or {}).get('count', '?')}; seeds: "
        f"{(run.get('config') or {}).get('seeds', '?')}",
        f"face model: {face.get('pack', 'none')} ({face.get('recognition_model', '')}), det_thresh "
        f"{th.get('det_thresh', '?')}, det_size {th.get('det_size', '?')}"
        + (f"; second face model: {face2.get('pack')} ({face2.get('recognition_model', '')})" if face2 else ""),
        "identity columns: " + (", ".join(f"{col} by {backend}" for col, backend in identity.items())
                                if identity else "none"),
        f"CLIP: {clip.get('variant') or clip.get('weights') or 'none'} ({clip.get('library', '')}); source caption "
        f"for CLIP-dir: \"{run.get('source_caption', '?')}\"",
        f"latency: {run.get('timing', '')}",
        f"memory: {run.get('memory', '')}",
        f"versions: torch {versions.get('torch')}, diffusers {versions.get('diffusers')}, transformers "
        f"{versions.get('transformers')}; commit {git.get('commit') or '?'}{' (dirty)' if git.get('dirty') else ''}",
    ]
    if run.get("random_weights"):
        lines.insert(0, "RANDOM WEIGHTS: every image is noise; only the latency columns mean anything")
    demo = {m: s for m, s in (run.get("model_sources") or {}).items() if s.get("kind") == "demo"}
    if demo:
        lines.insert(0, "TOY DEMO MODELS (the real weights are not available here): " + ", ".join(
            f"{m} ({s.get('location')}, {s.get('resolution') or '?'} px)" for m, s in demo.items())
            + "; trained on the synthetic portrait world only, their numbers say nothing about real photos")
    for note in scoring.get("demo_scorers") or []:
        lines.insert(0, f"TOY DEMO SCORER: {note}")
    return lines


# ---------------------------------------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_identity_vs_fidelity(summary: pd.DataFrame, path: Path) -> Path:
    """Identity (y) vs CLIP-T (x) per method with CI bars; marker area grows with log latency."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    y_face = summary["id_sim_mean"].astype(float)
    y_strict = summary["id_sim_strict_mean"].astype(float)
    data = summary.assign(y=y_face.where(np.isfinite(y_face), y_strict), faces=np.isfinite(y_face))
    data = data[np.isfinite(data["y"]) & np.isfinite(data["clip_t_mean"].astype(float))].reset_index(drop=True)
    if len(data):
        lat = data["latency_p50_ms"].astype(float).fillna(1.0).clip(lower=1.0)
        data["size"] = 40 + 60 * np.log10(lat)
        for i, r in data.iterrows():
            color = f"C{i % 10}"
            yerr = (r["id_sim_hi"] - r["id_sim_lo"]) / 2 if r["faces"] else np.nan
            xerr = (r["clip_t_hi"] - r["clip_t_lo"]) / 2
            ax.errorbar([r["clip_t_mean"]], [r["y"]], xerr=[np.nan_to_num(xerr)], yerr=[np.nan_to_num(yerr)],
                        fmt="none", ecolor="0.6", zorder=1)
            ax.scatter([r["clip_t_mean"]], [r["y"]], s=r["size"], zorder=2, alpha=0.85,
                       facecolors=color if r["faces"] else "none", edgecolors=color)
            note = "" if r["faces"] else "\n(no face in any output)"
            ax.annotate(f"{r['label']}\n{_fmt_ms(r['latency_p50_ms'])} ms{note}", (r["clip_t_mean"], r["y"]),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no method has identity and CLIP-T scores yet", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("instruction fidelity: CLIP-T (output vs target caption) ↑")
    ax.set_ylabel("identity: face similarity source vs output ↑")
    ax.set_title("Identity vs fidelity (marker area ~ log latency; hollow: no face = 0)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_latency(summary: pd.DataFrame, path: Path, p50: str = "latency_p50_ms", p95: str = "latency_p95_ms",
                 title: str = "Latency per edit (p50, whisker p95)") -> Path:
    """p50 bars with a p95 whisker, log scale."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    data = summary[np.isfinite(summary[p50].astype(float))]
    if len(data):
        x = np.arange(len(data))
        lo = np.zeros(len(data))
        hi = (data[p95].astype(float) - data[p50].astype(float)).fillna(0).clip(lower=0).to_numpy()
        ax.bar(x, data[p50].astype(float), yerr=[lo, hi], capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(x, list(data["label"]), rotation=20, ha="right")
        ax.set_yscale("log")
        top = float(np.nanmax(data[p95].astype(float).fillna(data[p50].astype(float))))
        ax.set_ylim(float(data[p50].astype(float).min()) / 3, max(top, float(data[p50].astype(float).max())) * 2)
        for xi, v in zip(x, data[p50].astype(float)):
            ax.text(xi, v, f"{_fmt_ms(v)}", ha="center", va="bottom", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no timed edits yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("ms (log scale)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- grid
def _caption(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"error: {row.get('error', '')}"[:120]
    parts = []
    if row.get("scored"):
        if row.get("no_face_source"):
            parts.append("no face in source")
        elif row.get("no_face_output"):
            parts.append("no face in output")
        elif row.get("id_sim") is not None:
            parts.append(f"ID {row['id_sim']:.2f}")
        if row.get("clip_t") is not None:
            parts.append(f"CLIP-T {row['clip_t']:.3f}")
    parts.append(f"{_fmt_ms(row.get('edit_ms'))} ms")
    return " · ".join(parts)


def write_grid(rows: pd.DataFrame, facts: dict[str, dict[str, Any]], path: Path,
               methods: list[str] | None = None, title: str = "InstantPortrait benchmark") -> Path:
    """grid.html: a section per instruction; a line per (image, seed); the source then each method's output."""
    methods = methods or list(dict.fromkeys(list(rows["method"]) if len(rows) else []))
    records = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
               for r in (rows.to_dict("records") if len(rows) else [])]  # NaN (missing field) -> None
    by_key = {(r["method"], r["image"], r["instruction_id"], int(r["seed"])): r for r in records}
    instructions: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    lines: dict[str, set[tuple[str, int]]] = {}
    for r in records:
        instructions.setdefault(r["instruction_id"], r)
        sources.setdefault(r["image"], r["source"])
        lines.setdefault(r["instruction_id"], set()).add((r["image"], int(r["seed"])))
    esc = html.escape
    parts = [
        "<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{padding:4px;vertical-align:top;text-align:center;font-size:12px}"
        "img{width:192px;height:auto;display:block;margin:auto}.cap{max-width:192px}"
        "h2{font-size:16px;margin-top:2em}</style></head><body>", f"<h1>{esc(title)}</h1>",
    ]
    missing = [f"{esc(facts[m].get('label', m))}: {esc(facts[m].get('status', ''))}" for m in facts
               if facts[m].get("status") != "ok"]
    if missing:
        parts.append("<p>Not run: " + "; ".join(missing) + "</p>")
    if not records:
        parts.append("<p>No rows yet.</p>")
    for ins_id, first in instructions.items():
        parts.append(f"<h2 id='{esc(ins_id)}'>{esc(ins_id)} <small>({esc(str(first.get('category', '')))})</small>"
                     f"</h2><p>{esc(str(first.get('instruction', '')))}</p>")
        labels = [facts.get(m, {}).get("label", m) for m in methods]
        parts.append("<table><tr><th>source</th>" + "".join(f"<th>{esc(lab)}</th>" for lab in labels) + "</tr>")
        for image, seed in sorted(lines[ins_id]):
            cells = [f"<td><img src='{esc(sources[image])}' loading='lazy' alt='source'>"
                     f"<div class='cap'>{esc(image)} · seed {seed}</div></td>"]
            for m in methods:
                r = by_key.get((m, image, ins_id, seed))
                if r is None:
                    cells.append("<td>–</td>")
                elif r.get("output"):
                    cells.append(f"<td><img src='{esc(r['output'])}' loading='lazy' alt='{esc(m)}'>"
                                 f"<div class='cap'>{esc(_caption(r))}</div></td>")
                else:
                    cells.append(f"<td><div class='cap'>{esc(_caption(r))}</div></td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------- report
REFERENCE_NOTE = ("the source itself as the output, scored like the methods: the ceiling of identity and CLIP-I, "
                  "CLIP-dir 0, and the floor of CLIP-T (the unedited portrait against the target caption, which an "
                  "edit must beat).")


def statistics_record(rows: pd.DataFrame, boot: metrics.Bootstrap,
                      baseline: str = metrics.REFERENCE_METHOD) -> dict[str, Any]:
    """How the intervals and paired differences were computed, for ``summary.json``."""
    return {"interval": boot.describe(), "resamples": boot.resamples, "seed": boot.seed,
            "confidence": boot.confidence, "percentiles": list(boot.percentiles), "cluster": boot.cluster,
            "images": int(rows[boot.cluster].nunique()) if len(rows) and boot.cluster in rows else 0,
            "paired_to": baseline, "pair_keys": list(metrics.PAIR_KEYS),
            "row_level_t_interval": "<score>_t_lo / <score>_t_hi: Student-t, rows treated as independent (too narrow)"}


def statistics_notes(summary: pd.DataFrame, facts: dict[str, dict[str, Any]], stats: dict[str, Any]) -> list[str]:
    """Markdown bullets saying how every number of the tables was computed, and what each reference row is."""
    baseline = stats["paired_to"]
    base = summary.loc[summary["method"] == baseline, "label"] if len(summary) else []
    base_label = str(base.iloc[0]) if len(base) else baseline
    lines = [
        f"Intervals: {stats['interval']}. This run has {stats['images']} images; `Images` is each method's count "
        "(per score: `<score>_images` in summary.csv). A score with values from fewer than 2 images has no interval.",
        f"Paired differences (Δ): method − {base_label} on the same image × instruction × seed (rows present in "
        f"both), the mean of the per-pair differences and its interval by the same bootstrap over images (a drawn "
        f"image brings all its pairs; {stats['resamples']} resamples, seed {stats['seed']}). `Pairs`: pairs with a "
        "value on both sides; a pair missing either (an error, no face, a row one method lacks) counts as missing.",
        "`(x% missing)`: the share of the method's rows without that score (errors, no face, not scored yet): left "
        "out of the mean, and counted here, not dropped silently.",
        "The row-level Student-t interval (mean ± t·s/√n, which treats rows as independent and is too narrow when "
        "an image gives many rows) is kept in summary.csv/json only, as `<score>_t_lo` / `<score>_t_hi`.",
    ]
    for _, r in summary.iterrows():
        desc = ((facts.get(r["method"]) or {}).get("describe") or {}).get("description")
        if r.get("is_reference"):
            lines.append(f"{_method_label(r)}: {desc or REFERENCE_NOTE} Its latency is the harness's, not an "
                         "edit's: no speed-up, and left out of the latency plot.")
        elif desc:
            lines.append(f"{_method_label(r)}: {desc}")
    return lines


def instruction_section(rows: pd.DataFrame, run: dict[str, Any]) -> list[str]:
    """Markdown: the run's instruction set, its CLIP-dir source caption(s) and each instruction's CLIP-T target
    caption, as the rows were scored (read from the rows, so it is what the numbers used)."""
    ins = run.get("instructions") or {}
    lines = [f"## Instruction set: {ins.get('path', '?')} ({ins.get('count', '?')} instructions)", ""]
    if not len(rows) or "instruction_id" not in rows:
        return lines + ["No rows yet."]
    first = rows.drop_duplicates("instruction_id")
    captions = sorted({str(c) for c in first.get("source_caption", pd.Series(dtype=object)).dropna()})
    lines += [f"- CLIP-dir source caption{'s' if len(captions) > 1 else ''}: "
              + (", ".join(f"\"{c}\"" for c in captions) or "?")
              + " (CLIP-dir = cos(E_I(output) − E_I(source), E_T(target caption) − E_T(source caption))).",
              "- CLIP-T target captions (CLIP-T = cos(E_I(output), E_T(target caption))):", ""]
    table = {"Id": first["instruction_id"], "Category": first.get("category", ""),
             "Instruction": first.get("instruction", ""), "CLIP-T target caption": first.get("target_caption", "")}
    if len(captions) > 1:
        table["CLIP-dir source caption"] = first["source_caption"]
    return lines + [to_markdown(pd.DataFrame(table).fillna(""))]


def write_summaries(summary: pd.DataFrame, rows: pd.DataFrame, facts: dict[str, dict[str, Any]],
                    run: dict[str, Any], boot: metrics.Bootstrap, paths: dict[str, Path]) -> None:
    """summary.csv, summary.json, summary.md and summary.tex (the method table, then the paired differences)."""
    stats = statistics_record(rows, boot)
    summary.to_csv(paths["summary.csv"], index=False)
    paths["summary.json"].write_text(json.dumps(
        {"run": {k: run.get(k) for k in ("created", "updated", "resolution", "fingerprint", "environment",
                                         "scoring", "thresholds", "source_caption", "memory", "timing",
                                         "random_weights", "model_sources", "instructions")},
         "statistics": stats, "methods": store.jsonable(summary.to_dict("records"))}, indent=2, default=str))
    disp, paired = display_table(summary), paired_table(summary, stats["paired_to"])
    notes = describe_run(run)
    unavailable = [f"- {r['label']}: **{r['status']}**: {r['message']}" for _, r in summary.iterrows()
                   if r["status"] != "ok" and r["message"]]
    md = ["# Benchmark summary", "", to_markdown(disp), "", *[f"- {n}" for n in notes]]
    md += ["- ID sim: mean over rows whose source and output both have a face; `no face = 0` counts a missing "
           "output face as 0; `No face out`: share of rows (source has a face) whose output has none.",
           "- IPNet speed-up: this method's p50 latency / IPNet's p50 latency in the same run.",
           "- Harness overhead: (loop wall time - edit time) / edit time."]
    if unavailable:
        md += ["", "Methods not run:", *unavailable]
    md += ["", "## Paired differences to IPNet (method − IPNet, same image × instruction × seed)", "",
           to_markdown(paired), "", "## How the intervals were computed", "",
           *[f"- {n}" for n in statistics_notes(summary, facts, stats)], "", *instruction_section(rows, run)]
    paths["summary.md"].write_text("\n".join(md) + "\n", encoding="utf-8")
    caption = f"mean [95% interval: bootstrap over {stats['images']} images, {boot.resamples} resamples]"
    paths["summary.tex"].write_text(
        to_latex(disp, caption=f"Identity similarity, instruction fidelity and latency ({caption}). "
                 + "; ".join(notes[:3]), label="tab:benchmark")
        + to_latex(paired, caption=f"Paired differences to IPNet on the same image, instruction and seed ({caption})",
                   label="tab:benchmark-paired"), encoding="utf-8")


def write_report(out: str | Path) -> dict[str, Path]:
    """Every table, plot and the grid for a results folder; returns their paths."""
    out = Path(out)
    rows, facts, run = load_results(out)
    order = (run.get("config") or {}).get("methods")
    boot = metrics.Bootstrap()
    summary = metrics.summarize(rows, facts, order=order, boot=boot)
    paths = {name: out / name for name in SUMMARY_FILES}
    write_summaries(summary, rows, facts, run, boot, paths)

    if len(rows) and "category" in rows:
        parts = []
        for cat, sub in rows.groupby("category", sort=True):
            s = metrics.summarize(sub, {m: {"label": f.get("label", m), "describe": f.get("describe")}
                                        for m, f in facts.items() if m in set(sub["method"])}, order=order, boot=boot)
            s.insert(1, "category", cat)
            parts.append(s)
        by_cat = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    else:
        by_cat = pd.DataFrame(columns=["method", "category"])
    by_cat.to_csv(paths["summary_by_category.csv"], index=False)
    (metrics.add_derived_columns(rows) if len(rows) else rows).to_csv(paths["samples.csv"], index=False)

    plot_identity_vs_fidelity(summary, paths["identity_vs_fidelity.png"])
    edits = summary[~summary["is_reference"].astype(bool)] if "is_reference" in summary else summary
    plot_latency(edits, paths["edit_latency.png"])  # a reference row's "latency" is the harness's
    write_grid(rows, facts, paths["grid.html"], methods=[m for m in (order or []) if m in set(rows["method"])]
               or None)
    return paths


def write_latency_tables(table: pd.DataFrame, meta: dict[str, Any], out: Path) -> dict[str, Path]:
    """latency.md (with the device and settings), latency.csv and latency.png."""
    out = Path(out)
    table.to_csv(out / "latency.csv", index=False)
    disp = pd.DataFrame([{
        "Method": r["label"], "Status": r["status"],
        "Res": "–" if r.get("resolution") is None or not math.isfinite(float(r["resolution"]))
        else str(int(r["resolution"])),
        "p50 ms": _fmt_ms(r["p50_ms"]), "p95 ms": _fmt_ms(r["p95_ms"]),
        "× IPNet": "–" if not math.isfinite(r["ratio_to_ipnet"]) else f"{r['ratio_to_ipnet']:.2f}",
        "NFE": "–" if r["nfe"] is None or not math.isfinite(float(r["nfe"])) else str(int(r["nfe"])),
        "Params (M)": _fmt(r["params_m"], 1),
        "Memory MiB": _fmt(r["mem_mb"], 0) if str(meta.get("environment", {}).get("device", "")).startswith("cuda")
        else _fmt(r.get("weights_mb"), 0),
        "n": int(r["n"]),
    } for _, r in table.iterrows()])
    env = meta.get("environment") or {}
    git = env.get("git") or {}
    lines = [
        "# Architecture latency" + (" (random weights)" if meta.get("random_weights") else ""), "",
        to_markdown(disp), "",
        f"- device: {env.get('device_name')} ({env.get('device')}), dtype {meta.get('dtype')}",
        f"- resolution {meta.get('resolution')} px, batch {meta.get('batch_size')}, warm-up {meta.get('warmup')}, "
        f"{meta.get('repeats')} timed edits per method" + (f", architecture {meta.get('random_arch')}"
                                                          if meta.get("random_arch") else ""),
        f"- timing: {meta.get('timing')}",
        f"- memory: {meta.get('memory')}",
        f"- × IPNet: p50 / IPNet's p50 in this run; versions: torch {(env.get('versions') or {}).get('torch')}, "
        f"diffusers {(env.get('versions') or {}).get('diffusers')}; commit {git.get('commit')}"
        f"{' (dirty)' if git.get('dirty') else ''}",
    ]
    notes = [f"- {r['label']}: **{r['status']}**: {r['message']}" for _, r in table.iterrows()
             if r["status"] != "ok"]
    if notes:
        lines += ["", *notes]
    (out / "latency.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_latency(table.assign(label=table["label"]), out / "latency.png", p50="p50_ms", p95="p95_ms",
                 title="Architecture latency per edit (p50, whisker p95)")
    return {"latency.md": out / "latency.md", "latency.csv": out / "latency.csv", "latency.png": out / "latency.png",
            **write_vram_table(table, meta, out, to_markdown)}
