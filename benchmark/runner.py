"""The benchmark loop: methods x portraits x instructions x seeds -> one row per edit in ``rows.jsonl``.

For each method: check it is available (missing weights offline -> recorded as ``unavailable`` with the message,
the run goes on), load it (timed separately), run ``--warmup`` untimed edits, then time every edit alone
(``time.perf_counter`` around ``Editor.edit``, ``torch.cuda.synchronize`` before and after on CUDA). Each row is
scored inline (face model(s) + CLIP) unless ``score_later`` is set, in which case the timed loop does nothing but
edit and hand the image to a writer thread, and ``score_pending`` scores the saved images afterwards.

Resume: rows are keyed by (method, image, instruction, seed); a restarted run skips keys already written and
repairs a cut-short last line, so it ends with exactly one row per key.

Offline: a method without ``--model-override`` whose real model is not available here runs on its shipped toy demo
model (``instantportrait/demo/models/<model key>/``, at the demo model's own resolution unless ``--resolution
METHOD=N`` says otherwise; ``demo=False`` / ``--no-demo`` turns this off), labelled "[toy demo model]" everywhere; a
default face pack / CLIP that is not available is replaced by the toy demo scorers (``ScoringConfig.demo_fallback``),
noted in ``run.json`` and the summary. Which methods ran on demo models is part of the run's fingerprint.

Scale: under ``accelerate launch`` every process takes every N-th sample of each method (by a fixed order, before
skipping done keys, so the split does not depend on what a killed run left), writes ``parts/rows.rank<i>.jsonl``
and a ``done`` marker; rank 0 waits for all markers, merges the parts and writes the tables. Without accelerate
(one process) nothing distributed is initialised.
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from benchmark import store
from benchmark.data import (
    DEFAULT_INSTRUCTIONS,
    DEMO_WORLD_PREFIX,
    DEMO_WORLD_SPEC,
    Instruction,
    SourceImage,
    load_images,
    load_instructions,
)
from benchmark.scoring import DEFAULT_SOURCE_CAPTION, Scorer, ScoringConfig

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
ROWS = "rows"
METHODS = "methods"
SCORES = "scores"
DONE_MARKER = "done.rank{rank}.json"
REFERENCE_METHOD = "ipnet"
MERGE_POLL_S = 2.0
DEMO_LABEL = " [toy demo model]"  # appended to the label of a method that runs on its demo model

MEMORY_NOTE = {
    "cuda": "torch.cuda.max_memory_allocated during the edit (peak reset before each edit) minus what was allocated "
            "before the method was loaded (the scoring models), MiB: the method's weights plus its activations",
    "cpu": "process RSS right after the edit minus RSS before the method was loaded (psutil), MiB: what the "
           "method holds (weights, caches), not a peak",
}
TIMING_NOTE = ("edit_ms: time.perf_counter around Editor.edit (batch 1, the PIL image in and out, so text encoding, "
               "VAE encode/decode and pre/post-processing are included), torch.cuda.synchronize before and after "
               "on CUDA; --warmup edits per method excluded; model loading timed separately (load_s). harness_ms: "
               "the rest of the row's time in the loop (scoring unless --score-later, handing the row to the writer "
               "thread); loop_overhead_share: (loop wall time - sum of edit times) / sum of edit times, including "
               "the writer thread's final drain.")


# ---------------------------------------------------------------------------------------------------------- config
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
    demo: bool = True  # a method whose real model is missing runs on its toy demo model, if one is shipped
    demo_root: Path | None = None  # where demo models live (None: instantportrait/demo/models)
    save_images: bool = True
    progress: bool = True
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
        if not self.latency_only and not self.images:
            raise ValueError("--images is required (a folder, an image file, or a Hub dataset owner/name), unless "
                             "--latency-only")

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if torch.device(self.device).type == "cuda" else torch.float32
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype]

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


# ---------------------------------------------------------------------------------------------------------- processes
@dataclass
class Dist:
    """Process layout: one process by default; ``accelerate launch`` (``WORLD_SIZE`` > 1) uses PartialState."""

    rank: int = 0
    world: int = 1
    state: Any = None

    @classmethod
    def from_env(cls, device: str = "cuda") -> Dist:
        """One process unless launched by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1).

        ``device`` "cpu" asks accelerate for a gloo (CPU) process group, anything else for the GPU one.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            from accelerate import PartialState

            state = PartialState(cpu=torch.device(device).type == "cpu")
            if state.num_processes != world:  # never let two processes believe they are alone (duplicate rows)
                raise RuntimeError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es) "
                                   f"({state.distributed_type}); launch with `accelerate launch --multi_gpu "
                                   "--num_processes N -m benchmark ...` (GPUs) or torchrun")
            return cls(state.process_index, state.num_processes, state)
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1 and self.state is not None:
            self.state.wait_for_everyone()

    def device(self, requested: str) -> str:
        """``cuda`` without an index under accelerate -> this process's GPU."""
        if self.state is not None and requested == "cuda":
            return str(self.state.device)
        return requested


# ---------------------------------------------------------------------------------------------------------- helpers
def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})"


def git_info() -> dict[str, Any]:
    """Commit and whether the work tree differs from it (read-only git calls; null outside a checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: torch.device, dist: Dist) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "insightface", "onnxruntime", "clip-anytorch",
                "numpy", "pillow"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    env = {
        "device": str(device), "device_name": device_name(device),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
        "git": git_info(), "world_size": dist.world, "torch_threads": torch.get_num_threads(),
    }
    return env


def read_run(out: Path) -> dict[str, Any] | None:
    path = out / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_run(out: Path, run: dict[str, Any]) -> None:
    """Atomic write (tmp + rename) of run.json."""
    tmp = out / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(store.jsonable(run), indent=2, sort_keys=False, default=str))
    os.replace(tmp, out / RUN_FILE)


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
    keys = ("face_pack", "second_face_pack", "clip", "det_size", "det_thresh", "directional_eps")
    diffs = [f"{k}: {old.get(k)!r} there, {getattr(scoring, k)!r} now" for k in keys
             if old.get(k) != getattr(scoring, k)]
    if diffs:
        raise ValueError(f"{out} was scored with other models/thresholds ({'; '.join(diffs)}). Use the same scoring "
                         "settings, another --out, or rescore everything with `python -m benchmark score "
                         f"{out} --rescore`.")


def sha256_text(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def instructions_sha256(spec: str | None, instructions: list[Instruction]) -> str:
    """The instruction file's sha256, or (for a built-in set such as ``demo-world``) that of its JSON lines."""
    if spec == DEMO_WORLD_SPEC:
        text = "".join(json.dumps(asdict(ins), sort_keys=True) + "\n" for ins in instructions)
        return hashlib.sha256(text.encode()).hexdigest()
    return sha256_text(Path(spec or DEFAULT_INSTRUCTIONS))


@dataclass(frozen=True)
class Sample:
    image: SourceImage
    instruction: Instruction
    seed: int


def build_samples(images: list[SourceImage], instructions: list[Instruction], seeds: list[int],
                  limit: int | None) -> list[Sample]:
    """The fixed sample order: image-major, then instruction, then seed; ``limit`` keeps the first N."""
    samples = [Sample(im, ins, s) for im in images for ins in instructions for s in seeds]
    return samples[:limit] if limit else samples


def output_relpath(method: str, sample: Sample) -> str:
    return f"images/{method}/{sample.image.id}__{sample.instruction.id}__s{sample.seed}.png"


def source_relpath(image_id: str) -> str:
    return f"sources/{image_id}.png"


def unknown_methods(names: list[str]) -> list[str]:
    from instantportrait.methods import list_methods

    known = list_methods()
    return [n for n in names if n not in known]


def check_methods(names: list[str]) -> None:
    """One clear error listing the registered methods when a name is unknown."""
    from instantportrait.methods import list_methods

    bad = unknown_methods(names)
    if bad:
        raise ValueError(f"unknown method{'s' if len(bad) > 1 else ''} {', '.join(bad)}; registered: "
                         f"{', '.join(list_methods())}")


def model_source(cfg: BenchmarkConfig, name: str) -> Any:
    """Where ``name``'s weights come from in this run (a ``ModelSource``): ``random-weights``, ``override``
    (``--model-override``), ``real`` (the registry's model or an ``INSTANTPORTRAIT_<KEY>`` location), or ``demo``:
    the shipped toy demo model, when the real one is not available here and ``cfg.demo`` is on (``resolve_source``).
    A missing real model stays ``real``: :func:`load_editor` records it as unavailable, with the reason."""
    from instantportrait.methods import editor_class
    from instantportrait.methods.sources import ModelSource, resolve_source

    if cfg.random_weights:
        return ModelSource(name, "random-weights")
    override = cfg.override_for(name, editor_class(name).model_key)
    if override:
        return ModelSource(name, "override", override)
    if cfg.demo:
        source = resolve_source(name, sources=("real", "demo"), demo_root=cfg.demo_root)
        if source.available:
            return source
    return ModelSource(name, "real")


def make_editor(cfg: BenchmarkConfig, name: str, device: str, source: Any = None) -> Any:
    """The editor for ``name`` from ``source`` (default: :func:`model_source`), not loaded. Working size: a per-method
    ``--resolution METHOD=N``, else a demo model's own resolution, else the run's; ``METHOD=native``: the editor's
    default (a demo model's own)."""
    from instantportrait.methods import editor_class

    cls = editor_class(name)
    source = source or model_source(cfg, name)
    demo_res = source.resolution if source.kind == "demo" else None
    if cfg.method_resolution.get(name) is not None:
        resolution = cfg.method_resolution[name]
    elif name in cfg.method_resolution:  # "native"
        resolution = demo_res
    else:
        resolution = demo_res or cfg.resolution
    kwargs: dict[str, Any] = {"resolution": resolution} if resolution is not None else {}
    editor = cls(device=device, dtype=cfg.torch_dtype(), model=source.location, **kwargs)
    if cfg.random_arch is not None:
        editor.random_architecture = cfg.random_arch
    return editor


def load_editor(editor: Any, cfg: BenchmarkConfig, device: torch.device, source: Any = None) -> dict[str, Any]:
    """Check, load and time; a record with ``status`` ok / unavailable / no random-weights builder / load failed,
    where the model came from (``model_source``, ``model_location``) and the working ``resolution``."""
    from instantportrait.errors import ModelNotAvailableError
    from instantportrait.methods.sources import demo_model_dir

    kind = source.kind if source is not None else ("random-weights" if cfg.random_weights else "real")
    location = (source.location or source.description or None) if source is not None else editor.model_override
    info: dict[str, Any] = {"method": editor.name, "label": editor.label + (DEMO_LABEL if kind == "demo" else ""),
                            "model_source": kind, "model_location": location, "resolution": editor.resolution}
    try:
        if not cfg.random_weights:
            editor.check_available()
        sync(device)
        t0 = time.perf_counter()
        if cfg.random_weights:
            editor.load_random_weights()
        else:
            editor.load()
        sync(device)
        info["load_s"] = time.perf_counter() - t0
    except ModelNotAvailableError as exc:
        folder = demo_model_dir(editor.name, cfg.demo_root) if kind == "real" and not cfg.demo else None
        hint = f" (a toy demo model is shipped in {folder}: run without --no-demo to use it)" if folder else ""
        return {**info, "status": "unavailable", "message": f"{exc}{hint}"}
    except NotImplementedError as exc:
        return {**info, "status": "no random-weights builder", "message": str(exc)}
    except Exception as exc:  # a broken checkpoint must not end the whole run
        logger.exception("loading %s failed", editor.name)
        return {**info, "status": "load failed", "message": f"{type(exc).__name__}: {exc}"}
    settings = cfg.settings_for(editor.name)
    nfe = editor.nfe(settings)
    modules = editor._modules(editor._loaded)
    weights_mb = sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]) / 2**20
    info.update(status="ok", message="", nfe=nfe, params=editor.num_parameters(), weights_mb=weights_mb,
                describe={**_safe_describe(editor), "nfe": nfe})
    return info


def _safe_describe(editor: Any) -> dict[str, Any]:
    try:
        return editor.describe()
    except Exception as exc:  # describe is informational
        return {"error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------------------------- run
def run_benchmark(cfg: BenchmarkConfig, dist: Dist | None = None) -> Path:
    """Run (or resume) the benchmark into ``cfg.out``; rank 0 writes the tables. Returns ``cfg.out``."""
    from instantportrait.methods.sources import demo_notice

    check_methods(cfg.methods)
    if cfg.latency_only:
        from benchmark.latency import run_latency

        return run_latency(cfg, dist)
    dist = dist or Dist.from_env(cfg.device)
    device = torch.device(dist.device(cfg.device))
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    session = now()

    instructions = load_instructions(cfg.instructions)
    images, skipped = load_images(cfg.images, max_side=cfg.resolution)
    samples = build_samples(images, instructions, cfg.seeds, cfg.limit)
    previous = read_run(out)
    sources = {name: model_source(cfg, name) for name in cfg.methods}
    fingerprint = cfg.fingerprint(sources)
    check_fingerprint(previous, fingerprint, out, cfg.methods)
    scoring, scoring_notes = cfg.scoring.with_demo_fallback()
    if not cfg.score_later:
        check_scoring(previous, scoring, out)
    if dist.is_main:  # scoring notes of --score-later come when it scores
        notes = [demo_notice(s) for s in sources.values() if s.kind == "demo"]
        for note in notes + ([] if cfg.score_later else scoring_notes):
            print(note, file=sys.stderr, flush=True)

    # Scoring models first: a missing face pack / CLIP fails here, before any edit.
    scorer = None
    if not cfg.score_later:
        scorer = Scorer(ScoringConfig(**{**scoring.to_json(), "device": str(device)})).load()

    marker = out / store.PARTS_DIR / DONE_MARKER.format(rank=dist.rank)
    if marker.exists():  # a marker from an earlier launch; removed before the start barrier
        marker.unlink()
    if dist.is_main:
        if dist.world == 1:  # parts left by an earlier multi-process run that did not get to merge
            store.merge_parts(out, ROWS, store.row_key)
            store.merge_parts(out, METHODS)
        (out / "sources").mkdir(exist_ok=True)
        for im in images:
            path = out / source_relpath(im.id)
            if not path.exists():
                im.image.save(path)
        run = previous or {"created": session}
        run.update({
            "updated": session, "mode": "benchmark", "command": sys.argv, "config": cfg.to_json(),
            "fingerprint": fingerprint, "environment": environment(device, dist),
            "images": {"spec": cfg.images, "count": len(images), "ids": [im.id for im in images],
                       "skipped": skipped, "max_side": cfg.resolution},
            "instructions": {"path": str(cfg.instructions or DEFAULT_INSTRUCTIONS), "count": len(instructions),
                             "sha256": instructions_sha256(cfg.instructions, instructions)},
            "thresholds": {"det_size": cfg.scoring.det_size, "det_thresh": cfg.scoring.det_thresh,
                           "directional_eps": cfg.scoring.directional_eps, "confidence": 0.95,
                           "confidence_interval": "Student-t interval of the mean (scipy.stats.t)"},
            "source_caption": cfg.source_caption, "resolution": cfg.resolution,
            "memory": MEMORY_NOTE[device.type if device.type in MEMORY_NOTE else "cpu"], "timing": TIMING_NOTE,
            "reference_method": REFERENCE_METHOD, "random_weights": cfg.random_weights,
            "model_sources": {m: {"kind": s.kind, "location": s.location, "resolution": s.resolution}
                              for m, s in sources.items()},
        })
        run.setdefault("sessions", []).append({"started": session, "world_size": dist.world,
                                               "device_name": run["environment"]["device_name"]})
        if scorer is not None:
            run["scoring"] = {"config": scoring.to_json(), "models": scorer.describe(), "demo_scorers": scoring_notes}
        write_run(out, run)
    dist.barrier()  # parts merged and run.json written before any process reads what is done

    done = {store.row_key(r) for r in store.read_all(out, ROWS)}
    rows_path = out / f"{ROWS}.jsonl" if dist.world == 1 else store.part_path(out, ROWS, dist.rank)
    methods_path = out / f"{METHODS}.jsonl" if dist.world == 1 else store.part_path(out, METHODS, dist.rank)
    writer = store.AsyncRowWriter(store.JsonlAppender(rows_path, crash_hook=True))
    method_log = store.JsonlAppender(methods_path)
    try:
        for name in cfg.methods:
            mine = samples[dist.rank::dist.world]
            pending = [s for s in mine if (name, s.image.id, s.instruction.id, s.seed) not in done]
            if not pending:
                logger.info("%s: all %d samples of this process are done", name, len(mine))
                continue
            record = run_method(cfg, name, pending, device, writer, scorer, session, dist, sources[name])
            method_log.write({**record, "session": session, "rank": dist.rank, "time": now()})
    finally:
        writer.close()
        method_log.close()
    if dist.world > 1:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"rank": dist.rank, "session": session, "time": now()}))

    if dist.is_main:
        if dist.world > 1:
            wait_for_markers(out, dist.world, cfg.merge_timeout_s)
            store.merge_parts(out, ROWS, store.row_key)
            store.merge_parts(out, METHODS)
            try:
                (out / store.PARTS_DIR).rmdir()
            except OSError:  # not empty: parts of processes that did not finish stay for the next run
                pass
        if cfg.score_later:
            score_pending(out, ScoringConfig(**{**cfg.scoring.to_json(), "device": str(device)}),
                          progress=cfg.progress)
        from benchmark.report import write_report

        write_report(out)
    return out


def wait_for_markers(out: Path, world: int, timeout_s: float) -> None:
    """Rank 0 waits until every process has written its done marker (polling; no collective with a timeout)."""
    t0 = time.monotonic()
    while True:
        missing = [r for r in range(world) if not (out / store.PARTS_DIR / DONE_MARKER.format(rank=r)).exists()]
        if not missing:
            for r in range(world):
                (out / store.PARTS_DIR / DONE_MARKER.format(rank=r)).unlink()
            return
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"processes {missing} did not finish within {timeout_s:.0f} s; their rows stay in "
                               f"{out / store.PARTS_DIR} and are merged by the next run")
        time.sleep(MERGE_POLL_S)


def run_method(cfg: BenchmarkConfig, name: str, pending: list[Sample], device: torch.device,
               writer: store.AsyncRowWriter, scorer: Scorer | None, session: str, dist: Dist,
               source: Any = None) -> dict[str, Any]:
    """Load one method (from ``source``, default :func:`model_source`), warm it up and edit every pending sample;
    returns the method's record."""
    from tqdm import tqdm

    rss0 = rss_mb()
    cuda0 = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    source = source or model_source(cfg, name)
    editor = make_editor(cfg, name, str(device), source)
    info = load_editor(editor, cfg, device, source)
    info["mem_kind"] = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_delta"
    if info["status"] != "ok":
        logger.warning("%s: %s: %s", name, info["status"], info["message"])
        editor.unload()
        return info
    settings = cfg.settings_for(name)
    try:
        for _ in range(cfg.warmup):
            editor.edit([pending[0].image.image], [pending[0].instruction.instruction], seed=pending[0].seed,
                        settings=settings)
        sync(device)
    except Exception as exc:
        editor.unload()
        return {**info, "status": "warm-up failed", "message": f"{type(exc).__name__}: {exc}"}

    edit_total = 0.0
    bar = tqdm(total=len(pending), desc=f"{name} [{dist.rank}/{dist.world}]" if dist.world > 1 else name,
               unit="edit", position=dist.rank, disable=not cfg.progress, dynamic_ncols=True)
    loop_t0 = time.perf_counter()
    for sample in pending:
        row_t0 = time.perf_counter()
        ins = sample.instruction
        row: dict[str, Any] = {
            "method": name, "image": sample.image.id, "instruction_id": ins.id, "seed": sample.seed,
            "category": ins.category, "instruction": ins.instruction, "target_caption": ins.target_caption,
            "source_caption": ins.source_caption or cfg.source_caption, "source": source_relpath(sample.image.id),
            "width": sample.image.image.width, "height": sample.image.image.height,
        }
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        output: PIL.Image.Image | None = None
        sync(device)
        t0 = time.perf_counter()
        try:
            output = editor.edit([sample.image.image], [ins.instruction], seed=sample.seed, settings=settings)[0]
            sync(device)
            edit_s = time.perf_counter() - t0
            row.update(status="ok", error=None)
        except Exception as exc:  # one failed edit (e.g. out of memory) is a row, not the end of the run
            edit_s = time.perf_counter() - t0
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
            if device.type == "cuda":
                torch.cuda.empty_cache()
        edit_total += edit_s
        mem = (torch.cuda.max_memory_allocated(device) / 2**20 - cuda0 if device.type == "cuda"
               else rss_mb() - rss0)
        row.update(edit_ms=edit_s * 1000.0, nfe=info["nfe"], mem_peak_mb=mem, mem_kind=info["mem_kind"],
                   output=output_relpath(name, sample) if output is not None and cfg.save_images else None,
                   scored=False)
        if output is not None and scorer is not None:
            row.update(scorer.score(sample.image.id, sample.image.image, output, ins.target_caption,
                                    row["source_caption"]))
        row.update(rank=dist.rank, session=session, time=time.time())
        row["harness_ms"] = (time.perf_counter() - row_t0 - edit_s) * 1000.0
        writer.put(row, output if cfg.save_images else None,
                   cfg.out / row["output"] if row["output"] else None)
        bar.update(1)
    writer.drain()
    loop_wall = time.perf_counter() - loop_t0
    bar.close()
    editor.unload()
    del editor
    gc.collect()
    return {**info, "n_rows": len(pending), "edit_total_s": edit_total, "loop_wall_s": loop_wall,
            "loop_overhead_share": (loop_wall - edit_total) / edit_total if edit_total > 0 else None,
            "settings": {k: v for k, v in asdict(settings).items() if v not in (None, {})}}


# ---------------------------------------------------------------------------------------------------------- scoring
def merged_rows(out: Path) -> list[dict[str, Any]]:
    """Rows (one per key) with later scores (``scores.jsonl``) applied over inline ones."""
    rows = store.dedupe(store.read_all(out, ROWS))
    scores = {store.row_key(s): s for s in store.read_jsonl(out / f"{SCORES}.jsonl")}
    merged = []
    for row in rows:
        s = scores.get(store.row_key(row))
        if s is not None:
            row = {**row, **{k: v for k, v in s.items() if k not in store.KEY_FIELDS}}
        merged.append(row)
    return merged


def score_pending(out: Path, scoring: ScoringConfig | None = None, rescore: bool = False,
                  progress: bool = True) -> int:
    """Score saved outputs that have no scores yet (``--score-later`` or ``python -m benchmark score``).

    Reads ``sources/<image>.png`` and the saved output, appends one record per row to ``scores.jsonl``. With
    ``rescore`` every ok row is scored again (after moving the old ``scores.jsonl`` aside), e.g. with another face
    model. Returns how many rows were scored.
    """
    from tqdm import tqdm

    out = Path(out)
    run = read_run(out)
    if run is None:
        raise ValueError(f"{out} holds no {RUN_FILE}: not a benchmark results folder")
    if scoring is None:
        recorded = (run.get("scoring") or {}).get("config") or (run.get("config") or {}).get("scoring")
        scoring = ScoringConfig(**recorded) if recorded else ScoringConfig()
    scoring, notes = scoring.with_demo_fallback()
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    scores_path = out / f"{SCORES}.jsonl"
    if rescore:
        if scores_path.exists():
            os.replace(scores_path, out / f"{SCORES}.{int(time.time())}.jsonl.bak")
    else:
        check_scoring(run, scoring, out)
    rows = store.dedupe(store.read_all(out, ROWS))
    have = {store.row_key(s) for s in store.read_jsonl(scores_path, repair=True)}
    pending = [r for r in rows if r.get("status") == "ok" and r.get("output")
               and (rescore or not r.get("scored")) and store.row_key(r) not in have]
    scorer = Scorer(scoring).load()
    run["scoring"] = {"config": scoring.to_json(), "models": scorer.describe(), "demo_scorers": notes}
    write_run(out, run)
    app = store.JsonlAppender(scores_path)
    sources: dict[str, PIL.Image.Image] = {}
    try:
        for row in tqdm(pending, desc="scoring", unit="row", disable=not progress):
            if row["image"] not in sources:
                sources[row["image"]] = PIL.Image.open(out / row["source"]).convert("RGB")
            output = PIL.Image.open(out / row["output"]).convert("RGB")
            scores = scorer.score(row["image"], sources[row["image"]], output, row["target_caption"],
                                  row.get("source_caption") or DEFAULT_SOURCE_CAPTION)
            app.write({**{k: row[k] for k in store.KEY_FIELDS}, **scores})
    finally:
        app.close()
    return len(pending)
