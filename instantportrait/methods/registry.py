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


IPNET_BY_STEPS = {1: "ipnet", 2: "ipnet-2step"}


def ipnet_method(steps: int) -> str:
    """The IPNet method for ``--steps N`` (1: ``ipnet``, 2: ``ipnet-2step``), the one place the CLI's edit and
    stream commands read it from."""
    try:
        return IPNET_BY_STEPS[int(steps)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"--steps for IPNet must be 1 or 2, got {steps!r}") from None
