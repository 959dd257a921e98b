"""Name -> Editor class. ``register`` is a class decorator; ``get_editor`` builds one (nothing loaded yet)."""

from __future__ import annotations

from typing import Any

from instantportrait.methods.base import Editor

_EDITORS: dict[str, type[Editor]] = {}


def register(cls: type[Editor]) -> type[Editor]:
    if cls.name in _EDITORS and _EDITORS[cls.name] is not cls:
        raise ValueError(f"editor name {cls.name!r} is already registered by {_EDITORS[cls.name].__name__}")
    _EDITORS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Registered method names, in registration order (ours first, then baselines)."""
    return list(_EDITORS)


def editor_class(name: str) -> type[Editor]:
    try:
        return _EDITORS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(_EDITORS)}") from None


def get_editor(name: str, **kwargs: Any) -> Editor:
    """``get_editor("ipnet", device="cuda", dtype=torch.float16, model="path/or/repo@rev")``."""
    return editor_class(name)(**kwargs)
