"""Which model each method runs on in a benchmark run, and loading it: the method names check, the model source
(random weights, ``--model-override``, the real model, or its shipped toy demo model), the editor at its working size,
and a timed load that records why a method is unavailable instead of ending the run.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from benchmark.env import sync

if TYPE_CHECKING:
    from benchmark.config import BenchmarkConfig

logger = logging.getLogger(__name__)

DEMO_LABEL = " [toy demo model]"  # appended to the label of a method that runs on its demo model


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


def source_policy(cfg: BenchmarkConfig, name: str, device: str = "cpu") -> Any:
    """The run's :class:`~instantportrait.methods.sources.SourcePolicy` for ``name``: random weights, or
    ``--model-override`` (by method name, then model key; recorded unchecked as ``override``), else the real model,
    else (``cfg.demo``) its demo model. Working size: a per-method ``--resolution METHOD=N``, else a demo model's own,
    else the run's; ``METHOD=native``: the demo model's own, else the editor's default."""
    from instantportrait.methods import editor_class
    from instantportrait.methods.sources import SourcePolicy

    override = cfg.override_for(name, editor_class(name).model_key)
    native = name in cfg.method_resolution and cfg.method_resolution[name] is None
    return SourcePolicy(sources=("real", "demo") if cfg.demo else ("real",),
                        overrides={name: override} if override else {}, record_overrides=True,
                        random_weights=cfg.random_weights, demo_root=cfg.demo_root, device=device,
                        dtype=cfg.torch_dtype(), resolution=cfg.method_resolution.get(name),
                        fallback_resolution=None if native else cfg.resolution, random_architecture=cfg.random_arch,
                        offload=cfg.offload)


def model_source(cfg: BenchmarkConfig, name: str) -> Any:
    """Where ``name``'s weights come from in this run (a ``ModelSource``, resolved by the one rule set in
    :func:`~instantportrait.methods.sources.resolve_source` under :func:`source_policy`): ``random-weights``,
    ``override``, ``real`` or ``demo``. A missing real model stays ``real``: :func:`load_editor` records it as
    unavailable, with the reason."""
    from instantportrait.methods.sources import Kind, ModelSource, resolve_source

    source = resolve_source(name, source_policy(cfg, name))
    return source if source.available else ModelSource(name, Kind.REAL)


def make_editor(cfg: BenchmarkConfig, name: str, device: str, source: Any = None) -> Any:
    """The editor for ``name`` from ``source`` (default: :func:`model_source`) on ``device``, at the working size
    :func:`source_policy` gives, not loaded."""
    from instantportrait.methods.sources import open_editor

    return open_editor(name, source_policy(cfg, name, device), source=source or model_source(cfg, name))[0]


def load_editor(editor: Any, cfg: BenchmarkConfig, device: torch.device, source: Any = None) -> dict[str, Any]:
    """Check, load and time; a record with ``status`` ok / unavailable / no random-weights builder / load failed,
    where the model came from (``model_source``, ``model_location``) and the working ``resolution``."""
    from instantportrait.errors import ModelNotAvailableError
    from instantportrait.methods.sources import demo_model_dir

    kind = source.kind if source is not None else ("random-weights" if cfg.random_weights else "real")
    location = (source.location or source.description or None) if source is not None else editor.model_override
    info: dict[str, Any] = {"method": editor.name, "label": editor.label + (DEMO_LABEL if kind == "demo" else ""),
                            "model_source": kind, "model_location": location, "resolution": editor.resolution,
                            "offload": editor.offload_mode}
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
    weights_mb = editor.weight_bytes() / 2**20  # shared tensors once, as the app's memory budget counts them
    info.update(status="ok", message="", nfe=nfe, params=editor.num_parameters(), weights_mb=weights_mb,
                describe={**_safe_describe(editor), "nfe": nfe})
    return info


def _safe_describe(editor: Any) -> dict[str, Any]:
    try:
        return editor.describe()
    except Exception as exc:  # describe is informational
        return {"error": f"{type(exc).__name__}: {exc}"}
