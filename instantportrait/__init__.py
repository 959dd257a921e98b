"""InstantPortrait: one-step instruction-based portrait editing (IPNet) and its identity-enhanced teacher (IDE-Net).

Heavy modules (torch, diffusers) load on first use of a name that needs them, so `python -m instantportrait models`
and other light commands start fast.
"""

from __future__ import annotations

from typing import Any

from instantportrait.errors import InstantPortraitError, InvalidImageError, ModelNotAvailableError, NoFaceError

_LAZY = {
    "InstantPortraitPipeline": "pipelines.ipnet",
    "ipnet_from_instruct_pix2pix": "pipelines.ipnet",
    "widen_conv_in": "pipelines.ipnet",
}

__all__ = [
    "InstantPortraitError",
    "InstantPortraitPipeline",
    "InvalidImageError",
    "ModelNotAvailableError",
    "NoFaceError",
    "ipnet_from_instruct_pix2pix",
    "widen_conv_in",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
