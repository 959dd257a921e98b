"""Where each method's model comes from (app, CLI, benchmark): real weights, the shipped demo models, or tiny random
weights.

For every registered method, in the order of ``AppSettings.sources`` (default ``real, demo``; ``--tiny`` appends
``tiny``):

1. **real**: the registry's own model (``config.MODELS``, an ``INSTANTPORTRAIT_<KEY>`` environment override, or the
   app's ``--model METHOD=LOCATION``), if ``Editor.check_available()`` says it can load (on disk, in the Hugging Face
   cache, or downloadable right now). An explicit location (``--model`` or ``INSTANTPORTRAIT_<KEY>``) is final: if
   it cannot load, the method shows why instead of silently falling back to something else.
2. **demo**: ``instantportrait/demo/models/<model key>/`` (or ``.../<method>/``) when that folder exists — the small
   toy models trained offline by ``python -m train.demo`` on the synthetic world (see :func:`demo_model_dir`); they
   work at their training resolution (:func:`native_resolution`, 64 px), which the editor gets unless the caller
   gives one explicitly.
3. **tiny**: only with ``--tiny`` / ``INSTANTPORTRAIT_TINY=1``: tiny random-weight stand-ins built on the fly by
   :mod:`instantportrait.tiny.diffusion` (milliseconds on a CPU). They exist to exercise the UI; every tile that
   shows one
   says so (:data:`TINY_LABEL`).

If none applies, the method is *missing* and its tile shows the reason (the ``ModelNotAvailableError`` message).

This is the one source -> editor path: the app, the CLI and the benchmark each describe what they allow as a
:class:`SourcePolicy` and call :func:`resolve_source` / :func:`open_editor`; the result's :class:`Kind` also covers
the benchmark's ``random-weights`` and unchecked ``override`` sources.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from instantportrait.config import DEMO_ROOT, env_override
from instantportrait.errors import ModelNotAvailableError
from instantportrait.methods.base import Editor, check_offload
from instantportrait.methods.registry import editor_class, get_editor

logger = logging.getLogger(__name__)

class Kind(StrEnum):
    """Where a method's model comes from. String-valued with the strings ``run.json`` files, fingerprints and the
    UI have always used, so ``kind == "demo"`` and JSON output are unchanged."""

    REAL = "real"  # the registry's model, or an explicit location that was checked
    DEMO = "demo"  # the shipped toy demo model
    TINY = "tiny"  # tiny random weights (UI testing)
    RANDOM_WEIGHTS = "random-weights"  # the real architecture with random weights (benchmark latency runs)
    OVERRIDE = "override"  # an explicit location, not checked before loading (benchmark ``--model-override``)
    MISSING = "missing"  # nothing can run; ``ModelSource.reason`` says why

    @property
    def badge(self) -> str:
        """A few words for the method checkbox ("" for a real model)."""
        return _BADGES[self]


_BADGES = {Kind.REAL: "", Kind.DEMO: "demo model", Kind.TINY: "tiny random weights",
           Kind.RANDOM_WEIGHTS: "random weights (latency only)", Kind.OVERRIDE: "", Kind.MISSING: "not available here"}
SOURCE_KINDS = (Kind.REAL.value, Kind.DEMO.value, Kind.TINY.value)  # what a policy's ``sources`` may list
TINY_LABEL = "TINY RANDOM WEIGHTS — for UI testing only, not a model"


@dataclass(frozen=True)
class ModelSource:
    """Which model a method runs with, or why it cannot run.

    ``kind``: a :class:`Kind` (a plain string is converted). ``location``: what ``get_editor(model=...)`` receives
    (``None``: the registry's default, i.e. ``config.MODELS`` plus environment overrides). ``description``: one line
    for the UI. ``reason``: why a missing method cannot run.
    """

    method: str
    kind: Kind
    location: str | None = None
    description: str = ""
    reason: str | None = None
    resolution: int | None = None  # the model's native working size (demo models), None: the caller's choice

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))

    @property
    def available(self) -> bool:
        return self.kind != Kind.MISSING

    @property
    def badge(self) -> str:
        """A few words for the method checkbox."""
        return self.kind.badge


def demo_model_dir(method: str, root: str | Path | None = None) -> Path | None:
    """The shipped demo model folder for ``method``, or ``None``.

    Looked up as ``<root>/<model key>/`` first (so ``ipnet`` and ``ipnet-2step`` share ``demo_models/ipnet/``), then
    ``<root>/<method>/``; ``root`` defaults to ``instantportrait/demo/models``. A folder counts only if it holds at
    least one file (a diffusers pipeline has ``model_index.json``).
    """
    root = Path(root) if root is not None else DEMO_ROOT
    try:
        key = editor_class(method).model_key
    except KeyError:
        key = None
    for name in dict.fromkeys([k for k in (key, method) if k]):
        folder = root / name
        if folder.is_dir() and any(p.is_file() for p in folder.iterdir()):
            return folder
    return None


def native_resolution(folder: str | Path) -> int | None:
    """The resolution a trained model folder was trained at (``resolution`` in its ``train_config.yaml``), or None."""
    import yaml

    path = Path(folder) / "train_config.yaml"
    if not path.is_file():
        return None
    value = (yaml.safe_load(path.read_text()) or {}).get("resolution")
    return int(value) if value else None


def demo_notice(source: ModelSource) -> str:
    """One line for CLI/benchmark output when a method runs on its toy demo model."""
    res = f", {source.resolution} px" if source.resolution else ""
    return (f"{source.method}: the real model is not available here, so this runs the TOY demo model "
            f"{source.location} (trained on the synthetic portrait world{res}; it cannot edit real photos well)")


class TinyModels:
    """Tiny random-weight checkpoints written on demand into ``root`` (thread-safe, each format built once).

    IPNet-family methods get a tiny :class:`~instantportrait.InstantPortraitPipeline`, InstructPix2Pix-family methods
    (IDE-Net, InstructPix2Pix, MagicBrush) a tiny checkpoint in InstructPix2Pix's format. Other methods (e.g. an
    SDXL-based InstantID) have no tiny stand-in: :meth:`location_for` returns ``None``.
    """

    def __init__(self, root: str | Path, seed: int = 0) -> None:
        self.root = Path(root)
        self.seed = seed
        self._lock = threading.Lock()

    def _ip2p(self) -> Path:
        from instantportrait.tiny.diffusion import save_tiny_instruct_pix2pix

        path = self.root / "tiny-instruct-pix2pix"
        if not (path / "model_index.json").is_file():
            save_tiny_instruct_pix2pix(path, seed=self.seed)
        return path

    def _ipnet(self) -> Path:
        from instantportrait.pipelines.ipnet import ipnet_from_instruct_pix2pix

        path = self.root / "tiny-ipnet"
        if not (path / "model_index.json").is_file():
            ipnet_from_instruct_pix2pix(self._ip2p()).save_pretrained(
                path, card_info={"name": "tiny IPNet (random weights, UI testing only)"})
        return path

    def location_for(self, method: str) -> Path | None:
        from instantportrait.methods.diffusion import InstructPix2PixFamily, IPNetEditor

        cls = editor_class(method)
        with self._lock:
            if issubclass(cls, IPNetEditor):
                return self._ipnet()
            if issubclass(cls, InstructPix2PixFamily):
                return self._ip2p()
        return None


def _describe_real(method: str, editor: object) -> str:
    spec = getattr(editor, "spec", None)
    if callable(spec):
        s = spec()
        return s.repo_id if s.is_local else f"{s.repo_id}@{s.revision}"
    return f"{method} (registry default)"


@dataclass(frozen=True)
class SourcePolicy:
    """How the app, the CLI and the benchmark want a method's model found and its editor built (one rule set:
    :func:`resolve_source`, :func:`open_editor`).

    ``sources``: ``real`` / ``demo`` / ``tiny`` in order of preference (``tiny`` needs ``tiny``, the builder of tiny
    checkpoints). ``overrides``: method -> explicit location (``--model``), final: no fallback; checked and reported
    ``real`` / ``missing``, or, with ``record_overrides``, taken unchecked as ``override`` (the benchmark checks when
    it loads, and records why a load fails). ``random_weights``: the real architecture with random weights, nothing
    looked up. Working size: ``resolution`` when given, else a demo model's own, else ``fallback_resolution``, else
    the editor's default.
    """

    sources: tuple[str, ...] = ("real", "demo")
    overrides: Mapping[str, str] = field(default_factory=dict)
    record_overrides: bool = False
    random_weights: bool = False
    demo_root: str | Path | None = None
    tiny: TinyModels | None = None
    device: Any = "cpu"
    dtype: Any = None  # a torch.dtype; None: the editor's default (float32)
    resolution: int | None = None
    fallback_resolution: int | None = None
    random_architecture: str | None = None  # set on the editor (random-weights builds; see the editors)
    offload: str = "none"  # set on the editor: none | model | sequential (methods.base.OFFLOAD_MODES)

    def __post_init__(self) -> None:
        check_offload(self.offload)
        unknown = [s for s in self.sources if s not in SOURCE_KINDS]
        if unknown:
            raise ValueError(f"unknown model source(s) {unknown}; choose from {', '.join(SOURCE_KINDS)}")


def _check_real(method: str, location: str | None) -> tuple[ModelSource | None, str | None]:
    """``(real source, None)`` if the method's model (``location``, else the registry's) can load here, else
    ``(None, why not)``."""
    editor = get_editor(method, model=location)
    try:
        editor.check_available()
    except ModelNotAvailableError as exc:
        return None, str(exc)
    except Exception as exc:  # an editor's own check failed in an unexpected way: report, don't crash
        logger.exception("check_available() of %s failed", method)
        return None, f"{type(exc).__name__}: {exc}"
    return ModelSource(method, Kind.REAL, location, description=_describe_real(method, editor)), None


def _explicit_source(method: str, policy: SourcePolicy) -> ModelSource | None:
    """The source for an explicit location (``policy.overrides``, or an ``INSTANTPORTRAIT_<KEY>`` environment
    override when real models are allowed), or None when there is none."""
    key = editor_class(method).model_key
    given = policy.overrides.get(method)
    if given and policy.record_overrides:
        return ModelSource(method, Kind.OVERRIDE, given)
    location = given or (env_override(key) if key else None)  # an environment override is explicit too
    if not location or Kind.REAL not in policy.sources:  # `sources=("tiny",)` ignores explicit locations
        return None
    source, why = _check_real(method, location)
    return source or ModelSource(method, Kind.MISSING, location, reason=why)


def resolve_source(method: str, policy: SourcePolicy | None = None, *, sources: tuple[str, ...] | None = None,
                   override: str | None = None, demo_root: str | Path | None = None,
                   tiny: TinyModels | None = None) -> ModelSource:
    """The :class:`ModelSource` for one method under ``policy`` (see the module docstring for the order; the
    keywords are shorthands for a policy's fields). Never raises for a missing model: the reason goes into
    ``ModelSource.reason``."""
    if policy is None:
        policy = SourcePolicy(sources=sources or ("real", "demo"), overrides={method: override} if override else {},
                              demo_root=demo_root, tiny=tiny)
    if policy.random_weights:
        return ModelSource(method, Kind.RANDOM_WEIGHTS)
    explicit = _explicit_source(method, policy)
    if explicit is not None:
        return explicit
    reasons: list[str] = []
    for kind in policy.sources:
        if kind == Kind.REAL:
            source, why = _check_real(method, None)
            if source is not None:
                return source
            reasons.append(why or "")
        elif kind == Kind.DEMO:
            folder = demo_model_dir(method, policy.demo_root)
            if folder is not None:
                return ModelSource(method, Kind.DEMO, str(folder), description=f"demo model ({folder.name})",
                                   resolution=native_resolution(folder))
        elif kind == Kind.TINY and policy.tiny is not None:
            folder = policy.tiny.location_for(method)
            if folder is not None:
                return ModelSource(method, Kind.TINY, str(folder), description=TINY_LABEL)
            reasons.append(f"{method} has no tiny random-weight stand-in")
    reason = reasons[0] if reasons else f"no model source applies (tried: {', '.join(policy.sources) or 'none'})"
    if Kind.TINY not in policy.sources:
        reason += " (To try the interface without weights, start the app with --tiny: tiny random weights.)"
    return ModelSource(method, Kind.MISSING, None, reason=reason)


def open_editor(method: str, policy: SourcePolicy | None = None, *,
                source: ModelSource | None = None) -> tuple[Editor, ModelSource]:
    """The editor for ``method`` from the first source that can load under ``policy`` (default: real, then demo, on
    the CPU), not loaded yet, and that source. ``source``: one already resolved (e.g. for a whole run). Raises
    ``ModelNotAvailableError`` with the reason when no source applies."""
    policy = policy or SourcePolicy()
    source = source if source is not None else resolve_source(method, policy)
    if not source.available:
        raise ModelNotAvailableError(source.reason or f"{method}: no model available")
    res = policy.resolution or (source.resolution if source.kind == Kind.DEMO else None) or policy.fallback_resolution
    kwargs: dict[str, Any] = {"device": policy.device, **({"dtype": policy.dtype} if policy.dtype else {}),
                              **({"resolution": res} if res else {})}
    editor = get_editor(method, model=source.location, **kwargs)
    if policy.random_architecture is not None:
        editor.random_architecture = policy.random_architecture  # type: ignore[attr-defined]
    editor.offload = policy.offload  # an attribute, like the above: every editor has it, whatever its __init__ takes
    return editor, source


def cli_policy(method: str, *, model: str | None, no_demo: bool, device: Any, dtype: Any,
               resolution: int | None) -> SourcePolicy:
    """The CLI's policy (``edit``, ``stream``): ``--model`` is final, else the real model, else (unless
    ``--no-demo``) the demo model; ``--resolution`` wins over a demo model's own."""
    return SourcePolicy(sources=("real",) if no_demo else ("real", "demo"), overrides={method: model} if model else {},
                        device=device, dtype=dtype, resolution=resolution)


def resolve_sources(methods: list[str], policy: SourcePolicy, *, max_workers: int = 8) -> dict[str, ModelSource]:
    """:func:`resolve_source` for every method, concurrently (a real-model check may wait ~3 s on a Hub probe)."""
    if not methods:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(methods))) as pool:
        return dict(zip(methods, pool.map(lambda m: resolve_source(m, policy), methods)))


def method_overrides(methods: list[str], models: dict[str, str]) -> dict[str, str]:
    """Per-method model locations from ``--model NAME=LOCATION`` entries, where NAME is a method or a model key
    (``ipnet=...`` applies to ``ipnet`` and ``ipnet-2step``). A method's own name wins over its model key."""
    unknown = set(models) - set(methods) - {editor_class(m).model_key for m in methods}
    if unknown:
        raise ValueError(f"--model names unknown method(s)/model key(s): {', '.join(sorted(unknown))}; "
                         f"methods: {', '.join(methods)}")
    out = {}
    for m in methods:
        key = editor_class(m).model_key
        value = models.get(m) or (models.get(key) if key else None)
        if value:
            out[m] = value
    return out


def estimate_bytes(source: ModelSource) -> int:
    """A rough size before loading (the manager measures the real size after): ``size_gb`` of the model's spec."""
    if source.kind != Kind.REAL:
        return 0
    from instantportrait.config import MODELS

    key = editor_class(source.method).model_key
    spec = MODELS.get(key) if key else None
    if spec is None:
        return 0
    return int(spec.size_gb * 1e9)
