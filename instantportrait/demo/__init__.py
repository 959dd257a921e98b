"""A synthetic portrait world for offline demos, tests and toy-scale training (no downloaded assets).

``World(seed, num_identities)`` renders procedural portraits of synthetic people, instructed edits with exact
ground-truth targets, captions, face boxes and landmarks; splits are by identity. See ``world.py`` and ``render.py``.
"""

from typing import Any

from instantportrait.demo.language import (
    CURATED_COMBOS,
    PHRASES,
    EditPhrases,
    caption,
    describe_edits,
    instruction_paraphrases,
    parse_instruction,
)
from instantportrait.demo.render import (
    CATEGORIES,
    EDIT_DEFS,
    RENDERER_VERSION,
    SLOTS,
    Edit,
    EditDef,
    Identity,
    Render,
    Scene,
    normalize_edits,
    random_identity,
    random_scene,
    render_portrait,
)
from instantportrait.demo.world import (
    CAPTIONS_FORMAT,
    SPLITS,
    CaptionPair,
    IdentityCrop,
    Sample,
    World,
    WorldConfig,
    contact_sheet,
)


def __getattr__(name: str) -> Any:
    if name == "PAIRS_FORMAT":  # lazy, as in world.py: its home, the dataset reader, imports torch
        from instantportrait.demo import world

        return world.PAIRS_FORMAT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPTIONS_FORMAT", "CATEGORIES", "CURATED_COMBOS", "EDIT_DEFS", "PAIRS_FORMAT", "PHRASES", "RENDERER_VERSION",
    "SLOTS", "SPLITS", "CaptionPair", "Edit", "EditDef", "EditPhrases", "Identity", "IdentityCrop", "Render",
    "Sample", "Scene", "World", "WorldConfig", "caption", "contact_sheet", "describe_edits",
    "instruction_paraphrases", "normalize_edits", "parse_instruction", "random_identity", "random_scene",
    "render_portrait",
]
