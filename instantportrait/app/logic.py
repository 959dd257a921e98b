"""Request handling of the Gradio app, free of any UI code so that it can be unit-tested.

One request (:class:`EditRequest`: an image, an instruction, methods, seed and settings) goes through
:meth:`EditService.run`:

1. the image is read safely (:mod:`instantportrait.imageio`: EXIF orientation, any mode to RGB, large images
   downscaled, a non-image refused with one message);
2. the instruction is checked (empty: refused) and truncated to the text encoder's 77 CLIP tokens with a notice;
3. faces are found in the input (none: editing goes on, identity similarity is n/a; several: the largest is used)
   with the face model that fits the input: the toy demo pack for the app's demo-world examples (recognised by their
   pixels), the real one (buffalo_l, else dlib) for anything else; every tile and table row names it;
4. each method runs through the registry's ``Editor.edit`` (loaded lazily by :class:`~.manager.ModelManager`),
   timed, and scored with the benchmark's own scorers (identity similarity, CLIP-T). A method that cannot run
   gets its reason instead of an image; the others still run.

Everything a request needs travels as arguments; the service only holds what all requests share (settings, model
sources, the model manager, the scorers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from instantportrait.app.manager import ModelManager
from instantportrait.app.scoring import Scorers, SourceFaces
from instantportrait.app.settings import AppSettings
from instantportrait.errors import InstantPortraitError, InvalidImageError, ModelNotAvailableError
from instantportrait.imageio import LoadedImage, load_image, prepare_image
from instantportrait.methods import EditSettings
from instantportrait.methods.reference import editing_methods
from instantportrait.methods.sources import (
    TINY_LABEL,
    Kind,
    ModelSource,
    SourcePolicy,
    TinyModels,
    estimate_bytes,
    method_overrides,
    open_editor,
    resolve_sources,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]  # (fraction done in [0, 1], what is happening)

CLIP_CONTEXT_LENGTH = 77  # tokens the CLIP text encoder reads, start and end tokens included
MAX_SEED = 2**32 - 1
MAX_STEPS = 200
IPNET_METHODS = ("ipnet", "ipnet-2step")  # preferred for the before/after slider


class InputError(InstantPortraitError, ValueError):
    """A request input the app refuses (one message per problem, shown to the visitor)."""


# ---------------------------------------------------------------------------------------------------------- inputs
def prepare_input(image: Any, max_side: int) -> LoadedImage:
    """An upright RGB image, downscaled to ``max_side``, from a file path, a PIL image or a uint8 array.

    Raises :class:`InputError` with a visitor-facing message (the file's own name, never a server path).
    """
    if image is None or (isinstance(image, str) and not image.strip()):
        raise InputError("Please upload a portrait (or pick one of the examples).")
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            return load_image(path, max_side=max_side)
        except InvalidImageError as exc:
            why = str(exc).replace(str(path), path.name)
            raise InputError(f"This upload cannot be used as a portrait ({why}). Please upload a JPEG, PNG or WebP "
                             "image.") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(f"expected an 8-bit image array, got {image.dtype} with shape {image.shape}")
        image = PIL.Image.fromarray(image)
    if not isinstance(image, PIL.Image.Image):
        raise InputError(f"expected an image, got {type(image).__name__}")
    try:
        return prepare_image(image, max_side=max_side)
    except (OSError, ValueError) as exc:
        raise InputError(f"This image cannot be read ({type(exc).__name__}: {exc}).") from None


class TokenCounter:
    """Counts CLIP tokens of an instruction, start and end tokens included.

    With a transformers ``CLIPTokenizer`` (the one of a loaded model), that tokenizer is used; otherwise
    clip-anytorch's BPE tokenizer (the same vocabulary Stable Diffusion's text encoder uses), loaded once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bpe: Any = None

    def _clip_bpe(self) -> Any:
        with self._lock:
            if self._bpe is None:
                from instantportrait.eval.clip_score import _clip_module

                self._bpe = _clip_module().simple_tokenizer.SimpleTokenizer()
            return self._bpe

    def count(self, text: str, tokenizer: Any = None) -> int:
        if tokenizer is not None:
            return len(tokenizer(text, truncation=False)["input_ids"])
        return len(self._clip_bpe().encode(text)) + 2

    @staticmethod
    def limit(tokenizer: Any = None) -> int:
        n = getattr(tokenizer, "model_max_length", None)
        return int(n) if isinstance(n, int) and 0 < n <= 4096 else CLIP_CONTEXT_LENGTH


def fit_instruction(text: str, count: Callable[[str], int], limit: int) -> tuple[str, int]:
    """The longest prefix of ``text`` (cut at a word boundary where possible) of at most ``limit`` tokens, and the
    token count of the full text. ``count`` maps a string to its token count (start/end tokens included)."""
    total = count(text)
    if total <= limit:
        return text, total
    cuts = [i for i, ch in enumerate(text) if ch.isspace() and i > 0 and not text[i - 1].isspace()]
    if not cuts or count(text[:cuts[0]]) > limit:
        cuts = list(range(1, len(text)))  # one huge word: cut inside it
    lo, hi = 0, len(cuts) - 1  # binary search for the last cut that fits
    best = 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if count(text[:cuts[mid]]) <= limit:
            best, lo = cuts[mid], mid + 1
        else:
            hi = mid - 1
    return text[:best].rstrip(" ,;:-"), total


# ---------------------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class EditRequest:
    """One visitor's request. ``steps``/``guidance_scale``/``image_guidance_scale``: ``None`` = each method's
    default (IPNet ignores them)."""

    image: Any
    instruction: str | None
    methods: tuple[str, ...]
    seed: int = 0
    steps: int | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None

    def settings(self) -> EditSettings:
        return EditSettings(num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                            image_guidance_scale=self.image_guidance_scale)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass
class MethodResult:
    """What one method produced for one request, or why it could not run."""

    method: str
    label: str
    source: ModelSource
    image: PIL.Image.Image | None = None
    nfe: int | None = None
    latency_ms: float | None = None
    load_seconds: float = 0.0
    id_sim: float | None = None
    id_note: str | None = None  # why ID-sim is n/a
    id_backend: str | None = None  # the face model behind ID-sim ("dlib", "insightface:buffalo_l", "toy:...")
    clip_t: float | None = None
    clip_note: str | None = None  # why CLIP-T is n/a
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None

    def caption(self) -> str:
        """The tile caption (Markdown): method, network evaluations, latency, ID-sim, CLIP-T, model source."""
        head = f"**{self.label}**"
        if not self.ok:
            return f"{head}  \n**Cannot run here:** {self.error}"
        nfe = f"{self.nfe} network evaluation{'s' if self.nfe != 1 else ''}" if self.nfe is not None else "NFE n/a"
        id_model = f" ({self.id_backend})" if self.id_backend else ""
        lines = [head, f"{nfe} · {self.latency_ms:.0f} ms · ID-sim {_fmt(self.id_sim)}{id_model} · "
                       f"CLIP-T {_fmt(self.clip_t)}"]
        notes = []
        if self.id_sim is None and self.id_note:
            notes.append(f"ID-sim n/a: {self.id_note}")
        if self.clip_t is None and self.clip_note:
            notes.append(f"CLIP-T n/a: {self.clip_note}")
        if self.load_seconds:
            notes.append(f"model loaded for this request in {self.load_seconds:.1f} s (not in the latency)")
        if self.source.kind == Kind.TINY:
            lines.append(f"⚠️ **{TINY_LABEL}**")
        elif self.source.description:
            notes.append(f"model: {self.source.description}")
        lines += [f"<small>{n}</small>" for n in notes]
        return "  \n".join(lines)

    def row(self) -> dict[str, Any]:
        return {
            "method": self.label,
            "model": self.source.kind if self.source.kind != Kind.TINY else "TINY random weights",
            "network evaluations": self.nfe if self.nfe is not None else "n/a",
            "latency (ms)": round(self.latency_ms) if self.latency_ms is not None else "n/a",
            "ID-sim": round(self.id_sim, 3) if self.id_sim is not None else "n/a",
            "ID model": self.id_backend or "n/a",
            "CLIP-T": round(self.clip_t, 3) if self.clip_t is not None else "n/a",
            "status": "ok" if self.ok else f"cannot run: {self.error}"[:160],
        }


TABLE_COLUMNS = ("method", "model", "network evaluations", "latency (ms)", "ID-sim", "ID model", "CLIP-T", "status")


@dataclass
class RequestResult:
    """Everything the UI shows for one request."""

    image: PIL.Image.Image | None = None  # the input as edited (upright, RGB, maybe downscaled)
    instruction: str = ""  # as given to the editors (maybe truncated)
    notes: list[str] = field(default_factory=list)  # what was done to the inputs
    warnings: list[str] = field(default_factory=list)  # things the visitor should know (no face, truncation)
    error: str | None = None  # the request was refused (bad inputs); nothing ran
    results: list[MethodResult] = field(default_factory=list)

    def status_markdown(self) -> str:
        if self.error:
            return f"⚠️ **{self.error}**"
        lines = []
        if self.image is not None:
            lines.append(f"**Input** {self.image.width}×{self.image.height}"
                         + "".join(f" · {n}" for n in self.notes))
        lines.append(f"**Instruction** “{self.instruction}”")
        lines += [f"⚠️ {w}" for w in self.warnings]
        ok = sum(r.ok for r in self.results)
        lines.append(f"**Done** {ok} of {len(self.results)} method(s) ran"
                     + ("" if ok == len(self.results) else "; see the tiles for why the others could not"))
        return "  \n".join(lines)

    def table(self) -> Any:
        import pandas as pd

        return pd.DataFrame([r.row() for r in self.results], columns=list(TABLE_COLUMNS))

    def slider(self) -> tuple[PIL.Image.Image, PIL.Image.Image, str] | None:
        """(before, after, label) for the before/after slider: IPNet if it ran, else the first method that ran."""
        done = {r.method: r for r in self.results if r.ok}
        pick = next((done[m] for m in IPNET_METHODS if m in done), next(iter(done.values()), None))
        if pick is None or self.image is None:
            return None
        return self.image, pick.image, f"Before / after — {pick.label}"  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------- service
def _oom_types() -> tuple[type[BaseException], ...]:
    import torch

    types: list[type[BaseException]] = [MemoryError]
    for owner, name in ((torch, "OutOfMemoryError"), (torch.cuda, "OutOfMemoryError")):
        t = getattr(owner, name, None)
        if isinstance(t, type):
            types.append(t)
    return tuple(types)


def _quiet_progress_bars() -> None:
    """No tqdm bars from model loading in the server log (one per component per load)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


class EditService:
    """What every request shares: settings, model sources, the model manager and the scorers."""

    def __init__(self, settings: AppSettings, sources: dict[str, ModelSource], manager: ModelManager,
                 scorers: Scorers, work_dir: Path) -> None:
        self.settings = settings
        self.sources = sources
        self.manager = manager
        self.scorers = scorers
        self.work_dir = work_dir
        self.tokens = TokenCounter()
        self._demo_world_lock = threading.Lock()
        self._demo_world: frozenset[str] | None = None  # pixel digests of the demo-world examples, made once

    @classmethod
    def create(cls, settings: AppSettings) -> EditService:
        """Resolve every registered method's model source, register the editors (nothing is loaded), set up the
        scorers. Fast offline: at most a few seconds of availability checks, run concurrently."""
        _quiet_progress_bars()
        work_dir = Path(settings.work_dir) if settings.work_dir else Path(tempfile.mkdtemp(prefix="instantportrait-"))
        work_dir.mkdir(parents=True, exist_ok=True)
        methods = editing_methods()  # not the benchmark's "no-edit" reference row: a tile that never edits

        def policy(tiny: TinyModels | None) -> SourcePolicy:
            return SourcePolicy(sources=settings.sources, overrides=method_overrides(methods, settings.models),
                                demo_root=settings.demo_root, tiny=tiny, device=settings.torch_device,
                                dtype=settings.torch_dtype, fallback_resolution=settings.resolution,
                                offload=settings.offload)

        app_policy = policy(TinyModels(work_dir / "tiny") if settings.allows_tiny else None)
        sources = resolve_sources(methods, app_policy)
        if settings.auto_tiny and not settings.allows_tiny and not any(s.available for s in sources.values()):
            logger.warning("no real or demo model is available for any method: serving TINY RANDOM-weight "
                           "stand-ins, labelled as such (start with --no-auto-tiny to refuse)")
            settings = dataclasses.replace(settings, tiny=True)
            app_policy = policy(TinyModels(work_dir / "tiny"))
            sources = resolve_sources(methods, app_policy)
        manager = ModelManager(settings.budget_bytes())
        for name, source in sources.items():
            if source.available:
                manager.add(name, open_editor(name, app_policy, source=source)[0], estimate_bytes(source))
        scorers = Scorers(settings.face_pack, settings.clip, device=settings.torch_device,
                          tiny_root=work_dir / "tiny" if settings.allows_tiny else None)
        return cls(settings, sources, manager, scorers, work_dir)

    # ------------------------------------------------------------------ what the UI lists
    def label(self, method: str) -> str:
        from instantportrait.methods import editor_class

        return editor_class(method).label

    def method_choices(self) -> list[tuple[str, str]]:
        """(checkbox label, method name) for every registered method, with its model source noted."""
        out = []
        for name, source in self.sources.items():
            badge = source.badge
            out.append((f"{self.label(name)} — {badge}" if badge else self.label(name), name))
        return out

    def default_methods(self) -> list[str]:
        """IPNet and one baseline when they can run; otherwise IPNet alone (its tile then says why)."""
        runnable = [m for m, s in self.sources.items() if s.available]
        picks = [m for m in ("ipnet", "instructpix2pix") if m in runnable]
        return picks or runnable[:2] or [next(iter(self.sources), "ipnet")]

    @property
    def uses_tiny(self) -> bool:
        return any(s.kind == Kind.TINY for s in self.sources.values())

    def banner_markdown(self) -> str:
        """Which model every method and scorer uses here (shown at the top of the page)."""
        lines = []
        if self.uses_tiny:
            lines.append(f"### ⚠️ {TINY_LABEL}\nMethods marked *tiny random weights* run randomly initialised "
                         "networks of the real architectures: their images are noise and their numbers mean nothing. "
                         "They exist to test the interface on machines without the weights.")
        rows = []
        for name, s in self.sources.items():
            where = s.description if s.available else f"not available — {s.reason}"
            rows.append(f"- **{self.label(name)}**: {s.kind if s.available else ''} {where}".replace("  ", " "))
        lines.append("<details><summary>Models in this demo</summary>\n\n" + "\n".join(rows)
                     + "\n\n- " + "\n- ".join(self.scorers.labels())
                     + f"\n- device: {self.settings.torch_device}, "
                     f"{str(self.settings.torch_dtype).replace('torch.', '')}\n</details>")
        return "\n\n".join(lines)

    # ------------------------------------------------------------------ one request
    def is_demo_world(self, image: PIL.Image.Image) -> bool:
        """Whether ``image`` is one of the app's demo-world examples (``write_demo_world_examples`` in
        ``work_dir/examples``, compared by pixels, so gradio's copy of the file counts): those synthetic portraits
        are scored with the toy pack made for them. Only asked when the scorer has that pack (default face pack)."""
        if self.scorers.face_demo is None:
            return False
        with self._demo_world_lock:
            if self._demo_world is None:
                from instantportrait.demo.examples import write_demo_world_examples

                rows = write_demo_world_examples(self.work_dir / "examples")  # the files app.py shows, or the same
                self._demo_world = frozenset(_pixel_digest(prepare_input(str(path), self.settings.max_side).image)
                                             for path, _ in rows)
        return _pixel_digest(image) in self._demo_world

    def check_request(self, request: EditRequest) -> tuple[LoadedImage | None, str, list[str]]:
        """Validate the inputs: (loaded image, stripped instruction, errors)."""
        errors: list[str] = []
        loaded = None
        try:
            loaded = prepare_input(request.image, self.settings.max_side)
        except InputError as exc:
            errors.append(str(exc))
        instruction = (request.instruction or "").strip()
        if not instruction:
            errors.append("Please type an instruction, e.g. “wearing hipster glasses”.")
        if not request.methods:
            errors.append("Please select at least one method.")
        unknown = [m for m in request.methods if m not in self.sources]
        if unknown:
            errors.append(f"Unknown method(s): {', '.join(unknown)}.")
        if not (isinstance(request.seed, int) and 0 <= request.seed <= MAX_SEED):
            errors.append(f"The seed must be a whole number from 0 to {MAX_SEED}.")
        if request.steps is not None and not (isinstance(request.steps, int) and 1 <= request.steps <= MAX_STEPS):
            errors.append(f"Steps must be between 1 and {MAX_STEPS}.")
        for name, value in (("guidance", request.guidance_scale), ("image guidance", request.image_guidance_scale)):
            if value is not None and not (math.isfinite(value) and 0 <= value <= 30):
                errors.append(f"The {name} scale must be between 0 and 30.")
        return loaded, instruction, errors

    def _tokenizer_of_loaded_model(self, methods: Sequence[str]) -> Any:
        """The transformers tokenizer of a selected, already loaded real/demo model (None if there is none)."""
        for m in methods:
            if m in self.manager and self.sources[m].kind in (Kind.REAL, Kind.DEMO):
                tokenizer = self.manager.editor(m).tokenizer
                if tokenizer is not None and callable(tokenizer):
                    return tokenizer
        return None

    def run(self, request: EditRequest, progress: ProgressCallback | None = None) -> RequestResult:
        """Run one request; never raises for bad inputs or failing methods (they become messages)."""
        loaded, instruction, errors = self.check_request(request)
        if errors:
            return RequestResult(error=" ".join(errors))
        assert loaded is not None
        result = RequestResult(image=loaded.image, notes=list(loaded.notes))  # notes state any downscaling

        tokenizer = self._tokenizer_of_loaded_model(request.methods)
        limit = self.tokens.limit(tokenizer)
        fitted, total = fit_instruction(instruction, lambda t: self.tokens.count(t, tokenizer), limit)
        if fitted != instruction:
            result.warnings.append(f"The instruction is {total} tokens long; the text encoder reads {limit} (start and "
                                   f"end tokens included), so it was truncated to “{fitted}”.")
        result.instruction = fitted

        faces = self.scorers.source_faces(loaded.image, demo_world=self.is_demo_world(loaded.image))
        if faces.face is None:
            if faces.reason == "no face detected in the input":
                result.warnings.append("No face was detected in the input: editing anyway, identity similarity is "
                                       "n/a. A clear, frontal portrait works best.")
            else:
                result.warnings.append(f"Identity similarity is n/a: {faces.reason}")
        elif faces.count > 1:
            x1, y1, x2, y2 = (int(round(v)) for v in faces.face.bbox)
            result.warnings.append(f"{faces.count} faces were detected: identity similarity uses the largest one "
                                   f"(box {x1},{y1}–{x2},{y2}).")

        n = len(request.methods)
        for i, method in enumerate(request.methods):
            def report(step: int, total: int, i: int = i, label: str = self.label(method)) -> None:
                if progress is not None:
                    progress((i + step / max(total, 1)) / n, f"{label}: step {step}/{total}")

            if progress is not None:
                progress(i / n, f"{self.label(method)}: starting")
            result.results.append(self._run_method(method, loaded.image, fitted, request, faces, report))
        if progress is not None:
            progress(1.0, "done")
        return result

    def _run_method(self, method: str, image: PIL.Image.Image, instruction: str, request: EditRequest,
                    faces: SourceFaces, report: Callable[[int, int], None]) -> MethodResult:
        source = self.sources[method]
        out = MethodResult(method, self.label(method), source)
        if not source.available:
            out.error = source.reason
            return out
        settings = request.settings()
        try:
            with self.manager.use(method) as lease:
                out.load_seconds = lease.load_seconds
                out.nfe = lease.editor.nfe(settings)
                t0 = time.perf_counter()
                edited = lease.editor.edit([image], [instruction], seed=request.seed, settings=settings,
                                           progress=report)
                out.latency_ms = (time.perf_counter() - t0) * 1000.0
            out.image = edited[0]
        except ModelNotAvailableError as exc:
            out.error = str(exc)
        except _oom_types() as exc:
            freed = self.manager.evict_idle()
            out.error = (f"out of memory on {self.settings.torch_device} ({type(exc).__name__}); unloaded "
                         f"{', '.join(freed) or 'nothing'} — try again, or select fewer methods")
        except (ValueError, NotImplementedError, InstantPortraitError) as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # keep the other methods running; the log has the traceback
            logger.exception("%s failed", method)
            out.error = f"{type(exc).__name__}: {exc}"
        if out.image is not None:
            out.id_sim, out.id_note = self.scorers.identity(faces, out.image)
            out.id_backend = faces.backend
            out.clip_t, out.clip_note = self.scorers.clip_t(out.image, instruction)
        return out


def _pixel_digest(image: PIL.Image.Image) -> str:
    """Identifies an image by its size and RGB pixels (not its file), for :meth:`EditService.is_demo_world`."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------- ZeroGPU
def zero_gpu(fn: Callable[..., Any], duration: int = 120) -> Callable[..., Any]:
    """Wrap ``fn`` with ``spaces.GPU`` when the ``spaces`` package is importable (Hugging Face ZeroGPU Spaces);
    return it unchanged otherwise."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
