"""The app's two scores, identity similarity and CLIP-T, come from the one :class:`~instantportrait.eval.scorer.Scorer`
(the benchmark's own) called through its never-raise methods: a missing face pack or CLIP makes its numbers ``None``
with the reason kept, so the UI shows "n/a" with why, and editing still works. This module only builds it from the
app's settings. Identity goes by what the input is: the demo-world examples with the toy demo pack (``face_demo``),
everything else with buffalo_l if installed, else dlib; a named ``--face-pack`` scores everything.
"""

from __future__ import annotations

from pathlib import Path

from instantportrait.demo.scorers import DEFAULT_FACE_PACK
from instantportrait.eval.scorer import Scorer, SourceFaces, app_models

__all__ = ["Scorers", "SourceFaces"]


class Scorers(Scorer):
    """The app's :class:`Scorer`: see :func:`~instantportrait.eval.scorer.app_models` for the fallbacks (demo
    scorers for a missing default; tiny stand-ins under ``tiny_root`` with ``--tiny``). Models load lazily."""

    def __init__(self, face_pack: str | Path = DEFAULT_FACE_PACK, clip: str | Path | None = None, device: str = "cpu",
                 tiny_root: str | Path | None = None) -> None:
        super().__init__(**app_models(face_pack, clip, device, tiny_root))
        self.device = device
