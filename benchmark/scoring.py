"""The models behind the metrics: face encoder(s) and CLIP, with per-source caches, producing row fields.

``Scorer`` reads images only (never an editor's insides). The source image's face embedding and CLIP features are
computed once per source and reused for every method, instruction and seed; caption embeddings once per caption.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from benchmark import metrics
from instantportrait.demo.scorers import DEFAULT_CLIP, DEFAULT_FACE_PACK, demo_clip_for, demo_face_pack_for

DEFAULT_SOURCE_CAPTION = "a photo of a person"
DEMO_FALLBACK_FIELDS = ("face_pack", "clip")


@dataclass
class ScoringConfig:
    """What scores a row. ``None`` for ``face_pack``/``clip`` turns that metric off.

    ``demo_fallback``: the fields (``face_pack``, ``clip``) that, while they hold the default (buffalo_l, ViT-L/14)
    and that default cannot be used on this machine, :meth:`with_demo_fallback` replaces by the shipped toy demo
    scorer. The CLI leaves out a field the user named: an explicit choice is final (a clear error if missing).
    """

    face_pack: str | None = DEFAULT_FACE_PACK
    second_face_pack: str | None = None
    face_root: str | None = None
    clip: str | None = DEFAULT_CLIP  # a clip-anytorch variant or a weights file
    device: str = "cpu"
    det_size: int = 640
    det_thresh: float = 0.5
    directional_eps: float = metrics.DIRECTIONAL_EPS
    demo_fallback: tuple[str, ...] = DEMO_FALLBACK_FIELDS

    def __post_init__(self) -> None:
        self.demo_fallback = tuple(self.demo_fallback)  # a list when read back from run.json
        bad = [f for f in self.demo_fallback if f not in DEMO_FALLBACK_FIELDS]
        if bad:
            raise ValueError(f"demo_fallback names {bad}; only {list(DEMO_FALLBACK_FIELDS)} can fall back")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def with_demo_fallback(self) -> tuple[ScoringConfig, list[str]]:
        """This config with every default scorer that cannot be used here (face pack folder missing; CLIP weights
        neither on disk nor downloadable now) replaced by the shipped toy demo scorer, and one note per
        replacement (see :mod:`instantportrait.demo.scorers`). Cheap: no model is loaded."""
        changes: dict[str, str] = {}
        notes: list[str] = []
        # (None turns a metric off: never a fallback; demo_clip_for(None) would read it as "the default CLIP")
        face = demo_face_pack_for(self.face_pack, self.face_root) if "face_pack" in self.demo_fallback else None
        if face is not None:
            changes["face_pack"] = str(face)
            notes.append(f"identity similarity comes from the TOY demo face pack ({face}), because {self.face_pack} "
                         "is not installed here; it means something only on the synthetic demo-world portraits")
        clip = demo_clip_for(self.clip, download=True) if self.clip and "clip" in self.demo_fallback else None
        if clip is not None:
            changes["clip"] = str(clip)
            notes.append(f"CLIP scores come from the TOY demo CLIP ({clip}), because {self.clip} is neither on "
                         "disk nor downloadable here; they mean something only on the synthetic demo-world portraits")
        return replace(self, **changes), notes


def make_clip_scorer(clip: str, device: str) -> Any:
    """``ClipScorer`` for a weights file (an existing path) or a variant name (``ViT-L/14``)."""
    from instantportrait.eval.clip_score import ClipScorer

    if Path(clip).expanduser().is_file():
        return ClipScorer(weights=Path(clip).expanduser(), device=device)
    return ClipScorer(clip, device=device)


class Scorer:
    """Scores edits: identity with one or two face models, CLIP-T / CLIP-I / CLIP-dir.

    ``load()`` loads every model (raising ``ModelNotAvailableError`` fast if one is missing) and ``describe()``
    returns what produced the numbers, for ``run.json``.
    """

    def __init__(self, config: ScoringConfig):
        from instantportrait.face.encoder import FaceEncoder

        self.config = config
        det = (config.det_size, config.det_size)
        face_device = config.device
        self.face = (FaceEncoder(config.face_pack, root=config.face_root, device=face_device, det_size=det,
                                 det_thresh=config.det_thresh) if config.face_pack else None)
        self.face2 = (FaceEncoder(config.second_face_pack, root=config.face_root, device=face_device,
                                  det_size=det, det_thresh=config.det_thresh) if config.second_face_pack else None)
        self.clip = make_clip_scorer(config.clip, config.device) if config.clip else None
        self._source_cache: dict[str, dict[str, Any]] = {}
        self._text_cache: dict[str, np.ndarray] = {}

    def load(self) -> Scorer:
        for model in (self.face, self.face2, self.clip):
            if model is not None:
                model.load()
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "face_model": self.face.describe() if self.face else None,
            "second_face_model": self.face2.describe() if self.face2 else None,
            "clip": self.clip.describe() if self.clip else None,
            "directional_eps": self.config.directional_eps,
        }

    # ------------------------------------------------------------------ features
    @staticmethod
    def _embedding(encoder: Any, image: PIL.Image.Image) -> np.ndarray | None:
        faces = encoder.detect(image)
        return faces[0].embedding if faces else None

    def _image_features(self, image: PIL.Image.Image) -> np.ndarray:
        return self.clip.image_features([image])[0].numpy()  # (D,)

    def text_features(self, text: str) -> np.ndarray:
        if text not in self._text_cache:
            self._text_cache[text] = self.clip.text_features([text])[0].numpy()  # (D,)
        return self._text_cache[text]

    def source_features(self, source_id: str, image: PIL.Image.Image) -> dict[str, Any]:
        """Face embeddings and CLIP features of a source image, computed once per ``source_id``."""
        if source_id not in self._source_cache:
            feats: dict[str, Any] = {}
            if self.face is not None:
                feats["face"] = self._embedding(self.face, image)
            if self.face2 is not None:
                feats["face2"] = self._embedding(self.face2, image)
            if self.clip is not None:
                feats["clip"] = self._image_features(image)
            self._source_cache[source_id] = feats
        return self._source_cache[source_id]

    # ------------------------------------------------------------------ scores
    def score(self, source_id: str, source: PIL.Image.Image, output: PIL.Image.Image, target_caption: str,
              source_caption: str = DEFAULT_SOURCE_CAPTION) -> dict[str, Any]:
        """Row fields for one edit (``scored`` true, plus every enabled metric)."""
        src = self.source_features(source_id, source)
        row: dict[str, Any] = {"scored": True}
        if self.face is not None:
            row.update(metrics.identity_scores(src["face"], self._embedding(self.face, output)))
        if self.face2 is not None:
            row.update(metrics.identity_scores(src["face2"], self._embedding(self.face2, output), suffix="_2"))
        if self.clip is not None:
            row.update(metrics.clip_scores(src["clip"], self._image_features(output),
                                           self.text_features(source_caption), self.text_features(target_caption),
                                           self.config.directional_eps))
        return row
