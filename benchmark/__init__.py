"""Benchmark harness: methods x portraits x instructions x seeds -> per-edit rows -> tables, plots, grid.

    python -m benchmark --methods ipnet,ipnet-2step,idenet,instructpix2pix,magicbrush,instantid \\
        --images portraits/ --out results/ --seeds 0,1 --device cuda
    accelerate launch -m benchmark --methods ... --out results/        # shards samples across processes
    python -m benchmark --latency-only --random-weights --methods ipnet,instructpix2pix --device cuda --out lat/

Modules: ``cli`` (arguments), ``config`` (``BenchmarkConfig``, the resume checks), ``env`` (processes, device,
versions), ``editors`` (which model each method runs on, loading it), ``loop`` (the edit loop, resume, sharding,
scoring later), ``results`` (the results folder's files), ``latency`` (architecture latency), ``realtime`` (IPNet's
real-time sweep; ``realtime_report`` its tables), ``metrics`` (pure metric and aggregation functions), ``store``
(crash-safe JSONL), ``data`` (images, instruction sets), ``report`` (tables, plots, HTML grid; reads files only).
The scorer behind the metrics is :class:`instantportrait.eval.scorer.Scorer`.

Nothing is imported eagerly here, so ``import benchmark.metrics`` (or ``report``) does not load torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DEFAULT_INSTRUCTIONS": "benchmark.data",
    "load_instructions": "benchmark.data",
    "BenchmarkConfig": "benchmark.config",
    "run_benchmark": "benchmark.loop",
}

__all__ = ["DEFAULT_INSTRUCTIONS", "BenchmarkConfig", "load_instructions", "run_benchmark"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
