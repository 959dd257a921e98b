"""Benchmark harness: methods x portraits x instructions x seeds -> per-edit rows -> tables, plots, grid.

    python -m benchmark --methods ipnet,ipnet-2step,idenet,instructpix2pix,magicbrush,instantid \\
        --images portraits/ --out results/ --seeds 0,1 --device cuda
    accelerate launch -m benchmark --methods ... --out results/        # shards samples across processes
    python -m benchmark --latency-only --random-weights --methods ipnet,instructpix2pix --device cuda --out lat/

Modules: ``cli`` (arguments), ``runner`` (the loop, resume, sharding), ``latency`` (architecture latency),
``metrics`` (pure metric and aggregation functions), ``scoring`` (face/CLIP models behind the metrics), ``store``
(crash-safe JSONL), ``data`` (images, instruction sets), ``report`` (tables, plots, HTML grid).
"""

from benchmark.data import DEFAULT_INSTRUCTIONS, load_instructions
from benchmark.runner import BenchmarkConfig, run_benchmark

__all__ = ["DEFAULT_INSTRUCTIONS", "BenchmarkConfig", "load_instructions", "run_benchmark"]
