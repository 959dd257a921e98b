"""What a benchmark run is asked to do (:class:`BenchmarkConfig`) and the checks that keep a resumed run from mixing
rows or scores made with other settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.data import DEMO_WORLD_PREFIX, DEMO_WORLD_SPEC
from benchmark.metrics import NO_EDIT_METHOD
from instantportrait.eval.scorer import DEFAULT_SOURCE_CAPTION, ScoringConfig


@dataclass
class BenchmarkConfig:
    """Everything a run needs. Per-method dicts are keyed by method name; the key ``"*"`` applies to all."""

    methods: list[str]
    out: Path
    images: str | None = None
    instructions: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on the CPU
    resolution: int = 512  # long side of the sources as loaded and scored, and every editor's working size...
    method_resolution: dict[str, int | None] = field(default_factory=dict)  # ...unless set here (None: its default)
    limit: int | None = None  # at most this many samples per method (in the fixed sample order)
    warmup: int = 1
    model_overrides: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    guidance: dict[str, float] = field(default_factory=dict)
    image_guidance: dict[str, float] = field(default_factory=dict)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    source_caption: str = DEFAULT_SOURCE_CAPTION
    score_later: bool = False
    random_weights: bool = False
    random_arch: str | None = None
    # none | model | sequential (methods.base.OFFLOAD_MODES); latency-only also takes a list, e.g. "none,model": every
    # method is then timed under each, in the same run, so the offload's cost is a ratio within one run
    offload: str = "none"
    demo: bool = True  # a method whose real model is missing runs on its toy demo model, if one is shipped
    demo_root: Path | None = None  # where demo models live (None: instantportrait/demo/models)
    save_images: bool = True
    progress: bool = True
    # the "no-edit" reference row (the source scored as its own output: each score's floor or ceiling) is appended to
    # the methods unless this is off (--no-reference) or the run is latency-only
    reference: bool = True
    # latency-only mode
    latency_only: bool = False
    batch_size: int = 1
    repeats: int = 10
    merge_timeout_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.demo_root = Path(self.demo_root) if self.demo_root is not None else None
        if self.instructions is None and self.images and self.images.startswith(DEMO_WORLD_PREFIX):
            self.instructions = DEMO_WORLD_SPEC  # the demo world's own edits, in the words its models know
        if not self.methods:
            raise ValueError("no method given: pass --methods, e.g. --methods ipnet,instructpix2pix")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"a method is listed twice in --methods {','.join(self.methods)}")
        if self.reference and not self.latency_only and NO_EDIT_METHOD not in self.methods:
            self.methods = [*self.methods, NO_EDIT_METHOD]
        for name, res in {"*": self.resolution, **self.method_resolution}.items():
            if res is not None and (res < 8 or res % 8):
                where = "" if name == "*" else f" for {name}"
                raise ValueError(f"--resolution{where} must be a positive multiple of 8, got {res}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct integers, got {self.seeds}")
        for name, value in (("--warmup", self.warmup), ("--batch-size", self.batch_size - 1),
                            ("--repeats", self.repeats - 1)):
            if value < 0:
                raise ValueError(f"{name} is too small: {value + (0 if name == '--warmup' else 1)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        modes = self.offload_modes()
        if len(modes) > 1 and not self.latency_only:
            raise ValueError(f"--offload {self.offload}: a list of modes is for --latency-only; a run takes one")
        if not self.latency_only and not self.images:
            raise ValueError("--images is required (a folder, an image file, or a Hub dataset owner/name), unless "
                             "--latency-only")

    def offload_modes(self) -> list[str]:
        """The ``offload`` modes of the run, each checked (one clear error for an unknown or repeated one)."""
        from instantportrait.methods.base import check_offload

        modes = [check_offload(m.strip()) for m in self.offload.split(",") if m.strip()] or ["none"]
        if len(set(modes)) != len(modes):
            raise ValueError(f"--offload {self.offload}: a mode is listed twice")
        return modes

    @property
    def demo_world_images(self) -> bool:
        """The images are synthetic demo-world portraits (``--images demo-world:...``): identity is scored with the
        toy demo pack made for them unless a face pack is named; any other images with the real default."""
        return is_demo_world_spec(self.images)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if torch.device(self.device).type == "cuda" else torch.float32
        from instantportrait.config import torch_dtype

        return torch_dtype(self.dtype)

    def settings_for(self, method: str) -> Any:
        from instantportrait.methods import EditSettings

        def pick(d: dict[str, Any]) -> Any:
            return d.get(method, d.get("*"))

        return EditSettings(num_inference_steps=pick(self.steps), guidance_scale=pick(self.guidance),
                            image_guidance_scale=pick(self.image_guidance))

    def override_for(self, method: str, model_key: str | None) -> str | None:
        """``--model-override`` by method name first, then by the editor's model key (``ipnet`` -> ipnet-2step)."""
        return self.model_overrides.get(method) or (self.model_overrides.get(model_key) if model_key else None)

    def fingerprint(self, sources: dict[str, Any] | None = None) -> dict[str, Any]:
        """The settings rows depend on; a resumed run must match them (scores are checked separately).

        ``sources`` (method -> ``ModelSource``, see :func:`model_source`) adds ``demo_models``: the methods that run
        on a toy demo model and its folder (the key is absent when none does), so a resume cannot mix demo-model
        rows with real-model rows.
        """
        demo = {m: s.location for m, s in sorted((sources or {}).items()) if s.kind == "demo"}
        return {
            **({"demo_models": demo} if demo else {}),
            **({"offload": self.offload} if self.offload != "none" else {}),  # absent when none: older runs resume
            "resolution": self.resolution, "method_resolution": dict(sorted(self.method_resolution.items())),
            "dtype": str(self.torch_dtype()).replace("torch.", ""),
            "device_type": torch.device(self.device).type, "random_weights": self.random_weights,
            "random_arch": self.random_arch, "source_caption": self.source_caption,
            "steps": dict(sorted(self.steps.items())), "guidance": dict(sorted(self.guidance.items())),
            "image_guidance": dict(sorted(self.image_guidance.items())),
            "model_overrides": dict(sorted(self.model_overrides.items())),
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["demo_root"] = str(self.demo_root) if self.demo_root is not None else None
        d["scoring"] = self.scoring.to_json()
        return d


def is_demo_world_spec(spec: str | None) -> bool:
    """Whether an ``--images`` spec names the synthetic demo world (``demo-world`` or ``demo-world:N[:SIZE]``)."""
    return bool(spec) and (spec == DEMO_WORLD_SPEC or spec.startswith(DEMO_WORLD_PREFIX))


def check_fingerprint(previous: dict[str, Any] | None, current: dict[str, Any], out: Path,
                      methods: list[str] | None = None) -> None:
    """Refuse to resume into ``out`` with settings other than its ``run.json``'s. ``demo_models`` is compared for the
    ``methods`` both runs have only: a method new to the folder has no rows to mix with."""
    if not previous:
        return
    old, current = dict(previous.get("fingerprint") or {}), dict(current)
    if methods is not None:
        shared = set(methods) & set((previous.get("config") or {}).get("methods") or methods)
        for fp in (old, current):
            demo = {m: loc for m, loc in (fp.pop("demo_models", None) or {}).items() if m in shared}
            fp.update({"demo_models": demo} if demo else {})
    diffs = [f"{k}: {old.get(k)!r} there, {current.get(k)!r} now" for k in {**old, **current}
             if old.get(k) != current.get(k)]
    if diffs:
        raise ValueError(f"{out} holds results made with different settings ({'; '.join(diffs)}); resuming would "
                         "mix them. Use another --out, or the same settings.")


def check_scoring(previous: dict[str, Any] | None, scoring: ScoringConfig, out: Path) -> None:
    old = ((previous or {}).get("scoring") or {}).get("config")
    if not old:
        return
    keys = ("face_pack", "second_face_pack", "clip", "det_size", "det_thresh", "directional_eps", "dlib")
    was = {**ScoringConfig(face_pack=None, clip=None).to_json(), **old}  # keys older runs did not record: defaults
    diffs = [f"{k}: {was.get(k)!r} there, {getattr(scoring, k)!r} now" for k in keys
             if was.get(k) != getattr(scoring, k)]
    if sorted(was.get("unavailable") or {}) != sorted(scoring.unavailable):  # a column scored in one, not the other
        diffs.append(f"unavailable identity columns: {sorted(was.get('unavailable') or {})} there, "
                     f"{sorted(scoring.unavailable)} now")
    if diffs:
        raise ValueError(f"{out} was scored with other models/thresholds ({'; '.join(diffs)}). Use the same scoring "
                         "settings, another --out, or rescore everything with `python -m benchmark score "
                         f"{out} --rescore`.")
