"""The Gradio app's logic, separate from its layout (``app.py``): settings, model sources, the LRU model manager,
scoring and request handling. Nothing here imports gradio."""

from instantportrait.app.logic import (
    EditRequest,
    EditService,
    InputError,
    MethodResult,
    RequestResult,
    prepare_input,
    zero_gpu,
)
from instantportrait.app.manager import ModelManager, editor_nbytes
from instantportrait.app.scoring import Scorers
from instantportrait.app.settings import AppSettings, settings_from_args
from instantportrait.methods.sources import (
    TINY_LABEL,
    Kind,
    ModelSource,
    SourcePolicy,
    TinyModels,
    demo_model_dir,
    resolve_source,
    resolve_sources,
)

__all__ = [
    "TINY_LABEL",
    "AppSettings",
    "EditRequest",
    "EditService",
    "InputError",
    "Kind",
    "MethodResult",
    "ModelManager",
    "ModelSource",
    "RequestResult",
    "Scorers",
    "SourcePolicy",
    "TinyModels",
    "demo_model_dir",
    "editor_nbytes",
    "prepare_input",
    "resolve_source",
    "resolve_sources",
    "settings_from_args",
    "zero_gpu",
]
