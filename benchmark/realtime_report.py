"""The real-time sweep's outputs (``python -m benchmark.realtime``, see :mod:`benchmark.realtime`): the summary line,
``realtime.csv`` (every row), ``realtime.json`` (everything) and ``realtime.md`` (the readable tables). Pure
formatting of the sweep's result dict: no torch, no models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import report, store

CSV_COLUMNS = ["kind", "label", "resolution", "batch", "steps", "nfe", "status", "n", "p50_ms", "p95_ms", "mean_ms",
               "min_ms", "p50_ms_per_image", "p95_ms_per_image", "edits_per_s", "mem_mb", "mem_kind",
               "first_call_ms", "ratio_to_ipnet", "message"]
FILES = ("realtime.md", "realtime.csv", "realtime.json")


def summarize(rows: list[dict[str, Any]], resolutions: tuple[int, ...]) -> dict[str, Any]:
    """Best throughput and batch-1 latency at 512² (else the first of the swept ``resolutions``) and the
    InstructPix2Pix ratios."""
    res = 512 if 512 in resolutions else resolutions[0]
    ok = [r for r in rows if r["kind"] == "ipnet" and r["resolution"] == res and r["status"] == "ok"]
    best = max(ok, key=lambda r: r["edits_per_s"], default=None)
    b1 = next((r for r in ok if r["batch"] == 1), None)
    ratios = [{"steps": r["steps"], "label": r["label"], "ratio_to_ipnet": r["ratio_to_ipnet"]}
              for r in rows if r["kind"] == "ip2p" and r["resolution"] == res]
    return {"resolution": res, "best_edits_per_s": best["edits_per_s"] if best else None,
            "best_batch": best["batch"] if best else None, "batch1_p50_ms": b1["p50_ms"] if b1 else None,
            "ip2p_ratios": ratios}


def summary_line(result: dict[str, Any]) -> str:
    s, meta = result["summary"], result["meta"]
    res = s["resolution"]
    parts = [f"realtime ({meta['device_name']}, {meta['dtype']}" + (", compiled" if meta["switches"]["compile"]
                                                                     else "")
             + (f", tiny VAE {meta['tiny_vae']}" if meta.get("tiny_vae") else "") + "):"]
    if s["best_batch"] is not None:
        parts.append(f"best {s['best_edits_per_s']:.1f} edits/s at batch {s['best_batch']} ({res}²);")
    parts.append(f"batch-1 {res}² p50 {report._fmt_ms(s['batch1_p50_ms'])} ms;")
    ratios = [f"{r['label'].removeprefix('InstructPix2Pix ')} {_fmt_ratio(r['ratio_to_ipnet'])}"
              for r in s["ip2p_ratios"]]
    parts.append(("InstructPix2Pix / IPNet batch-1 p50: " + ", ".join(ratios)) if ratios
                 else "InstructPix2Pix not timed")
    return " ".join(parts)


def _fmt_ratio(x: Any) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{float(x):.1f}×"


def _fmt_mib(x: Any) -> str:
    return report._fmt(x, 0)


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    meta, cold, rows = result["meta"], result["cold_start"], result["rows"]
    table = pd.DataFrame.from_records(rows).reindex(columns=CSV_COLUMNS)
    table.to_csv(out / "realtime.csv", index=False)
    (out / "realtime.json").write_text(json.dumps(store.jsonable(result), indent=2, default=str))

    env = meta["environment"]
    versions, git = env.get("versions") or {}, env.get("git") or {}
    ipnet = table[table["kind"] == "ipnet"]
    ip2p = table[table["kind"] == "ip2p"]
    steady = pd.DataFrame([{
        "Res": f"{r.resolution}²", "Batch": r.batch, "Status": r.status, "p50 ms": report._fmt_ms(r.p50_ms),
        "p95 ms": report._fmt_ms(r.p95_ms), "p50 ms/image": report._fmt_ms(r.p50_ms_per_image),
        "p95 ms/image": report._fmt_ms(r.p95_ms_per_image), "Edits/s": report._fmt(r.edits_per_s, 1),
        "Peak MiB": _fmt_mib(r.mem_mb), "First call ms": report._fmt_ms(r.first_call_ms), "n": r.n,
    } for r in ipnet.itertuples()])
    lines = [
        "# Real-time one-step path (IPNet)" + (" — random weights" if "random" in meta["source"] else ""), "",
        f"- device: {meta['device_name']} ({env.get('device')}); torch {versions.get('torch')}, diffusers "
        f"{versions.get('diffusers')}, transformers {versions.get('transformers')}; commit {git.get('commit')}"
        f"{' (dirty)' if git.get('dirty') else ''}",
        f"- model: {meta['source']} ({meta['params'] / 1e6:.1f}M parameters); dtype {meta['dtype']}",
        "- switches (InstantPortraitPipeline.optimize): " + ", ".join(f"{k}={v}" for k, v in meta["switches"].items())
        + f"; io {meta['io']}; prompt cache {'on' if meta['prompt_cache'] else 'off (every call encodes its text)'}"
        + f"; VAE: {('tiny, both sides (' + str(meta['tiny_vae']) + ')') if meta.get('tiny_vae') else 'full'}",
        f"- timing: {meta['timing']}; warm-up {meta['config']['warmup']}, {meta['config']['repeats']} timed calls "
        "per row",
        f"- memory: {meta['memory']}", "",
        "## Cold start", "",
        report.to_markdown(pd.DataFrame([{
            "Load / build s": report._fmt(cold.get("load_s"), 2),
            "optimize() s": report._fmt(cold.get("optimize_s"), 2),
            "First call ms": report._fmt_ms(cold.get("first_call_ms")),
            "InstructPix2Pix load s": report._fmt(cold.get("ip2p_load_s"), 2)}])),
        "First call: the first call after loading" + (", including torch.compile" if meta["switches"]["compile"]
                                                       else "") + "; per row, `First call ms` is that shape's first "
        "call" + (" (each shape compiles anew)" if meta["switches"]["compile"] else "") + ".", "",
        "## Steady state", "", report.to_markdown(steady),
    ]
    if len(ip2p):
        disp = pd.DataFrame([{
            "Res": f"{r.resolution}²", "Setting": r.label, "NFE": r.nfe, "Status": r.status,
            "p50 ms": report._fmt_ms(r.p50_ms), "p95 ms": report._fmt_ms(r.p95_ms),
            "× IPNet (batch-1 p50)": _fmt_ratio(r.ratio_to_ipnet), "n": r.n} for r in ip2p.itertuples()])
        lines += ["", "## InstructPix2Pix, batch 1, same run", "", report.to_markdown(disp),
                  f"{meta['ip2p_source']}; 3-way classifier-free guidance (text {meta['ip2p_guidance'][0]}, image "
                  f"{meta['ip2p_guidance'][1]}); no optimisation switches; warm-up {meta['config']['ip2p_warmup']}, "
                  f"{meta['config']['ip2p_repeats']} timed calls."]
    if result["breakdown"]:
        names = {"text": "Text encoding", "vae_encode": "VAE encode", "unet": "UNet", "vae_decode": "VAE decode",
                 "other": "Other", "total": "Total"}
        disp = pd.DataFrame([{"Res": f"{b['resolution']}²", **{
            label: f"{report._fmt_ms(b['mean_ms'][k])} ({100 * b['share'][k]:.0f}%)" for k, label in names.items()}}
            for b in result["breakdown"]])
        lines += ["", "## Where the time goes (batch 1, mean ms per call and share)", "", report.to_markdown(disp),
                  "Each stage is the pipeline's building block timed inside real calls with a synchronisation "
                  "before and after it (which adds a little to the total); Other = pre/post-processing, start noise "
                  "and Python."]
    if result["profiles"]:
        lines += ["", "Profiles: " + ", ".join(result["profiles"])]
    notes = [f"- {r['label']} {r['resolution']}² batch {r['batch']}: **{r['status']}**: {r['message']}"
             for r in rows if r["status"] != "ok"]
    lines += ["", "Summary: " + summary_line(result)] + (["", *notes] if notes else [])
    (out / "realtime.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {name: out / name for name in FILES}
