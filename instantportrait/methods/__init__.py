"""Method registry: every editor the app and the benchmark can run, behind one ``Editor`` interface."""

from instantportrait.methods import (  # noqa: F401  (register their editors: ipnet ... magicbrush, instantid...)
    diffusion,
    instantid,
    ipcontrol,
    ipcontrol_xl,
    reference,  # the "no-edit" reference row (registered last: the app leaves it out)
)
from instantportrait.methods.base import Editor, EditSettings, check_edit_inputs
from instantportrait.methods.registry import editor_class, get_editor, list_methods, register

__all__ = ["EditSettings", "Editor", "check_edit_inputs", "editor_class", "get_editor", "list_methods", "register"]
