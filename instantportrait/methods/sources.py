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
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from instantportrait.config import DEMO_ROOT, env_override
from instantportrait.errors import ModelNotAvailableError
from instantportrait.methods.base import Editor
from instantportrait.methods.registry import editor_class, get_editor

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("real", "demo", "tiny")
TINY_LABEL = "TINY RANDOM WEIGHTS — for UI testing only, not a model"


@dataclass(frozen=True)
class ModelSource:
    """Which model a method runs with in this app, or why it cannot run.

    ``kind``: ``real`` | ``demo`` | ``tiny`` | ``missing``. ``location``: what ``get_editor(model=...)`` receives
    (``None``: the registry's default, i.e. ``config.MODELS`` plus environment overrides). ``description``: one line
    for the UI. ``reason``: why a missing method cannot run.
    """

    method: str
    kind: str
    location: str | None = None
    description: str = ""
    reason: str | None = None
    resolution: int | None = None  # the model's native working size (demo models), None: the caller's choice

    @property
    def available(self) -> bool:
        return self.kind != "missing"

    @property
    def badge(self) -> str:
        """A few words for the method checkbox."""
        return {"real": "", "demo": "demo model", "tiny": "tiny random weights", "missing": "not available here"}[
            self.kind]


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


def resolve_source(method: str, *, sources: tuple[str, ...] = ("real", "demo"), override: str | None = None,
                   demo_root: str | Path | None = None, tiny: TinyModels | None = None) -> ModelSource:
    """The :class:`ModelSource` for one method (see the module docstring for the order). Never raises for a missing
    model: the reason goes into ``ModelSource.reason``."""
    unknown = [s for s in sources if s not in SOURCE_KINDS]
    if unknown:
        raise ValueError(f"unknown model source(s) {unknown}; choose from {', '.join(SOURCE_KINDS)}")
    key = editor_class(method).model_key
    override = override or (env_override(key) if key else None)  # an environment override is explicit too
    if override and "real" in sources:  # explicit locations are real models; `sources=("tiny",)` ignores them
        editor = get_editor(method, model=override)
        try:
            editor.check_available()
        except ModelNotAvailableError as exc:
            return ModelSource(method, "missing", override, reason=str(exc))
        return ModelSource(method, "real", override, description=_describe_real(method, editor))
    reasons: list[str] = []
    for kind in sources:
        if kind == "real":
            editor = get_editor(method)
            try:
                editor.check_available()
            except ModelNotAvailableError as exc:
                reasons.append(str(exc))
                continue
            except Exception as exc:  # an editor's own check failed in an unexpected way: report, don't crash
                logger.exception("check_available() of %s failed", method)
                reasons.append(f"{type(exc).__name__}: {exc}")
                continue
            return ModelSource(method, "real", None, description=_describe_real(method, editor))
        if kind == "demo":
            folder = demo_model_dir(method, demo_root)
            if folder is not None:
                return ModelSource(method, "demo", str(folder), description=f"demo model ({folder.name})",
                                   resolution=native_resolution(folder))
        if kind == "tiny":
            if tiny is None:
                continue
            folder = tiny.location_for(method)
            if folder is None:
                reasons.append(f"{method} has no tiny random-weight stand-in")
                continue
            return ModelSource(method, "tiny", str(folder), description=TINY_LABEL)
    if not reasons:
        reasons.append(f"no model source applies (tried: {', '.join(sources) or 'none'})")
    reason = reasons[0]
    if "tiny" not in sources:
        reason += " (To try the interface without weights, start the app with --tiny: tiny random weights.)"
    return ModelSource(method, "missing", None, reason=reason)


def open_editor(method: str, *, model: str | None = None, sources: tuple[str, ...] = ("real", "demo"),
                demo_root: str | Path | None = None, resolution: int | None = None,
                **kwargs: object) -> tuple[Editor, ModelSource]:
    """The editor for ``method`` from the first source that can load (see the module docstring), not loaded yet.

    ``model`` is an explicit location (final: no fallback). A demo model gets its native resolution unless
    ``resolution`` is given. Raises ``ModelNotAvailableError`` with the reason when no source applies.
    """
    source = resolve_source(method, sources=sources, override=model, demo_root=demo_root)
    if not source.available:
        raise ModelNotAvailableError(source.reason or f"{method}: no model available")
    res = resolution or (source.resolution if source.kind == "demo" else None)
    editor = get_editor(method, model=source.location, **({"resolution": res} if res else {}), **kwargs)
    return editor, source


def resolve_sources(methods: list[str], *, sources: tuple[str, ...] = ("real", "demo"),
                    overrides: dict[str, str] | None = None, demo_root: str | Path | None = None,
                    tiny: TinyModels | None = None, max_workers: int = 8) -> dict[str, ModelSource]:
    """:func:`resolve_source` for every method, concurrently (a real-model check may wait ~3 s on a Hub probe)."""
    overrides = overrides or {}

    def one(method: str) -> ModelSource:
        return resolve_source(method, sources=sources, override=overrides.get(method), demo_root=demo_root,
                              tiny=tiny)

    if not methods:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(methods))) as pool:
        return dict(zip(methods, pool.map(one, methods)))


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
    if source.kind != "real":
        return 0
    from instantportrait.config import MODELS

    key = editor_class(source.method).model_key
    spec = MODELS.get(key) if key else None
    if spec is None:
        return 0
    return int(spec.size_gb * 1e9)
