"""python -m benchmark.gpu_check --out results/gpu_check       (the Python part of benchmark/gpu_check.sh)

The real-time path on one card, in one process, within a time budget (issue #17): eager vs compiled (the whole path,
``compile_scope="path"``, ``reduce-overhead``), full VAE vs tiny VAE on both sides, batch 1/4/16/32 at 512² and batch
1 at 1024², with InstructPix2Pix at 100 and 20 steps beside it. Random weights in the real SD1.5-class architecture
(``--arch``; the tiny VAE is TAESD's layout with random weights): latency, not images. Tensors in and out, fp16, NCHW.

Jobs run in the order below, most telling first; one whose estimated time would pass ``--budget-s`` is skipped and
listed as skipped, so the check ends in time on any card (compiling a new static shape of the whole path takes about
a minute). ``--cpu-smoke`` runs the same plan on the CPU with the tiny architecture at 32²/64², batches 1/2, 2-step
InstructPix2Pix and the ``eager`` compile backend, in well under 2 minutes (tests/test_gpu_check.py).

Writes ``<out>/<job>/realtime.{md,csv,json}`` for each job, then ``<out>/gpu_check.md`` and ``gpu_check.csv`` (every
row of every job in one table, InstructPix2Pix's ratios to IPNet's batch-1 p50s) and prints ``gpu_check.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import report
from benchmark.realtime import RealtimeConfig, run_realtime


@dataclass(frozen=True)
class Job:
    """One realtime sweep of the plan. ``est_s``: its expected seconds on an H100 at full size (for the budget)."""

    name: str
    compiled: bool
    tiny_vae: bool
    resolution: int
    batches: tuple[int, ...]
    est_s: float
    ip2p: bool = False
    smoke: bool = True  # part of --cpu-smoke

    @property
    def variant(self) -> str:
        return f"{'compiled' if self.compiled else 'eager'}, {'tiny' if self.tiny_vae else 'full'} VAE"


BIG = (4, 16, 32)
PLAN = (
    Job("eager-full-512", False, False, 512, (1, *BIG), 60, ip2p=True),
    Job("eager-tiny-512", False, True, 512, (1, *BIG), 30),
    Job("compiled-tiny-512-b1", True, True, 512, (1,), 75),
    Job("compiled-full-512-b1", True, False, 512, (1,), 90),
    Job("eager-full-1024", False, False, 1024, (1,), 15),
    Job("eager-tiny-1024", False, True, 1024, (1,), 10),
    Job("compiled-tiny-512-big", True, True, 512, BIG, 150, smoke=False),
    Job("compiled-full-512-big", True, False, 512, BIG, 200, smoke=False),
    Job("compiled-tiny-1024", True, True, 1024, (1,), 75, smoke=False),
    Job("compiled-full-1024", True, False, 1024, (1,), 90, smoke=False),
)


@dataclass
class CheckConfig:
    out: Path = Path("results/gpu_check")
    device: str = "cuda"
    arch: str = "sd15-ip2p"
    dtype: str = "auto"
    budget_s: float = 330.0
    warmup: int = 3
    repeats: int = 10
    ip2p_steps: tuple[int, ...] = (100, 20)
    compile_backend: str = "inductor"
    cpu_smoke: bool = False
    jobs: tuple[Job, ...] = field(default=PLAN)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.cpu_smoke:
            self.device, self.arch, self.warmup, self.repeats = "cpu", "tiny", 1, 2
            self.ip2p_steps, self.compile_backend = (2, 1), "eager"
            self.jobs = tuple(j for j in self.jobs if j.smoke)

    def sweep(self, job: Job) -> RealtimeConfig:
        """The realtime configuration of one job (smoke: 512 -> 32, 1024 -> 64, batches 4/16/32 -> 2)."""
        res, batches = job.resolution, job.batches
        if self.cpu_smoke:
            res, batches = res // 16, tuple(dict.fromkeys(min(b, 2) for b in batches))
        return RealtimeConfig(
            out=self.out / job.name, device=self.device, dtype=self.dtype, random_weights=True, arch=self.arch,
            batches=batches, resolutions=(res,), warmup=self.warmup, repeats=self.repeats,
            ip2p_steps=self.ip2p_steps if job.ip2p else (), compile=job.compiled, compile_scope="path",
            compile_backend=self.compile_backend, tiny_vae="random" if job.tiny_vae else None, io="tensor",
            quiet=True)


def run_check(cfg: CheckConfig, say: Any = print) -> pd.DataFrame:
    """Every job that fits the budget; returns the combined table (also written to ``cfg.out``)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.perf_counter(), []
    for job in cfg.jobs:
        spent = time.perf_counter() - t0
        if not cfg.cpu_smoke and spent + job.est_s > cfg.budget_s:
            say(f"[gpu_check] skip {job.name}: {spent:.0f} s spent, ~{job.est_s:.0f} s more would pass the "
                f"{cfg.budget_s:.0f} s budget")
            rows.append({"job": job.name, "variant": job.variant, "kind": "ipnet", "resolution": job.resolution,
                         "status": "skipped (time budget)"})
            continue
        t_job = time.perf_counter()
        result = run_realtime(cfg.sweep(job))
        say(f"[gpu_check] {job.name}: {time.perf_counter() - t_job:.0f} s")
        for r in result["rows"]:
            rows.append({"job": job.name, "variant": job.variant if r["kind"] == "ipnet" else r["label"],
                         "device": result["meta"]["device_name"], **r})
    return write_tables(pd.DataFrame.from_records(rows), cfg, time.perf_counter() - t0)


COLUMNS = ["job", "variant", "kind", "resolution", "batch", "status", "p50_ms", "p95_ms", "p50_ms_per_image",
           "edits_per_s", "first_call_ms", "mem_mb", "steps", "nfe", "ratio_to_eager_full", "ratio_to_best",
           "device", "message"]


def write_tables(table: pd.DataFrame, cfg: CheckConfig, seconds: float) -> pd.DataFrame:
    """``gpu_check.csv`` and ``gpu_check.md``: InstructPix2Pix's p50 over the eager full-VAE and over the fastest
    IPNet batch-1 p50 at its resolution (all from this process)."""
    table = table.reindex(columns=COLUMNS)
    ok = table[(table["kind"] == "ipnet") & (table["status"] == "ok") & (table["batch"] == 1)]
    for i, r in table[table["kind"] == "ip2p"].iterrows():
        same = ok[ok["resolution"] == r["resolution"]]
        eager = same[same["variant"] == "eager, full VAE"]["p50_ms"]
        table.loc[i, "ratio_to_eager_full"] = r["p50_ms"] / eager.iloc[0] if len(eager) else math.nan
        table.loc[i, "ratio_to_best"] = r["p50_ms"] / same["p50_ms"].min() if len(same) else math.nan
    table.to_csv(cfg.out / "gpu_check.csv", index=False)
    ipnet = table[table["kind"] == "ipnet"]
    disp = pd.DataFrame([{
        "Variant": r.variant, "Res": f"{r.resolution}²", "Batch": "" if pd.isna(r.batch) else int(r.batch),
        "Status": r.status, "p50 ms": report._fmt_ms(r.p50_ms), "p95 ms": report._fmt_ms(r.p95_ms),
        "ms/image": report._fmt_ms(r.p50_ms_per_image), "Edits/s": report._fmt(r.edits_per_s, 1),
        "First call ms": report._fmt_ms(r.first_call_ms), "Peak MiB": report._fmt(r.mem_mb, 0)}
        for r in ipnet.itertuples()])
    lines = [f"# GPU check: the real-time path ({cfg.arch}, random weights, {cfg.device}, tensors in/out, prompt "
             f"cache off)", "", f"Device: {table['device'].dropna().iloc[0] if table['device'].notna().any() else '?'}"
             f"; {seconds:.0f} s in all; warm-up {cfg.warmup}, {cfg.repeats} timed calls per row; compiled = "
             f"`optimize(compile=True, compile_scope=\"path\")` ({cfg.compile_backend}, reduce-overhead on CUDA).",
             "", "## IPNet", "", report.to_markdown(disp)]
    ip2p = table[table["kind"] == "ip2p"]
    if len(ip2p):
        lines += ["", "## InstructPix2Pix, batch 1, same process", "", report.to_markdown(pd.DataFrame([{
            "Setting": r.variant, "Res": f"{r.resolution}²", "Status": r.status, "p50 ms": report._fmt_ms(r.p50_ms),
            "× IPNet eager full VAE": _ratio(r.ratio_to_eager_full), "× fastest IPNet": _ratio(r.ratio_to_best)}
            for r in ip2p.itertuples()]))]
    text = "\n".join(lines) + "\n"
    (cfg.out / "gpu_check.md").write_text(text, encoding="utf-8")
    return table


def _ratio(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else f"{float(x):.1f}×"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.gpu_check", description=__doc__.split("\n\n")[1])
    p.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="sd15-ip2p")
    p.add_argument("--budget-s", type=float, default=330.0, help="skip jobs that would end after this (seconds)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--cpu-smoke", action="store_true", help="the plan on the CPU, tiny architecture (< 2 min)")
    args = p.parse_args(argv)
    cfg = CheckConfig(out=args.out, device=args.device, arch=args.arch, budget_s=args.budget_s,
                      repeats=args.repeats, compile_backend=args.compile_backend, cpu_smoke=args.cpu_smoke)
    table = run_check(cfg, say=lambda m: print(m, file=sys.stderr, flush=True))
    print((cfg.out / "gpu_check.md").read_text())
    return 1 if (table["status"] == "error").any() else 0


if __name__ == "__main__":
    sys.exit(main())
