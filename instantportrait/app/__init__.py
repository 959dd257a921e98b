"""The Gradio app's logic, separate from its layout (``app.py``): settings, model sources, the LRU model manager,
scoring and request handling. Nothing here imports gradio."""

from ..methods.sources import TINY_LABEL, ModelSource, TinyModels, demo_model_dir, resolve_source, resolve_sources
from .logic import EditRequest, EditService, InputError, MethodResult, RequestResult, prepare_input, zero_gpu
from .manager import ModelManager, editor_nbytes
from .scoring import Scorers
from .settings import AppSettings, settings_from_args

__all__ = [
    "TINY_LABEL",
    "AppSettings",
    "EditRequest",
    "EditService",
    "InputError",
    "MethodResult",
    "ModelManager",
    "ModelSource",
    "RequestResult",
    "Scorers",
    "TinyModels",
    "demo_model_dir",
    "editor_nbytes",
    "prepare_input",
    "resolve_source",
    "resolve_sources",
    "settings_from_args",
    "zero_gpu",
]
