"""Architecture latency: each method's real networks, timed on synthetic portraits (no scoring, no dataset).

``python -m benchmark --latency-only --random-weights --methods ipnet,instructpix2pix --device cuda
--resolution 512 --warmup 3 --repeats 20`` builds every method with random weights in its real architecture
(``Editor.load_random_weights``; nothing is downloaded), times ``Editor.edit`` on a batch of synthetic images
exactly as the benchmark loop does (perf_counter, CUDA synchronised, warm-up excluded) and writes
``latency.{md,csv,json}``: ms p50/p95 per edit call, the ratio of each method's p50 to IPNet's measured in the same
run, network evaluations per edit and parameter counts. On CUDA each method's peak memory is recorded from its load
on (``torch.cuda.max_memory_allocated``, reset before each method), so ``vram.md`` (:mod:`benchmark.vram`) can say
which card a method needs; ``--offload none,model`` times every method plain and offloaded in the same run (the
offload's cost is then ``offload_cost`` = p50 / the same method's plain p50). Without ``--random-weights`` the real
weights are loaded (methods whose weights are missing are reported as unavailable). Methods without a random-weights
builder are listed as such and skipped. Only rank 0 works under ``accelerate launch``.
"""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import replace
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
    """Load (random or real weights), warm up, time ``cfg.repeats`` edit calls of ``cfg.batch_size`` images.

    ``cfg.offload`` is one mode here (:func:`run_latency` makes one config per mode). CUDA peak memory is counted
    from before the load (``peak_mb``: load, warm-up and timed edits; what a card must hold) and over the timed edits
    only (``mem_mb``), both above what was allocated before this method."""
    rss0 = rss_mb()
    cuda0 = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    source = model_source(cfg, name)
    editor = make_editor(cfg, name, str(device), source)
    info = load_editor(editor, cfg, device, source)
    label = info.get("label", name) + ("" if cfg.offload == "none" else f" [offload {cfg.offload}]")
    record: dict[str, Any] = {"method": name, "label": label, "offload": info.get("offload", editor.offload_mode),
                              "offload_asked": cfg.offload, "status": info["status"],
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
    peaks = cuda_peaks(device, cuda0)  # the load's, in case the warm-up fails
    try:
        for _ in range(cfg.warmup):
            editor.edit(images, prompts, seed=0, settings=settings)
        peaks = cuda_peaks(device, cuda0)  # load + warm-up, before the reset for the timed edits' mem_mb
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
    record.update({k: max(v, peaks[k]) for k, v in cuda_peaks(device, cuda0).items()})
    editor.unload()
    del editor
    gc.collect()
    record.update(times_ms=times, p50_ms=metrics.percentile(times, 50), p95_ms=metrics.percentile(times, 95),
                  mean_ms=float(np.mean(times)) if times else math.nan, min_ms=min(times) if times else math.nan,
                  mem_mb=mem, settings={k: v for k, v in vars(settings).items() if v not in (None, {})})
    return record


def cuda_peaks(device: torch.device, base_mb: float) -> dict[str, float]:
    """``peak_mb`` / ``peak_reserved_mb``: CUDA peak allocated / reserved MiB since the last reset, above ``base_mb``
    (allocated before the method); NaN off CUDA (the columns exist, the numbers would be the host's)."""
    if device.type != "cuda":
        return {"peak_mb": math.nan, "peak_reserved_mb": math.nan}
    return {"peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 - base_mb,
            "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20 - base_mb}


def _p50_of(df: pd.DataFrame, method: str, offload: str) -> float:
    ref = df.loc[(df["method"] == method) & (df["offload_asked"] == offload) & (df["status"] == "ok"), "p50_ms"]
    return float(ref.iloc[0]) if len(ref) and float(ref.iloc[0]) > 0 else math.nan


def latency_table(records: list[dict[str, Any]], reference: str = metrics.REFERENCE_METHOD) -> pd.DataFrame:
    """One row per method and offload mode, with ``ratio_to_ipnet`` = p50 / IPNet's p50 under the same offload (NaN
    if IPNet was not timed) and ``offload_cost`` = p50 / the same method's p50 without offload."""
    df = pd.DataFrame.from_records([{k: v for k, v in r.items() if k != "times_ms"} for r in records])
    for col in ("p50_ms", "p95_ms", "mean_ms", "min_ms", "mem_mb", "weights_mb", "nfe", "params", "load_s",
                "resolution", "peak_mb", "peak_reserved_mb"):
        if col not in df:
            df[col] = math.nan
    if "offload_asked" not in df:
        df["offload_asked"] = "none"
    df["n"] = [len(r.get("times_ms") or []) for r in records]
    p50 = df["p50_ms"].astype(float)
    df["ratio_to_ipnet"] = p50 / [_p50_of(df, reference, mode) for mode in df["offload_asked"]]
    df["offload_cost"] = p50 / [_p50_of(df, m, "none") for m in df["method"]]
    df["params_m"] = df["params"].astype(float) / 1e6
    return df


def run_latency(cfg: BenchmarkConfig, dist: Dist | None = None) -> Path:
    dist = dist or Dist.from_env(cfg.device)
    if not dist.is_main:
        return cfg.out
    device = torch.device(dist.device(cfg.device))
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    records = [time_method(replace(cfg, offload=mode), name, device)
               for mode in cfg.offload_modes() for name in cfg.methods]
    table = latency_table(records)
    meta = {
        "mode": "latency", "time": now(), "config": cfg.to_json(),
        "environment": environment(device, dist),
        "random_weights": cfg.random_weights, "random_arch": cfg.random_arch, "resolution": cfg.resolution,
        "offload": cfg.offload_modes(),
        "batch_size": cfg.batch_size, "warmup": cfg.warmup, "repeats": cfg.repeats,
        "dtype": str(cfg.torch_dtype()).replace("torch.", ""),
        "timing": "time.perf_counter around Editor.edit on a batch of synthetic portraits (PIL in and out), "
                  "torch.cuda.synchronize before and after on CUDA, warm-up excluded",
        "memory": "Memory MiB: on CUDA torch.cuda.max_memory_allocated over the timed edits; on the CPU the size "
                  "of the weights (parameters + buffers; the process RSS delta, a poor measure after other methods "
                  "freed memory, is kept in latency.json as mem_mb); vram.md: peak_mb, CUDA max_memory_allocated from "
                  "before each method's load (reset per method) to its last timed edit",
    }
    (out / "latency.json").write_text(json.dumps(store.jsonable({"meta": meta, "methods": records}), indent=2,
                                                 default=str))
    report.write_latency_tables(table, meta, out)
    if read_run(out) is None:  # never overwrite the run.json of a benchmark run in the same folder
        write_run(out, {**meta, "latency_files": ["latency.md", "latency.csv", "latency.json"]})
    return out
