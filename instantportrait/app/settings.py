"""The app's settings: a dataclass filled from command-line flags, whose defaults come from environment variables.

    python app.py --device cuda --dtype float16 --model ipnet=/data/ipnet --face-pack antelopev2 \
        --clip ViT-B/32 --memory-budget-gb 20 --max-concurrency 2 --port 7860 [--offload model]

Environment (read when the flag is absent): ``INSTANTPORTRAIT_DEVICE``, ``INSTANTPORTRAIT_DTYPE``,
``INSTANTPORTRAIT_OFFLOAD``,
``INSTANTPORTRAIT_FACE_PACK``, ``INSTANTPORTRAIT_MEMORY_BUDGET_GB``, ``INSTANTPORTRAIT_MAX_CONCURRENCY``,
``INSTANTPORTRAIT_TINY=1``, ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (set by Hugging Face Spaces); model
locations use the registry's own ``INSTANTPORTRAIT_<KEY>`` variables (``INSTANTPORTRAIT_IPNET=/data/ipnet``,
``INSTANTPORTRAIT_CLIP=/data/ViT-L-14.pt``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from instantportrait.config import DTYPE_NAMES
from instantportrait.methods.base import OFFLOAD_MODES, check_offload
from instantportrait.methods.sources import DEMO_ROOT, SOURCE_KINDS

_TRUE = {"1", "true", "yes", "on"}
DTYPES = {name: getattr(torch, canonical) for name, canonical in DTYPE_NAMES.items()}


@dataclass
class AppSettings:
    """Everything the app is configured with (nothing per request)."""

    device: str = "auto"  # auto -> cuda if available, else cpu
    dtype: str = "auto"  # auto -> float16 on cuda, float32 on cpu
    # none | model | sequential: keep the editors' weights in CPU memory and move each network (or layer) to the GPU
    # while it runs, for a card too small for a method (slower; a no-op on the CPU). See methods.base.OFFLOAD_MODES.
    offload: str = "none"
    models: dict[str, str] = field(default_factory=dict)  # method or model key -> local folder / repo@rev
    face_pack: str = "buffalo_l"
    clip: str | None = None  # CLIP variant or weights file; None -> INSTANTPORTRAIT_CLIP or ViT-L/14
    memory_budget_gb: float | None = None  # None -> 80% of GPU memory / 60% of RAM
    max_concurrency: int = 2  # requests edited at the same time
    queue_size: int = 32  # requests waiting beyond that are refused with a "busy" message
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    tiny: bool = False  # allow tiny random-weight stand-ins when neither real nor demo models exist
    # When no method at all has a real or demo model (a fresh offline machine), fall back to the labelled tiny
    # stand-ins so the interface still works, instead of a page where nothing can run.
    auto_tiny: bool = True
    sources: tuple[str, ...] = ("real", "demo")  # model sources in order of preference (tiny appended by `tiny`)
    demo_root: Path = DEMO_ROOT
    resolution: int = 512  # long side the editors work at
    max_side: int = 1024  # larger uploads are downscaled to this long side first
    work_dir: Path | None = None  # tiny models and example images; None -> a temporary folder

    def __post_init__(self) -> None:
        bad = [s for s in self.sources if s not in SOURCE_KINDS]
        if bad:
            raise ValueError(f"unknown model source(s) {bad}; choose from {', '.join(SOURCE_KINDS)}")
        if self.tiny and "tiny" not in self.sources:
            self.sources = (*self.sources, "tiny")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be positive, got {self.memory_budget_gb}")
        if self.resolution < 64 or self.max_side < 64:
            raise ValueError("resolution and max_side must be at least 64 pixels")
        self.torch_dtype  # validates the name  # noqa: B018
        check_offload(self.offload)

    @property
    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if self.torch_device.startswith("cuda") else torch.float32
        try:
            return DTYPES[self.dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from auto, {', '.join(DTYPES)}") from None

    @property
    def allows_tiny(self) -> bool:
        return "tiny" in self.sources

    def budget_bytes(self) -> int | None:
        """The model memory budget in bytes: the setting, else 80% of the GPU's memory or 60% of the RAM."""
        if self.memory_budget_gb is not None:
            return int(self.memory_budget_gb * 1e9)
        device = torch.device(self.torch_device)
        if device.type == "cuda" and torch.cuda.is_available():
            return int(0.8 * torch.cuda.get_device_properties(device.index or 0).total_memory)
        try:
            return int(0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):  # not POSIX
            return None


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def _model_entry(text: str) -> tuple[str, str]:
    name, sep, location = text.partition("=")
    if not sep or not name.strip() or not location.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=LOCATION (e.g. ipnet=/data/ipnet), got {text!r}")
    return name.strip(), location.strip()


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python app.py", description="InstantPortrait Gradio demo: IPNet side by side "
                                "with the baselines, on the same editors the benchmark runs.")
    p.add_argument("--device", default=_env("INSTANTPORTRAIT_DEVICE", "auto"), help="auto, cpu, cuda, cuda:1")
    p.add_argument("--dtype", default=_env("INSTANTPORTRAIT_DTYPE", "auto"), choices=["auto", *DTYPES])
    p.add_argument("--offload", default=_env("INSTANTPORTRAIT_OFFLOAD", "none"), choices=OFFLOAD_MODES,
                   help="keep weights in CPU memory and move each network (model) or layer (sequential) to the GPU "
                        "as it runs: for a card too small for a method; slower; a no-op on the CPU")
    p.add_argument("--model", action="append", type=_model_entry, default=[], metavar="NAME=LOCATION",
                   help="model for a method or model key (repeatable): a local folder or repo@revision; "
                        "INSTANTPORTRAIT_<KEY> does the same")
    p.add_argument("--face-pack", default=_env("INSTANTPORTRAIT_FACE_PACK", "buffalo_l"),
                   help="insightface pack name (buffalo_l, antelopev2) or folder, for identity similarity")
    p.add_argument("--clip", default=None, help="CLIP variant (ViT-L/14) or weights file, for CLIP-T "
                   "(default: INSTANTPORTRAIT_CLIP or ViT-L/14)")
    p.add_argument("--memory-budget-gb", type=float, default=_float_env("INSTANTPORTRAIT_MEMORY_BUDGET_GB"),
                   help="unload least-recently-used models above this (default: 80%% of GPU memory / 60%% of RAM)")
    p.add_argument("--max-concurrency", type=int, default=int(_env("INSTANTPORTRAIT_MAX_CONCURRENCY", "2")))
    p.add_argument("--queue-size", type=int, default=32)
    p.add_argument("--host", default=_env("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to listen on (default 127.0.0.1; Spaces set 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(_env("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--tiny", action="store_true", default=(_env("INSTANTPORTRAIT_TINY", "") or "").lower() in _TRUE,
                   help="when neither real nor demo weights exist, run tiny RANDOM-weight stand-ins (UI testing)")
    p.add_argument("--sources", default=None,
                   help=f"comma-separated model sources in order of preference (default real,demo; "
                        f"choose from {','.join(SOURCE_KINDS)})")
    p.add_argument("--resolution", type=int, default=512, help="long side the editors work at")
    p.add_argument("--max-side", type=int, default=1024, help="larger uploads are downscaled to this first")
    p.add_argument("--no-auto-tiny", dest="auto_tiny", action="store_false",
                   help="do not fall back to tiny random weights when no method has real or demo weights")
    p.add_argument("--work-dir", type=Path, default=None, help="where tiny models and example images are written")
    return p


def _float_env(name: str) -> float | None:
    value = _env(name)
    return float(value) if value else None


def settings_from_args(argv: list[str] | None = None) -> AppSettings:
    """Parse flags (and environment defaults) into :class:`AppSettings`; bad values exit with a usage message."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip()) if args.sources else ("real", "demo")
    try:
        return AppSettings(
            device=args.device, dtype=args.dtype, offload=args.offload, models=dict(args.model),
            face_pack=args.face_pack, clip=args.clip,
            memory_budget_gb=args.memory_budget_gb, max_concurrency=args.max_concurrency, queue_size=args.queue_size,
            host=args.host, port=args.port, share=args.share, tiny=args.tiny, auto_tiny=args.auto_tiny,
            sources=sources,
            resolution=args.resolution, max_side=args.max_side, work_dir=args.work_dir,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
