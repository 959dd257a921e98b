"""A synthetic portrait world for offline demos, tests and toy-scale training (no downloaded assets).

``World(seed, num_identities)`` renders procedural portraits of synthetic people, instructed edits with exact
ground-truth targets, captions, face boxes and landmarks; splits are by identity. See ``world.py`` and ``render.py``.
"""

from typing import Any

# The package's names are its modules' public names (each module's __all__), so this facade lists nothing twice.
from instantportrait.demo import language, render, world
from instantportrait.demo.language import *  # noqa: F403
from instantportrait.demo.render import *  # noqa: F403
from instantportrait.demo.world import *  # noqa: F403


def __getattr__(name: str) -> Any:
    if name == "PAIRS_FORMAT":  # lazy, as in world.py: its home, the dataset reader, imports torch
        return world.PAIRS_FORMAT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*render.__all__, *language.__all__, *world.__all__, "PAIRS_FORMAT"]  # noqa: F405 (PAIRS_FORMAT: lazy)
