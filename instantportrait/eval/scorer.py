"""The one scorer of edits: identity similarity (a ``FaceEncoder``) and CLIP-T / CLIP-I / directional CLIP
(a :class:`~instantportrait.eval.clip_score.ClipScorer`), for the benchmark, the app, training validation and the
demo evaluation alike, so a number in a table is what a visitor sees.

It reads images only (never an editor's insides). Two ways to call it:

* strict (benchmark, training): :meth:`Scorer.load` raises ``ModelNotAvailableError`` fast when a model is missing
  and :meth:`Scorer.score` returns a benchmark row's fields; the source image's features are computed once per
  source and caption embeddings once per caption;
* never-raise (the app): :meth:`Scorer.source_faces`, :meth:`Scorer.identity` and :meth:`Scorer.clip_t` load lazily,
  remember a loading failure (one check, not one per request) and return ``(None, why)`` instead of raising, so
  the UI shows "n/a" with the reason and editing still works.

When the caller asked for the default face pack / CLIP and it cannot be used here, the shipped toy demo scorers take
its place (:mod:`instantportrait.demo.scorers` decides; :meth:`ScoringConfig.with_demo_fallback`, :func:`app_models`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from instantportrait.demo.scorers import DEFAULT_CLIP, DEFAULT_FACE_PACK, demo_clip_for, demo_face_pack_for
from instantportrait.errors import InstantPortraitError, ModelNotAvailableError
from instantportrait.eval import metrics
from instantportrait.eval.metrics import cosine

logger = logging.getLogger(__name__)

DEFAULT_SOURCE_CAPTION = "a photo of a person"
DEMO_FALLBACK_FIELDS = ("face_pack", "clip")
Why = str | None  # why a score is missing (None: it is not)


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


@dataclass
class SourceFaces:
    """Faces found in the input: the largest (used for identity), how many, or why there is none."""

    face: Any | None  # FaceResult
    count: int
    reason: str | None = None  # why identity similarity is n/a for every method


class Scorer:
    """Scores edits with a face encoder (and optionally a second one) and a CLIP scorer; any may be ``None``.

    ``face_error`` / ``clip_error`` say why a model is unusable (set by :func:`app_models` or by a failed lazy load);
    ``face_label`` / ``clip_label`` name what produces the numbers for the UI. ``score_size``: resize every image
    to this square first (the demo scorers were trained on 128-px renders).
    """

    def __init__(self, face: Any = None, clip: Any = None, face2: Any = None, *,
                 directional_eps: float = metrics.DIRECTIONAL_EPS, score_size: int | None = None,
                 face_label: str = "", clip_label: str = "", face_error: str | None = None,
                 clip_error: str | None = None) -> None:
        self.face, self.face2, self.clip = face, face2, clip
        self.directional_eps = directional_eps
        self.score_size = score_size
        self.face_label, self.clip_label = face_label, clip_label
        self.face_error, self.clip_error = face_error, clip_error
        self._lock = threading.Lock()  # one face detection at a time (insightface keeps per-call state); lazy loads
        self._source_cache: dict[str, dict[str, Any]] = {}
        self._text_cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ScoringConfig) -> Scorer:
        """The benchmark's scorer (not loaded): face model(s) and CLIP named by ``config``."""
        from instantportrait.eval.clip_score import clip_scorer_from
        from instantportrait.face.encoder import FaceEncoder

        det = (config.det_size, config.det_size)

        def encoder(pack: str | None) -> Any:
            return (FaceEncoder(pack, root=config.face_root, device=config.device, det_size=det,
                                det_thresh=config.det_thresh) if pack else None)

        clip = clip_scorer_from(config.clip, config.device) if config.clip else None
        return cls(encoder(config.face_pack), clip, encoder(config.second_face_pack),
                   directional_eps=config.directional_eps)

    @classmethod
    def demo(cls, face_pack: str | Path | None = None, clip: str | Path | None = None,
             score_size: int = 128) -> Scorer:
        """The shipped toy demo scorers (or a demo face pack folder / CLIP file trained elsewhere), loaded."""
        from instantportrait.config import DEMO_CLIP, DEMO_FACE_PACK
        from instantportrait.eval.clip_score import ClipScorer
        from instantportrait.face.encoder import FaceEncoder

        return cls(FaceEncoder(face_pack or DEMO_FACE_PACK).load(), ClipScorer(weights=clip or DEMO_CLIP).load(),
                   score_size=score_size)

    def load(self) -> Scorer:
        """Load every model now, raising ``ModelNotAvailableError`` fast if one is missing (strict callers)."""
        for model in (self.face, self.face2, self.clip):
            if model is not None:
                model.load()
        return self

    def describe(self) -> dict[str, Any]:
        """What produced the numbers, for ``run.json``."""
        return {
            "face_model": self.face.describe() if self.face else None,
            "second_face_model": self.face2.describe() if self.face2 else None,
            "clip": self.clip.describe() if self.clip else None,
            "directional_eps": self.directional_eps,
        }

    def labels(self) -> list[str]:
        return [self.face_label, self.clip_label]

    # ------------------------------------------------------------------ features
    def _sized(self, images: Sequence[PIL.Image.Image]) -> list[PIL.Image.Image]:
        if self.score_size is None:
            return list(images)
        size = (self.score_size, self.score_size)
        return [im.convert("RGB").resize(size, PIL.Image.BICUBIC) for im in images]

    def _detect(self, encoder: Any, image: PIL.Image.Image) -> list[Any]:
        with self._lock:
            return encoder.detect(image)

    def _embedding(self, encoder: Any, image: PIL.Image.Image) -> np.ndarray | None:
        faces = self._detect(encoder, image)
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

    def largest_faces(self, images: Sequence[PIL.Image.Image]) -> list[Any | None]:
        """The largest face (``FaceResult``) of each image, ``None`` where there is none."""
        results = []
        for image in self._sized(images):
            faces = self._detect(self.face, image)
            results.append(faces[0] if faces else None)
        return results

    # ------------------------------------------------------------------ strict scores
    def score(self, source_id: str, source: PIL.Image.Image, output: PIL.Image.Image, target_caption: str,
              source_caption: str = DEFAULT_SOURCE_CAPTION) -> dict[str, Any]:
        """A benchmark row's fields for one edit (``scored`` true, plus every enabled metric)."""
        src = self.source_features(source_id, source)
        row: dict[str, Any] = {"scored": True}
        if self.face is not None:
            row.update(metrics.identity_scores(src["face"], self._embedding(self.face, output)))
        if self.face2 is not None:
            row.update(metrics.identity_scores(src["face2"], self._embedding(self.face2, output), suffix="_2"))
        if self.clip is not None:
            row.update(metrics.clip_scores(src["clip"], self._image_features(output),
                                           self.text_features(source_caption), self.text_features(target_caption),
                                           self.directional_eps))
        return row

    def identities(self, sources: Sequence[PIL.Image.Image], outputs: Sequence[PIL.Image.Image]) -> list[float | None]:
        """Per (source, output) pair: cosine of their largest faces' embeddings, ``None`` where either has none."""
        pairs = zip(self.largest_faces(sources), self.largest_faces(outputs))
        return [None if a is None or b is None else cosine(a.embedding, b.embedding) for a, b in pairs]

    def clip_t_all(self, images: Sequence[PIL.Image.Image], texts: Sequence[str]) -> Any:
        """CLIP-T of each image with its text, a ``(n,)`` tensor."""
        return self.clip.clip_t(self._sized(images), list(texts))  # (n,)

    # ------------------------------------------------------------------ never-raise scores (the app)
    def _usable(self, which: str) -> Any | None:
        """The ``face`` or ``clip`` model, loaded on first use; ``None`` (and ``<which>_error`` set) if it cannot be."""
        model = getattr(self, which)
        with self._lock:
            loaded = model is not None and (model.loaded if which == "face" else model.is_loaded)
            if model is not None and not loaded and getattr(self, f"{which}_error") is None:
                try:
                    model.load()
                except ModelNotAvailableError as exc:
                    setattr(self, f"{which}_error", str(exc))
                except Exception as exc:  # an unreadable pack or weights file: report it, keep the app up
                    logger.exception("loading the %s model failed", which)
                    setattr(self, f"{which}_error", f"{type(exc).__name__}: {exc}")
            return model if getattr(self, f"{which}_error") is None else None

    def _faces_or_why(self, image: PIL.Image.Image) -> tuple[list[Any], Why]:
        encoder = self._usable("face")
        if encoder is None:
            return [], f"face model not available: {self.face_error}"
        try:
            return self._detect(encoder, image), None
        except Exception as exc:  # a scorer failure must not stop the edit
            logger.exception("face detection failed")
            return [], f"face detection failed ({type(exc).__name__}: {exc})"

    def source_faces(self, image: PIL.Image.Image) -> SourceFaces:
        """Detect the faces of the input image; the largest is the identity reference. Never raises."""
        faces, why = self._faces_or_why(image)
        if why is not None:
            return SourceFaces(None, 0, why)
        if not faces:
            return SourceFaces(None, 0, "no face detected in the input")
        return SourceFaces(faces[0], len(faces))

    def identity(self, source: SourceFaces, image: PIL.Image.Image) -> tuple[float | None, Why]:
        """Cosine between the input's largest face and the output's largest face, or ``(None, why)``."""
        if source.face is None:
            return None, source.reason
        faces, why = self._faces_or_why(image)
        if why is not None:
            return None, why
        if not faces:
            return None, "no face detected in the output"
        return cosine(source.face.embedding, faces[0].embedding), None

    def clip_t(self, image: PIL.Image.Image, text: str) -> tuple[float | None, Why]:
        """CLIP-T of an output and the instruction, or ``(None, why)``."""
        scorer = self._usable("clip")
        if scorer is None:
            return None, f"CLIP not available: {self.clip_error}"
        try:
            return float(scorer.clip_t([image], [text])[0]), None
        except InstantPortraitError as exc:
            return None, str(exc)
        except Exception as exc:  # a scorer failure must not stop the edit
            logger.exception("CLIP scoring failed")
            return None, f"CLIP scoring failed ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------------------------------------- the app
def _app_face(pack: str | Path, device: str, tiny_root: str | Path | None) -> dict[str, Any]:
    from instantportrait.face.encoder import FaceEncoder, check_pack_folder

    try:
        encoder = FaceEncoder(pack, device=device)
        check_pack_folder(encoder.spec, encoder.folder)  # directory listing only
        return {"face": encoder, "face_label": f"face model: {encoder.name}"}
    except (ModelNotAvailableError, ValueError) as exc:
        error = str(exc)
    demo = demo_face_pack_for(pack)
    if demo is not None:
        # The default pack is missing (offline, non-commercial weights not installed): the shipped demo pack.
        return {"face": FaceEncoder(demo, device=device),
                "face_label": f"face model: demo pack (toy, synthetic portraits only; {DEFAULT_FACE_PACK} missing)"}
    if tiny_root is not None:
        from instantportrait.tiny.face_pack import build_tiny_face_pack

        folder = build_tiny_face_pack(Path(tiny_root) / "tiny_face_pack")
        return {"face": FaceEncoder(folder, device=device),
                "face_label": "face model: TINY random recogniser (ID-sim meaningless)"}
    return {"face_error": error, "face_label": "face model: not available"}


def _app_clip(clip: str | Path | None, device: str, tiny_root: str | Path | None) -> dict[str, Any]:
    from instantportrait.eval.clip_score import ClipScorer, clip_scorer_from

    try:
        scorer = clip_scorer_from(clip, device)
    except ModelNotAvailableError as exc:
        error = str(exc)
    else:
        error = None
        demo = demo_clip_for(None) if clip is None else None
        if demo is not None:
            # The default CLIP is not on disk: the shipped demo CLIP rather than a download attempt.
            return {"clip": ClipScorer(weights=demo, device=device),
                    "clip_label": f"CLIP: demo model (toy, synthetic portraits only; {scorer.variant} missing)"}
        if scorer.expected_path.is_file() or tiny_root is None:
            # Present, or (without --tiny) downloaded on first use if the network allows; fails fast offline.
            return {"clip": scorer, "clip_label": f"CLIP: {scorer.variant or scorer.expected_path.name}"}
    if tiny_root is not None:
        from instantportrait.tiny.clip import build_tiny_clip

        path = Path(tiny_root) / "tiny_clip.pt"
        if not path.is_file():
            build_tiny_clip(path, seed=0)
        return {"clip": ClipScorer(weights=path, device=device),
                "clip_label": "CLIP: TINY random weights (CLIP-T meaningless)"}
    return {"clip_error": error, "clip_label": "CLIP: not available"}


def app_models(face_pack: str | Path = DEFAULT_FACE_PACK, clip: str | Path | None = None, device: str = "cpu",
               tiny_root: str | Path | None = None) -> dict[str, Any]:
    """:class:`Scorer` keyword arguments for the app (fast: no model is loaded). ``face_pack``: an insightface pack
    name or folder; ``clip``: a variant name or weights file (``None``: ``INSTANTPORTRAIT_CLIP`` or ViT-L/14). A
    missing default falls back to the demo scorers; with ``tiny_root`` (``--tiny``) anything still missing becomes a
    tiny random-weight stand-in written there, labelled as such; otherwise the reason is kept as ``*_error``."""
    return {**_app_face(face_pack, device, tiny_root), **_app_clip(clip, device, tiny_root)}
