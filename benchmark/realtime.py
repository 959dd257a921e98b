"""Real-time one-step path of ``InstantPortraitPipeline``: cold start, steady state, where the time goes (issue #7).

    python -m benchmark.realtime --random-weights --device cuda --dtype float16 --compile \\
        --batches 1,4,16,32 --resolutions 512,1024 --out results/realtime-gpu
    python -m benchmark.realtime --model instantportrait/demo/models/ipnet --device cpu \\
        --batches 1,4 --resolutions 64 --ip2p-steps 4,2 --out results/realtime-cpu

Everything below happens in one process, so each ratio compares numbers from the same run:

1. cold start: building (``--random-weights``: the real SD1.5-class architecture of ``--arch``, random weights) or
   loading (``--model``) IPNet on the device, ``optimize()`` with the chosen switches, and the very first call
   (with ``--compile`` it includes compilation). Every (resolution, batch) also keeps its own first call: with
   ``--compile`` each shape is compiled as its own static graph (``torch._dynamo.reset()`` between shapes frees the
   previous shape's graphs and CUDA-graph pools, so peak memory is the shape's own);
2. steady state per (resolution, batch): ``--warmup`` calls (the first one is that first call), then ``--repeats``
   calls timed with ``time.perf_counter`` with a device synchronisation before and after: p50 / p95 ms per call and
   per image, edits per second (batch x 1000 / p50), peak memory (CUDA: ``torch.cuda.max_memory_allocated`` after
   ``reset_peak_memory_stats``, weights included; CPU: the process's peak RSS, reset per row through
   ``/proc/self/clear_refs`` where Linux allows it, else the process's peak so far). A shape that runs out of
   memory is recorded as ``OOM`` and the sweep goes on;
3. where the time goes, batch 1: the pipeline's own building blocks (``encode_prompt``, ``encode_image``,
   ``predict_clean_latents``, ``decode_latents``) timed inside real calls, with a synchronisation around each;
   ``other`` is the rest of the call (pre/post-processing, start noise, Python);
4. InstructPix2Pix at batch 1 per resolution, each ``--ip2p-steps`` setting (default 100 = its default, and 20) with
   its 3-way classifier-free guidance (7.5 / 1.5): the same architecture, dtype and device as IPNet, diffusers'
   plain pipeline (no optimisation switches), and its p50 over IPNet's batch-1 p50 at the same resolution.

Each call edits synthetic portraits with one instruction; unless ``--prompt-cache``, the prompt cache is cleared
before each call so every call encodes its text (the full cost of an edit, as InstructPix2Pix pays it). Writes
``realtime.md``, ``realtime.csv`` (one row per (resolution, batch) plus the InstructPix2Pix rows) and
``realtime.json`` (every timing, the breakdown, the environment) to ``--out`` (``profile_<res>.txt`` with
``--profile``) and prints a one-line summary. Exit status 1 if a shape failed for a reason other than memory.
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import metrics, report
from benchmark.env import Dist, environment, now, sync
from benchmark.latency import LATENCY_INSTRUCTION, synthetic_portraits
from benchmark.realtime_report import FILES, summarize, summary_line, write_outputs
from instantportrait.config import DTYPE_NAMES

DTYPES = {name: getattr(torch, canonical) for name, canonical in DTYPE_NAMES.items()}
IO_MODES = ("pil", "tensor")
# (breakdown name, InstantPortraitPipeline building block that __call__ runs for it)
STAGES = (("text", "encode_prompt"), ("vae_encode", "encode_image"), ("unet", "predict_clean_latents"),
          ("vae_decode", "decode_latents"))


def ip2p_guidance() -> tuple[float, float]:
    """InstructPix2Pix's (text, image) guidance defaults, as its editor uses them (7.5, 1.5: 3-way CFG)."""
    from instantportrait.methods.diffusion import InstructPix2PixEditor as E

    return E.default_guidance, E.default_image_guidance


@dataclass
class RealtimeConfig:
    """One sweep. Exactly one model source: ``random_weights`` (architecture ``arch``) or ``model`` (a folder)."""

    out: Path = Path("results/realtime")
    device: str = "cuda"
    dtype: str = "auto"  # auto: float16 on CUDA, float32 elsewhere
    random_weights: bool = False
    arch: str | None = None  # architectures.ARCHITECTURES key (None: $INSTANTPORTRAIT_RANDOM_ARCH or sd15-ip2p)
    model: str | None = None  # an InstantPortraitPipeline folder
    ip2p_model: str | None = None  # an InstructPix2Pix-format folder (None: the IPNet folder's own networks)
    batches: tuple[int, ...] = (1, 4, 16, 32)
    resolutions: tuple[int, ...] = (512, 1024)
    warmup: int = 3
    repeats: int = 20
    ip2p_steps: tuple[int, ...] = (100, 20)  # the first is reported as InstructPix2Pix's default
    ip2p_warmup: int = 1
    ip2p_repeats: int = 3
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False
    compile_mode: str = "reduce-overhead"
    compile_scope: str = "networks"  # networks: UNet and VAE decoder apart; path: encode -> UNet -> decode as one
    compile_backend: str = "inductor"
    upcast_vae: bool = False
    tiny_vae: str | None = None  # AutoencoderTiny on both sides: "random" (TAESD layout, random), "taesd", a folder
    prompt_cache: bool = False
    io: str = "pil"  # pil: PIL images in and out (what the app does); tensor: (B, 3, H, W) on the device, "pt" out
    profile: bool = False
    seed: int = 0
    quiet: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.batches, self.resolutions = tuple(self.batches), tuple(self.resolutions)
        self.ip2p_steps = tuple(self.ip2p_steps)
        if self.random_weights == (self.model is not None):
            raise ValueError("give exactly one model source: --random-weights or --model PATH")
        if self.ip2p_model is not None and self.random_weights:
            raise ValueError("--ip2p-model goes with --model; --random-weights builds InstructPix2Pix itself")
        if self.arch is not None and not self.random_weights:
            raise ValueError("--arch chooses the architecture of --random-weights builds")
        for path in (self.model, self.ip2p_model):
            if path is not None and not Path(path).is_dir():
                raise ValueError(f"model folder not found: {path}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.compile_scope not in ("networks", "path"):
            raise ValueError(f"compile_scope must be networks or path, got {self.compile_scope!r}")
        if self.io not in IO_MODES:
            raise ValueError(f"io must be one of {IO_MODES}, got {self.io!r}")
        for name, values in (("batches", self.batches), ("resolutions", self.resolutions)):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"--{name} must be distinct positive integers, got {values}")
        if any(isinstance(b, bool) or int(b) != b or b < 1 for b in self.batches):
            raise ValueError(f"batch sizes must be >= 1, got {self.batches}")
        if any(int(r) != r or r < 8 or r % 8 for r in self.resolutions):
            raise ValueError(f"resolutions must be positive multiples of 8, got {self.resolutions}")
        if any(int(s) != s or s < 1 for s in self.ip2p_steps):
            raise ValueError(f"--ip2p-steps must be >= 1, got {self.ip2p_steps}")
        for name, value, low in (("--warmup", self.warmup, 1), ("--repeats", self.repeats, 1),
                                 ("--ip2p-warmup", self.ip2p_warmup, 1), ("--ip2p-repeats", self.ip2p_repeats, 1)):
            if value < low:
                raise ValueError(f"{name} must be >= {low} (the first call is kept apart as the cold call), "
                                 f"got {value}")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device (use --device cpu)")

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if torch.device(self.device).type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def switches(self) -> dict[str, Any]:
        """The ``InstantPortraitPipeline.optimize`` arguments."""
        return {"channels_last": self.channels_last, "fuse_qkv": self.fuse_qkv, "compile": self.compile,
                "compile_mode": self.compile_mode, "upcast_vae": self.upcast_vae, "compile_scope": self.compile_scope,
                "compile_backend": self.compile_backend}


# ---------------------------------------------------------------------------------------------------------- timing
def timed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall milliseconds of ``fn()``, with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1000.0


def reset_peak_memory(device: torch.device) -> str:
    """Start a peak-memory window; returns what :func:`peak_memory_mb` will measure."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_allocated"
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
        return "cpu_peak_rss"
    except OSError:
        return "cpu_peak_rss_since_start"


def peak_memory_mb(device: torch.device, kind: str) -> float:
    if kind == "cuda_max_allocated":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if kind == "cpu_peak_rss":
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text or \
        "can't allocate memory" in text


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_calls(call: Callable[[int], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """The first call (kept apart), ``warmup - 1`` more untimed calls, then ``repeats`` timed ones (call(i))."""
    first = timed_ms(lambda: call(0), device)
    for i in range(1, warmup):
        call(i)
    kind = reset_peak_memory(device)
    times = [timed_ms(lambda i=i: call(warmup + i), device) for i in range(repeats)]
    return {"first_call_ms": first, "times_ms": times, "n": len(times), "p50_ms": metrics.percentile(times, 50),
            "p95_ms": metrics.percentile(times, 95), "mean_ms": float(np.mean(times)), "min_ms": float(min(times)),
            "mem_mb": peak_memory_mb(device, kind), "mem_kind": kind}


def measured_row(kind: str, label: str, resolution: int, batch: int, steps: int, nfe: int,
                 run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s timings as a table row with the per-image and throughput columns; OOM / errors recorded."""
    row: dict[str, Any] = {"kind": kind, "label": label, "resolution": resolution, "batch": batch, "steps": steps,
                           "nfe": nfe, "status": "ok", "message": "", "n": 0}
    try:
        row.update(run())
    except Exception as exc:  # a failed shape is a result: record it, the sweep goes on
        row.update(status="OOM" if is_oom(exc) else "error", message=f"{type(exc).__name__}: {exc}"[:500])
    p50, p95 = row.get("p50_ms", math.nan), row.get("p95_ms", math.nan)
    row.update(p50_ms=p50, p95_ms=p95, p50_ms_per_image=p50 / batch, p95_ms_per_image=p95 / batch,
               edits_per_s=batch * 1000.0 / p50 if p50 > 0 else math.nan)
    return row


# ---------------------------------------------------------------------------------------------------------- models
def load_ipnet(cfg: RealtimeConfig, device: torch.device, dtype: torch.dtype) -> Any:
    from instantportrait.models.architectures import build_random_ipnet, resolve_architecture
    from instantportrait.pipelines.ipnet import InstantPortraitPipeline

    if cfg.random_weights:
        pipe = build_random_ipnet(resolve_architecture(cfg.arch), device=device, dtype=dtype, seed=cfg.seed)
    else:
        pipe = InstantPortraitPipeline.from_pretrained(cfg.model, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
    if cfg.tiny_vae == "random":  # TAESD's layout for this VAE, random weights: its latency, not its images
        from instantportrait.pipelines.tiny_vae import build_tiny_autoencoder

        pipe.use_tiny_vae(build_tiny_autoencoder(pipe.vae, seed=cfg.seed))
    elif cfg.tiny_vae:
        pipe.use_tiny_vae(cfg.tiny_vae)
    return pipe


def load_ip2p(cfg: RealtimeConfig, device: torch.device, dtype: torch.dtype) -> Any:
    """InstructPix2Pix: random weights in ``cfg.arch``, else the networks of ``--ip2p-model`` (or of the IPNet
    folder: the same architecture) in diffusers' pipeline with its Euler-ancestral sampler."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from diffusers import StableDiffusionInstructPix2PixPipeline as IP2PPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from instantportrait.models.architectures import build_random_instruct_pix2pix, resolve_architecture

    if cfg.random_weights:
        return build_random_instruct_pix2pix(resolve_architecture(cfg.arch), device=device, dtype=dtype,
                                             seed=cfg.seed)
    path = cfg.ip2p_model or cfg.model
    pipe = IP2PPipeline(
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=dtype),
        scheduler=EulerAncestralDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def num_parameters(pipe: Any) -> int:
    return sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())


def make_inputs(cfg: RealtimeConfig, resolution: int, batch: int, device: torch.device) -> tuple[Any, list[str]]:
    """Synthetic portraits (PIL, or a (B, 3, H, W) tensor in [0, 1] on the device) and one instruction each."""
    images: Any = synthetic_portraits(resolution, batch)
    if cfg.io == "tensor":
        arrays = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])  # (B, H, W, 3)
        images = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous().to(device)  # (B, 3, H, W)
    return images, [LATENCY_INSTRUCTION] * batch


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@contextmanager
def stage_timers(pipe: Any, device: torch.device) -> Iterator[dict[str, float]]:
    """Time the pipeline's building blocks inside its real ``__call__``: yields a dict (stage -> ms) that each
    building-block call adds to (clear it between calls). The instance attributes are removed on exit."""
    spent = {stage: 0.0 for stage, _ in STAGES}

    def wrap(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            spent[stage] += (time.perf_counter() - t0) * 1000.0
            return out
        return timed

    for stage, attr in STAGES:
        object.__setattr__(pipe, attr, wrap(stage, getattr(pipe, attr)))
    try:
        yield spent
    finally:
        for _, attr in STAGES:
            pipe.__dict__.pop(attr, None)


# ---------------------------------------------------------------------------------------------------------- sweep
class IPNetSweep:
    """IPNet on one device: steady-state rows, the batch-1 breakdown and profiles, keeping the very first call."""

    def __init__(self, cfg: RealtimeConfig, pipe: Any, device: torch.device):
        self.cfg, self.pipe, self.device = cfg, pipe, device
        self.compiled_shape: tuple[int, int] | None = None
        self.first_call_ms: float | None = None

    def call(self, images: Any, prompts: list[str], seed: int) -> Any:
        if not self.cfg.prompt_cache:
            self.pipe.clear_prompt_cache()
        return self.pipe(images, prompts, generator=generator(self.device, seed),
                         output_type="pt" if self.cfg.io == "tensor" else "pil").images

    def _shape(self, resolution: int, batch: int) -> None:
        """With --compile, a new shape starts from fresh compile caches (its own static graph and graph pools)."""
        if self.cfg.compile and self.compiled_shape not in (None, (resolution, batch)):
            torch._dynamo.reset()
            free_memory(self.device)
        self.compiled_shape = (resolution, batch)

    def _time(self, resolution: int, batch: int, warmup: int, repeats: int) -> dict[str, Any]:
        self._shape(resolution, batch)
        images, prompts = make_inputs(self.cfg, resolution, batch, self.device)
        stats = time_calls(lambda i: self.call(images, prompts, i), self.device, warmup, repeats)
        if self.first_call_ms is None:
            self.first_call_ms = stats["first_call_ms"]
        return stats

    def row(self, resolution: int, batch: int) -> dict[str, Any]:
        row = measured_row("ipnet", "IPNet (1 step)", resolution, batch, 1, 1,
                           lambda: self._time(resolution, batch, self.cfg.warmup, self.cfg.repeats))
        if row["status"] != "ok":
            self.compiled_shape = (-1, -1)  # whatever a failed shape left behind is reset before the next one
            free_memory(self.device)
        return row

    def breakdown(self, resolution: int) -> dict[str, Any]:
        """Mean ms per stage at batch 1 over ``repeats`` instrumented calls (means add up: stages + other = total)."""
        self._shape(resolution, 1)
        images, prompts = make_inputs(self.cfg, resolution, 1, self.device)
        for i in range(self.cfg.warmup):
            self.call(images, prompts, i)
        per_call: list[dict[str, float]] = []
        with stage_timers(self.pipe, self.device) as spent:
            for i in range(self.cfg.repeats):
                for stage in spent:
                    spent[stage] = 0.0
                total = timed_ms(lambda i=i: self.call(images, prompts, i), self.device)
                per_call.append({**spent, "other": total - sum(spent.values()), "total": total})
        means = {k: float(np.mean([c[k] for c in per_call])) for k in per_call[0]}
        return {"resolution": resolution, "batch": 1, "n": len(per_call), "mean_ms": means,
                "p50_ms": {k: metrics.percentile([c[k] for c in per_call], 50) for k in per_call[0]},
                "share": {k: v / means["total"] for k, v in means.items()}, "calls_ms": per_call}

    def profile(self, resolution: int, out: Path) -> Path:
        """torch.profiler over a few batch-1 calls: top ops by self device time (CUDA) and self CPU time."""
        from torch.profiler import ProfilerActivity, profile

        self._shape(resolution, 1)
        images, prompts = make_inputs(self.cfg, resolution, 1, self.device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        n = min(5, self.cfg.repeats)
        with profile(activities=activities) as prof:
            for i in range(n):
                self.call(images, prompts, i)
                sync(self.device)
        averages = prof.key_averages()
        parts = [f"# torch.profiler, IPNet batch 1 at {resolution}², {n} calls (after warm-up); "
                 f"dtype {str(self.pipe.unet.dtype).replace('torch.', '')}, switches {self.cfg.switches()}"]
        if self.device.type == "cuda":
            parts += ["", "## top ops by self device time", averages.table(sort_by="self_device_time_total",
                                                                        row_limit=30)]
        parts += ["", "## top ops by self CPU time", averages.table(sort_by="self_cpu_time_total", row_limit=30)]
        path = out / f"profile_{resolution}.txt"
        path.write_text("\n".join(parts) + "\n", encoding="utf-8")
        return path


def ip2p_label(steps: int, default: bool) -> str:
    return f"InstructPix2Pix {steps} step{'s' if steps != 1 else ''}" + (" (default)" if default else "")


def ipnet_part(cfg: RealtimeConfig, device: torch.device, dtype: torch.dtype,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Cold start, steady-state rows, batch-1 breakdowns (and profiles) of IPNet; frees it before returning."""
    out: dict[str, Any] = {"rows": [], "breakdown": [], "profiles": [], "cold_start": {}}
    cold = out["cold_start"]
    # Static shapes: each (resolution, batch) compiles its own graph; the default limit (8) would be hit by a sweep.
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=64):
        t0 = time.perf_counter()
        pipe = load_ipnet(cfg, device, dtype)
        sync(device)
        cold["load_s"] = time.perf_counter() - t0
        cold["optimize_s"] = timed_ms(lambda: pipe.optimize(**cfg.switches()), device) / 1000.0
        out["params"] = num_parameters(pipe)
        say(f"IPNet ready in {cold['load_s']:.1f} s ({out['params'] / 1e6:.1f}M parameters)")
        sweep = IPNetSweep(cfg, pipe, device)
        for res in cfg.resolutions:
            for batch in cfg.batches:
                row = sweep.row(res, batch)
                out["rows"].append(row)
                say(f"IPNet {res}² batch {batch}: {row['status']}, p50 {report._fmt_ms(row['p50_ms'])} ms, "
                    f"{row['edits_per_s']:.1f} edits/s, first call {report._fmt_ms(row.get('first_call_ms'))} ms")
                one_region = cfg.compile and cfg.compile_scope == "path"  # no stages to time inside one graph
                if batch == 1 and row["status"] == "ok" and not one_region:
                    out["breakdown"].append(sweep.breakdown(res))
                    if cfg.profile:
                        out["profiles"].append(sweep.profile(res, cfg.out).name)
        cold["first_call_ms"] = sweep.first_call_ms
    if cfg.compile:
        torch._dynamo.reset()
    return out


def ip2p_part(cfg: RealtimeConfig, device: torch.device, dtype: torch.dtype, ipnet_b1: dict[int, float],
              cold: dict[str, Any], say: Callable[[str], None]) -> list[dict[str, Any]]:
    """InstructPix2Pix rows at batch 1 per (resolution, steps), each with its p50 over IPNet's batch-1 p50."""
    t0 = time.perf_counter()
    ip2p = load_ip2p(cfg, device, dtype)
    sync(device)
    cold["ip2p_load_s"] = time.perf_counter() - t0
    guidance, image_guidance = ip2p_guidance()
    rows = []
    for res in cfg.resolutions:
        images, prompts = make_inputs(cfg, res, 1, device)
        for k, steps in enumerate(cfg.ip2p_steps):
            def call(i: int, steps: int = steps, images: Any = images, prompts: list[str] = prompts) -> Any:
                return ip2p(prompts, image=images, num_inference_steps=steps, guidance_scale=guidance,
                            image_guidance_scale=image_guidance, generator=generator(device, i),
                            output_type="pt" if cfg.io == "tensor" else "pil").images

            row = measured_row("ip2p", ip2p_label(steps, k == 0), res, 1, steps, 3 * steps,
                               lambda call=call: time_calls(call, device, cfg.ip2p_warmup, cfg.ip2p_repeats))
            row["ratio_to_ipnet"] = row["p50_ms"] / ipnet_b1.get(res, math.nan)
            rows.append(row)
            say(f"{row['label']} {res}²: {row['status']}, p50 {report._fmt_ms(row['p50_ms'])} ms, "
                f"{row['ratio_to_ipnet']:.1f}x IPNet")
    return rows


def run_realtime(cfg: RealtimeConfig) -> dict[str, Any]:
    """The whole sweep; writes the three files (and profiles) to ``cfg.out`` and returns what realtime.json holds."""
    device, dtype = torch.device(cfg.device), cfg.torch_dtype()
    cfg.out.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: None) if cfg.quiet else (lambda msg: print(f"[realtime] {msg}", file=sys.stderr, flush=True))
    env = environment(device, Dist())
    say(f"device: {env['device_name']}")
    part = ipnet_part(cfg, device, dtype, say)
    free_memory(device)
    rows, cold = part["rows"], part["cold_start"]

    ipnet_b1 = {r["resolution"]: r["p50_ms"] for r in rows if r["batch"] == 1 and r["status"] == "ok"}
    if cfg.ip2p_steps:
        rows += ip2p_part(cfg, device, dtype, ipnet_b1, cold, say)
        free_memory(device)

    meta = {
        "mode": "realtime", "time": now(), "environment": env, "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "device_name": env["device_name"], "dtype": str(dtype).replace("torch.", ""), "switches": cfg.switches(),
        "source": (f"random weights, architecture {_arch_name(cfg)}" if cfg.random_weights else f"model {cfg.model}"),
        "ip2p_source": ("random weights, same architecture" if cfg.random_weights else
                        f"model {cfg.ip2p_model}" if cfg.ip2p_model else
                        f"the networks of {cfg.model} in diffusers' InstructPix2Pix pipeline (same architecture)"),
        "params": part["params"], "io": cfg.io, "prompt_cache": cfg.prompt_cache, "tiny_vae": cfg.tiny_vae,
        "ip2p_guidance": list(ip2p_guidance()),
        "timing": "time.perf_counter around each pipeline call, device synchronised before and after; the first "
                  "call of each shape and the rest of the warm-up excluded from p50/p95",
        "memory": ("torch.cuda.max_memory_allocated over the timed calls (after reset_peak_memory_stats), weights "
                   "included" if device.type == "cuda" else
                   "process peak RSS over the timed calls (VmHWM after /proc/self/clear_refs; mem_kind "
                   "cpu_peak_rss_since_start where Linux refuses that reset), whole process"),
    }
    result = {"meta": meta, "cold_start": cold, "rows": rows, "breakdown": part["breakdown"],
              "profiles": part["profiles"],
              "summary": summarize(rows, cfg.resolutions)}
    write_outputs(result, cfg.out)
    return result


def _arch_name(cfg: RealtimeConfig) -> str:
    from instantportrait.models.architectures import resolve_architecture

    return resolve_architecture(cfg.arch).name


# ---------------------------------------------------------------------------------------------------------- CLI
def _int_list(text: str, allow_empty: bool = False) -> tuple[int, ...]:
    if allow_empty and text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from instantportrait.models.architectures import ARCHITECTURES

    p = argparse.ArgumentParser(prog="python -m benchmark.realtime", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--random-weights", action="store_true",
                     help="build the real architecture (--arch) with random weights: nothing to download")
    src.add_argument("--model", help="an IPNet (InstantPortraitPipeline) folder, e.g. a demo model")
    p.add_argument("--ip2p-model", help="an InstructPix2Pix-format folder for the baseline rows (with --model; "
                                        "default: the IPNet folder's networks in the InstructPix2Pix sampler)")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture of --random-weights builds "
                                                                  "(default sd15-ip2p; tiny for tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="load dtype (auto: float16 on CUDA)")
    p.add_argument("--batches", type=_int_list, default=(1, 4, 16, 32), help="comma-separated (default 1,4,16,32)")
    p.add_argument("--resolutions", type=_int_list, default=(512, 1024), help="comma-separated (default 512,1024)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per shape, the first one reported apart")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per shape")
    p.add_argument("--ip2p-steps", type=lambda s: _int_list(s, allow_empty=True), default=(100, 20),
                   help="InstructPix2Pix settings to time at batch 1, the first = its default (default 100,20; "
                        "'none' skips it)")
    p.add_argument("--ip2p-warmup", type=int, default=1)
    p.add_argument("--ip2p-repeats", type=int, default=3)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--fuse-qkv", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile (what: --compile-scope)")
    p.add_argument("--compile-scope", choices=["networks", "path"], default="networks",
                   help="networks: UNet and VAE decoder apart; path: VAE encode -> UNet -> decode as one region")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager/aot_eager: tests)")
    p.add_argument("--tiny-vae", default=None, metavar="SOURCE",
                   help="AutoencoderTiny on both VAE sides: 'random' (TAESD layout, random weights), 'taesd', a folder")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    p.add_argument("--upcast-vae", action="store_true", help="VAE in float32 under half precision")
    p.add_argument("--prompt-cache", action="store_true",
                   help="keep the prompt cache between calls (a stream with one instruction); default: every call "
                        "encodes its text")
    p.add_argument("--io", choices=IO_MODES, default="pil",
                   help="pil: PIL in and out (as the app); tensor: (B, 3, H, W) on the device in, tensor out")
    p.add_argument("--profile", action="store_true", help="write profile_<res>.txt (torch.profiler, batch 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/realtime"))
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = RealtimeConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2
    result = run_realtime(cfg)
    print(summary_line(result))
    print(f"wrote {', '.join(str(cfg.out / f) for f in FILES)}")
    return 1 if any(r["status"] == "error" for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
