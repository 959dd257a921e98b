"""Architecture latency: each method's real networks, timed on synthetic portraits (no scoring, no dataset).

``python -m benchmark --latency-only --random-weights --methods ipnet,instructpix2pix --device cuda
--resolution 512 --warmup 3 --repeats 20`` builds every method with random weights in its real architecture
(``Editor.load_random_weights``; nothing is downloaded), times ``Editor.edit`` on a batch of synthetic images
exactly as the benchmark loop does (perf_counter, CUDA synchronised, warm-up excluded) and writes
``latency.{md,csv,json}``: ms p50/p95 per edit call, the ratio of each method's p50 to IPNet's measured in the same
run, network evaluations per edit and parameter counts. Without ``--random-weights`` the real weights are loaded
(methods whose weights are missing are reported as unavailable). Methods without a random-weights builder are
listed as such and skipped. Only rank 0 works under ``accelerate launch``.
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark import metrics, report, store
from benchmark.config import BenchmarkConfig
from benchmark.editors import load_editor, make_editor, model_source
from benchmark.env import Dist, environment, now, rss_mb, sync
from benchmark.results import read_run, write_run

LATENCY_INSTRUCTION = "photorealistic photo, with hipster glasses, mustache, wearing plaid shirt, vintage tees"


def synthetic_portraits(resolution: int, n: int) -> list[Any]:
    from instantportrait.tiny.images import portrait_like_image

    return [portrait_like_image(resolution, seed=i) for i in range(n)]


def time_method(cfg: BenchmarkConfig, name: str, device: torch.device) -> dict[str, Any]:
    """Load (random or real weights), warm up, time ``cfg.repeats`` edit calls of ``cfg.batch_size`` images."""
    rss0 = rss_mb()
    cuda0 = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    source = model_source(cfg, name)
    editor = make_editor(cfg, name, str(device), source)
    info = load_editor(editor, cfg, device, source)
    record: dict[str, Any] = {"method": name, "label": info.get("label", name), "status": info["status"],
                              "message": info.get("message", ""), "model_source": info["model_source"],
                              "model_location": info["model_location"], "load_s": info.get("load_s"),
                              "nfe": info.get("nfe"), "params": info.get("params"),
                              "weights_mb": info.get("weights_mb"),
                              "resolution": editor.resolution, "dtype": str(editor.dtype).replace("torch.", "")}
    if info["status"] != "ok":
        editor.unload()
        return record
    images = synthetic_portraits(cfg.resolution, cfg.batch_size)
    prompts = [LATENCY_INSTRUCTION] * cfg.batch_size
    settings = cfg.settings_for(name)
    times: list[float] = []
    try:
        for _ in range(cfg.warmup):
            editor.edit(images, prompts, seed=0, settings=settings)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(cfg.repeats):
            sync(device)
            t0 = time.perf_counter()
            editor.edit(images, prompts, seed=i, settings=settings)
            sync(device)
            times.append((time.perf_counter() - t0) * 1000.0)
    except Exception as exc:  # e.g. out of memory at this resolution/batch
        record.update(status="edit failed", message=f"{type(exc).__name__}: {exc}"[:2000])
    mem = (torch.cuda.max_memory_allocated(device) / 2**20 - cuda0 if device.type == "cuda"
           else rss_mb() - rss0)
    editor.unload()
    del editor
    gc.collect()
    record.update(times_ms=times, p50_ms=metrics.percentile(times, 50), p95_ms=metrics.percentile(times, 95),
                  mean_ms=float(np.mean(times)) if times else math.nan, min_ms=min(times) if times else math.nan,
                  mem_mb=mem, settings={k: v for k, v in vars(settings).items() if v not in (None, {})})
    return record


def latency_table(records: list[dict[str, Any]], reference: str = metrics.REFERENCE_METHOD) -> pd.DataFrame:
    """One row per method with ``ratio_to_ipnet`` = p50 / IPNet's p50 (NaN if IPNet was not timed)."""
    df = pd.DataFrame.from_records([{k: v for k, v in r.items() if k != "times_ms"} for r in records])
    for col in ("p50_ms", "p95_ms", "mean_ms", "min_ms", "mem_mb", "weights_mb", "nfe", "params", "load_s",
                "resolution"):
        if col not in df:
            df[col] = math.nan
    df["n"] = [len(r.get("times_ms") or []) for r in records]
    ref = df.loc[(df["method"] == reference) & (df["status"] == "ok"), "p50_ms"]
    ref_p50 = float(ref.iloc[0]) if len(ref) and float(ref.iloc[0]) > 0 else math.nan
    df["ratio_to_ipnet"] = df["p50_ms"].astype(float) / ref_p50
    df["params_m"] = df["params"].astype(float) / 1e6
    return df


def run_latency(cfg: BenchmarkConfig, dist: Dist | None = None) -> Path:
    dist = dist or Dist.from_env(cfg.device)
    if not dist.is_main:
        return cfg.out
    device = torch.device(dist.device(cfg.device))
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    records = [time_method(cfg, name, device) for name in cfg.methods]
    table = latency_table(records)
    meta = {
        "mode": "latency", "time": now(), "config": cfg.to_json(),
        "environment": environment(device, dist),
        "random_weights": cfg.random_weights, "random_arch": cfg.random_arch, "resolution": cfg.resolution,
        "batch_size": cfg.batch_size, "warmup": cfg.warmup, "repeats": cfg.repeats,
        "dtype": str(cfg.torch_dtype()).replace("torch.", ""),
        "timing": "time.perf_counter around Editor.edit on a batch of synthetic portraits (PIL in and out), "
                  "torch.cuda.synchronize before and after on CUDA, warm-up excluded",
        "memory": "Memory MiB: on CUDA torch.cuda.max_memory_allocated over the timed edits; on the CPU the size "
                  "of the weights (parameters + buffers; the process RSS delta, a poor measure after other methods "
                  "freed memory, is kept in latency.json as mem_mb)",
    }
    (out / "latency.json").write_text(json.dumps(store.jsonable({"meta": meta, "methods": records}), indent=2,
                                                 default=str))
    report.write_latency_tables(table, meta, out)
    if read_run(out) is None:  # never overwrite the run.json of a benchmark run in the same folder
        write_run(out, {**meta, "latency_files": ["latency.md", "latency.csv", "latency.json"]})
    return out
