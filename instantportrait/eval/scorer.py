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

Identity is judged by what the image is, not by what happens to be installed: synthetic demo-world portraits are
scored with the toy demo face pack (trained on them), every other image with the real default (buffalo_l if installed,
else dlib in the app; in the benchmark buffalo_l's column ``id_sim`` is recorded as unavailable and dlib's
``id_sim_dlib`` is the real one). A named face pack is final. Every identity number carries its backend
(``id_backend*`` row fields, :meth:`Scorer.identity_backends`, ``SourceFaces.backend``), so a toy-model number is never
shown on a photo without saying so. A default CLIP that cannot be used here still becomes the toy demo CLIP
(:mod:`instantportrait.demo.scorers`; :meth:`ScoringConfig.with_demo_fallback`, :func:`app_models`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
DLIB = "dlib"  # as a face pack name: dlib's encoder instead of an insightface pack
UNAVAILABLE = "unavailable"  # the id_backend* value of a column whose model is not on this machine
# Identity columns: row-field suffix -> the Scorer attribute holding its encoder (id_sim, id_sim_2, id_sim_dlib).
IDENTITY_COLUMNS = (("", "face"), ("_2", "face2"), ("_dlib", "face_dlib"))
Why = str | None  # why a score is missing (None: it is not)


@dataclass
class ScoringConfig:
    """What scores a row. ``None`` for ``face_pack``/``clip`` turns that metric off; ``face_pack="dlib"`` scores
    ``id_sim`` with dlib. ``dlib``: dlib's second-opinion identity column ``id_sim_dlib`` (a different model from
    the ArcFace one, so two independent identity numbers).

    ``demo_fallback``: the fields (``face_pack``, ``clip``) the user did not name, which :meth:`with_demo_fallback`
    may resolve (the toy pack on demo-world images; the toy CLIP when the default one cannot be used). The CLI leaves
    out a field the user named: an explicit choice is final (a clear error if missing). ``unavailable``: identity
    column -> why its default model is not on this machine (set by :meth:`with_demo_fallback`; recorded, not fatal).
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
    dlib: bool = True
    unavailable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.demo_fallback = tuple(self.demo_fallback)  # a list when read back from run.json
        bad = [f for f in self.demo_fallback if f not in DEMO_FALLBACK_FIELDS]
        if bad:
            raise ValueError(f"demo_fallback names {bad}; only {list(DEMO_FALLBACK_FIELDS)} can fall back")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def with_demo_fallback(self, demo_world: bool = False) -> tuple[ScoringConfig, list[str]]:
        """This config resolved for these images on this machine, and one note per toy scorer it uses.

        ``demo_world``: the images are synthetic demo-world portraits, so the default face pack gives way to the
        toy demo pack made for them. On any other image the default face pack stays; if it is not installed, its
        column is put in ``unavailable`` (never the toy pack on a photo), and so is dlib's when dlib is missing. A
        default CLIP neither on disk nor downloadable now becomes the toy demo CLIP (see
        :mod:`instantportrait.demo.scorers`). Cheap: no model is loaded."""
        changes: dict[str, Any] = {}
        notes: list[str] = []
        unavailable: dict[str, str] = {}
        # (None turns a metric off: never a fallback; demo_clip_for(None) would read it as "the default CLIP")
        may_resolve = "face_pack" in self.demo_fallback and self.face_pack is not None
        face = demo_face_pack_for(self.face_pack, demo_world=demo_world) if may_resolve else None
        if face is not None:
            changes["face_pack"] = str(face)
            notes.append(f"identity similarity (id_sim) comes from the TOY demo face pack ({face}), because the "
                         "images are synthetic demo-world portraits, the only ones it means something on")
        elif may_resolve and self.face_pack == DEFAULT_FACE_PACK:
            why = default_pack_missing(self.face_root)
            if why is not None:
                unavailable["id_sim"] = why
        if self.dlib and (why := dlib_missing()) is not None:
            unavailable["id_sim_dlib"] = why
        clip = demo_clip_for(self.clip, download=True) if self.clip and "clip" in self.demo_fallback else None
        if clip is not None:
            changes["clip"] = str(clip)
            notes.append(f"CLIP scores come from the TOY demo CLIP ({clip}), because {self.clip} is neither on "
                         "disk nor downloadable here; they mean something only on the synthetic demo-world portraits")
        return replace(self, unavailable=unavailable, **changes), notes


def default_pack_missing(root: str | Path | None = None) -> str | None:
    """Why the default insightface pack (buffalo_l) cannot be used here, or ``None`` if it can (a listing only)."""
    from instantportrait.face.encoder import check_pack_folder, resolve_pack

    try:
        check_pack_folder(*resolve_pack(DEFAULT_FACE_PACK, root))
    except (ModelNotAvailableError, ValueError) as exc:
        return str(exc)
    return None


def dlib_missing() -> str | None:
    """Why dlib's face models cannot be used here, or ``None`` if they can (file checks, no loading)."""
    import importlib.util

    from instantportrait.face.dlib_backend import INSTALL_HINT, DlibFaceEncoder

    if importlib.util.find_spec("dlib") is None:
        return f"dlib is not installed: {INSTALL_HINT}"
    try:
        DlibFaceEncoder().model_files()
    except ModelNotAvailableError as exc:
        return str(exc)
    return None


def face_encoder(pack: str | Path, *, root: str | Path | None = None, device: str = "cpu", det_size: int = 640,
                 det_thresh: float = 0.5) -> Any:
    """An encoder, not loaded: dlib for ``pack == "dlib"`` (its own detector settings; CPU only), else the
    insightface pack ``pack`` (a name or a folder)."""
    if str(pack) == DLIB:
        from instantportrait.face.dlib_backend import DlibFaceEncoder

        return DlibFaceEncoder()
    from instantportrait.face.encoder import FaceEncoder

    return FaceEncoder(pack, root=root, device=device, det_size=(det_size, det_size), det_thresh=det_thresh)


@dataclass
class SourceFaces:
    """Faces found in the input: the largest (used for identity), how many, or why there is none; which of the
    scorer's encoders found them (``encoder``: an attribute name) and its ``backend`` (``None``: not loadable)."""

    face: Any | None  # FaceResult
    count: int
    reason: str | None = None  # why identity similarity is n/a for every method
    encoder: str = "face"
    backend: str | None = None


class Scorer:
    """Scores edits with face encoders and a CLIP scorer; any may be ``None``.

    Face encoders: ``face`` (``id_sim``), ``face2`` (``id_sim_2``), ``face_dlib`` (``id_sim_dlib``, dlib's second
    opinion), and ``face_demo`` (the app's toy pack for demo-world images; see :meth:`source_faces`).
    ``unavailable``: identity column -> why its model is not here (recorded in rows as ``id_backend*`` =
    ``"unavailable"``). ``face_error`` / ``face_demo_error`` / ``clip_error`` say why a model is unusable (set by
    :func:`app_models` or by a failed lazy load); ``face_label`` / ``clip_label`` name what produces the numbers for
    the UI. ``score_size``: resize every image to this square first (the demo scorers were trained on 128-px renders).
    """

    def __init__(self, face: Any = None, clip: Any = None, face2: Any = None, *, face_dlib: Any = None,
                 face_demo: Any = None, unavailable: dict[str, str] | None = None,
                 directional_eps: float = metrics.DIRECTIONAL_EPS, score_size: int | None = None,
                 face_label: str = "", clip_label: str = "", face_error: str | None = None,
                 clip_error: str | None = None) -> None:
        self.face, self.face2, self.face_dlib, self.face_demo, self.clip = face, face2, face_dlib, face_demo, clip
        self.unavailable = dict(unavailable or {})
        self.directional_eps = directional_eps
        self.score_size = score_size
        self.face_label, self.clip_label = face_label, clip_label
        self.face_error, self.clip_error = face_error, clip_error
        self.face_demo_error: str | None = None
        self._lock = threading.Lock()  # one face detection at a time (insightface keeps per-call state); lazy loads
        self._source_cache: dict[str, dict[str, Any]] = {}
        self._text_cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ScoringConfig) -> Scorer:
        """The benchmark's scorer (not loaded): face model(s) and CLIP named by ``config`` (resolved by
        :meth:`ScoringConfig.with_demo_fallback`: a column in ``config.unavailable`` gets no encoder)."""
        from instantportrait.eval.clip_score import clip_scorer_from

        def encoder(pack: str | None, column: str) -> Any:
            if not pack or column in config.unavailable:
                return None
            return face_encoder(pack, root=config.face_root, device=config.device, det_size=config.det_size,
                                det_thresh=config.det_thresh)

        clip = clip_scorer_from(config.clip, config.device) if config.clip else None
        return cls(encoder(config.face_pack, "id_sim"), clip, encoder(config.second_face_pack, "id_sim_2"),
                   face_dlib=encoder(DLIB if config.dlib else None, "id_sim_dlib"), unavailable=config.unavailable,
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
        for model in (self.face, self.face2, self.face_dlib, self.clip):
            if model is not None:
                model.load()
        return self

    def describe(self) -> dict[str, Any]:
        """What produced the numbers, for ``run.json``."""
        return {
            "face_model": self.face.describe() if self.face else None,
            "second_face_model": self.face2.describe() if self.face2 else None,
            "dlib_face_model": self.face_dlib.describe() if self.face_dlib else None,
            "identity": self.identity_backends(),
            "clip": self.clip.describe() if self.clip else None,
            "directional_eps": self.directional_eps,
        }

    def identity_backends(self) -> dict[str, str]:
        """Identity column -> the backend that fills it (``"insightface:buffalo_l"``, ``"dlib"``,
        ``"toy:demo_face_pack"``), or ``"unavailable: <why>"``; columns turned off are left out."""
        out = {}
        for suffix, attr in IDENTITY_COLUMNS:
            encoder, column = getattr(self, attr), f"id_sim{suffix}"
            if encoder is not None:
                out[column] = encoder.backend
            elif column in self.unavailable:
                out[column] = f"{UNAVAILABLE}: {self.unavailable[column]}"
        return out

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
            for _, attr in IDENTITY_COLUMNS:
                if getattr(self, attr) is not None:
                    feats[attr] = self._embedding(getattr(self, attr), image)
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
        """A benchmark row's fields for one edit (``scored`` true, plus every enabled metric; each identity column
        with its ``id_backend<suffix>``, ``"unavailable"`` where its model is not here)."""
        src = self.source_features(source_id, source)
        row: dict[str, Any] = {"scored": True}
        for suffix, attr in IDENTITY_COLUMNS:
            encoder = getattr(self, attr)
            if encoder is not None:
                row.update(metrics.identity_scores(src[attr], self._embedding(encoder, output), suffix=suffix))
                row[f"id_backend{suffix}"] = encoder.backend
            elif f"id_sim{suffix}" in self.unavailable:
                row[f"id_backend{suffix}"] = UNAVAILABLE
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
        """The ``face``, ``face_demo`` or ``clip`` model, loaded on first use; ``None`` (and ``<which>_error`` set)
        if it cannot be."""
        model = getattr(self, which)
        with self._lock:
            loaded = model is not None and (model.is_loaded if which == "clip" else model.loaded)
            if model is not None and not loaded and getattr(self, f"{which}_error") is None:
                try:
                    model.load()
                except ModelNotAvailableError as exc:
                    setattr(self, f"{which}_error", str(exc))
                except Exception as exc:  # an unreadable pack or weights file: report it, keep the app up
                    logger.exception("loading the %s model failed", which)
                    setattr(self, f"{which}_error", f"{type(exc).__name__}: {exc}")
            return model if getattr(self, f"{which}_error") is None else None

    def _faces_or_why(self, image: PIL.Image.Image, which: str = "face") -> tuple[list[Any], Why]:
        encoder = self._usable(which)
        if encoder is None:
            return [], f"face model not available: {getattr(self, f'{which}_error')}"
        try:
            return self._detect(encoder, image), None
        except Exception as exc:  # a scorer failure must not stop the edit
            logger.exception("face detection failed")
            return [], f"face detection failed ({type(exc).__name__}: {exc})"

    def source_faces(self, image: PIL.Image.Image, demo_world: bool = False) -> SourceFaces:
        """Detect the faces of the input image; the largest is the identity reference. Never raises.

        ``demo_world``: the image is a synthetic demo-world portrait, scored with the toy pack made for them
        (``face_demo``) when the scorer has one; any other image with ``face``. :meth:`identity` uses the same one.
        """
        which = "face_demo" if demo_world and self.face_demo is not None else "face"
        model = getattr(self, which)
        backend = model.backend if model is not None else None
        faces, why = self._faces_or_why(image, which)
        if why is not None:
            return SourceFaces(None, 0, why, which, None)
        if not faces:
            return SourceFaces(None, 0, "no face detected in the input", which, backend)
        return SourceFaces(faces[0], len(faces), None, which, backend)

    def identity(self, source: SourceFaces, image: PIL.Image.Image) -> tuple[float | None, Why]:
        """Cosine between the input's largest face and the output's largest face (same encoder), or ``(None, why)``."""
        if source.face is None:
            return None, source.reason
        faces, why = self._faces_or_why(image, source.encoder)
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
    """The app's face encoders. The default pack (not named): buffalo_l if installed, else dlib, on photos, and the
    toy demo pack on the demo-world examples (``face_demo``). A named pack (or ``dlib``) scores every image."""
    from instantportrait.face.encoder import FaceEncoder, check_pack_folder

    default = str(pack) == DEFAULT_FACE_PACK
    toy = demo_face_pack_for(pack, demo_world=True)
    demo = {"face_demo": FaceEncoder(toy, device=device)} if toy is not None else {}
    on_world = "; toy demo pack on the demo-world examples" if demo else ""
    if str(pack) == DLIB:
        return {"face": face_encoder(DLIB), "face_label": "face model: dlib"}
    try:
        encoder = FaceEncoder(pack, device=device)
        check_pack_folder(encoder.spec, encoder.folder)  # directory listing only
        return {"face": encoder, "face_label": f"face model: {encoder.backend}{on_world}", **demo}
    except (ModelNotAvailableError, ValueError) as exc:
        error = str(exc)
    if default and dlib_missing() is None:
        return {"face": face_encoder(DLIB), **demo,
                "face_label": f"face model: dlib ({DEFAULT_FACE_PACK} not installed){on_world}"}
    if tiny_root is not None:
        from instantportrait.tiny.face_pack import build_tiny_face_pack

        folder = build_tiny_face_pack(Path(tiny_root) / "tiny_face_pack")
        return {"face": FaceEncoder(folder, device=device),
                "face_label": "face model: TINY random recogniser (ID-sim meaningless)"}
    return {"face_error": error, "face_label": "face model: not available", **demo}


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
    name or folder, or ``dlib``; ``clip``: a variant name or weights file (``None``: ``INSTANTPORTRAIT_CLIP`` or
    ViT-L/14). The default face pack means buffalo_l (else dlib) on photos and the toy pack on demo-world examples; a
    missing default CLIP falls back to the demo CLIP; with ``tiny_root`` (``--tiny``) anything still missing becomes
    a tiny random-weight stand-in written there, labelled as such; otherwise the reason is kept as ``*_error``."""
    return {**_app_face(face_pack, device, tiny_root), **_app_clip(clip, device, tiny_root)}
