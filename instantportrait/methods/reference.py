"""The "no edit" reference method: the source itself as the output.

Why: a benchmark score means little without its floor or ceiling beside it. Scored like any method, the unedited
source gives identity similarity's ceiling (the face compared with itself), CLIP-I's ceiling, CLIP-dir's zero, and
CLIP-T's floor: how well the *unedited* portrait already matches the target caption, which an edit must beat to
have done anything. It runs no network (NFE 0, no weights), so its latency is the harness's floor, not a speed: the
benchmark labels it as a reference and leaves it out of latency ratios. The app does not offer it
(:func:`editing_methods`): it would be a tile that never edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import PIL.Image

from instantportrait.methods.base import Editor, EditSettings, ProgressFn, check_edit_inputs
from instantportrait.methods.registry import editor_class, list_methods, register

NO_EDIT = "no-edit"  # benchmark.metrics.NO_EDIT_METHOD names it too (the benchmark's tables import no torch)


class NoModel:
    """What the reference editor "loads": nothing (no networks, no weights)."""

    components: ClassVar[dict[str, Any]] = {}


@register
class NoEditEditor(Editor):
    """Returns its inputs as they are (RGB): every score's floor or ceiling, never an edit."""

    name = NO_EDIT
    label = "No edit (reference: the source itself)"
    description = ("Reference row, not a method: the source is the output, so identity is at its ceiling and "
                   "CLIP-T at its floor (the unedited portrait against the target caption).")
    reference: ClassVar[bool] = True

    def _load(self) -> NoModel:
        return NoModel()

    def _build_random(self) -> NoModel:
        return NoModel()  # nothing random to build: a --random-weights run keeps its reference row

    def nfe(self, settings: EditSettings | None = None) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reference": True, "description": self.description}  # for the tables

    def edit(self, images: Sequence[PIL.Image.Image], instructions: Sequence[str], *,
             seed: int | Sequence[int] = 0, settings: EditSettings | None = None,
             progress: ProgressFn | None = None) -> list[PIL.Image.Image]:
        """The inputs as RGB copies, pixel for pixel. Overridden because the base class resizes to a working size
        and back, which would blur the "unedited" source and lower the ceiling it is here to show."""
        check_edit_inputs(images, instructions)
        self.load()
        return self._edit(self._loaded, [img.convert("RGB") for img in images], list(instructions), seed,
                          settings or EditSettings(), progress)

    def _edit(self, loaded: Any, images: list[PIL.Image.Image], instructions: list[str], seed: int | list[int],
              settings: EditSettings, progress: ProgressFn | None) -> list[PIL.Image.Image]:
        return [img.copy() for img in images]


def is_reference(name: str) -> bool:
    """Whether a registered method is a reference row (scored like a method, never an edit)."""
    return bool(getattr(editor_class(name), "reference", False))


def editing_methods() -> list[str]:
    """The registered methods that edit (reference rows left out), in registration order: what the app offers."""
    return [m for m in list_methods() if not is_reference(m)]
