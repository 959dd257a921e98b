"""The dlib backend of the face encoder: a real, offline, commercially usable face model.

``pip install dlib-bin face-recognition-models`` gives everything, as wheels plus one sdist of data, with no
compiler and no download at run time: dlib's HOG frontal-face detector (built into dlib), or its MMOD CNN detector,
its 5-point shape predictor and its ResNet face-recognition network (128-d descriptors, 99.38 % on LFW), all released
by dlib's author under CC0. This is the face model for real photos when no insightface pack (non-commercial) is
installed, and an independent second opinion when one is.

What it returns follows :class:`~instantportrait.face.base.BaseFaceEncoder`: the largest face first, 5 landmarks in
insightface's order, an L2-normalised embedding (``embedding_norm`` keeps the raw descriptor's length).

Same person: dlib's descriptors are trained so that two faces of one person lie less than 0.6 apart (Euclidean
distance of the raw descriptors); that is the verdict here (:data:`SAME_PERSON_DISTANCE`). The cosine is reported
too, but on dlib's own, compressed scale (about 0.96 same person vs 0.86 different on the photos tried): never read it
like an ArcFace cosine.

Landmarks: dlib's 5-point model gives the two corners of each eye and the base of the nose (subnasale), not
insightface's (eye centres, nose tip, mouth corners). We take each eye's centre as the midpoint of its corners and
estimate the rest in the frame the eyes define (origin between the eyes, one unit = the distance between the eye
centres): the nose base lies :data:`NOSE_BASE_DEPTH` below the eye line on a typical frontal face (median of the near-
frontal faces in the photos shipped with scikit-image, matplotlib and insightface); the nose tip and the mouth centre
lie on the line from the eye midpoint through the nose base, at the depths the ArcFace 112x112 template gives them
(0.57 and 1.15 units), so head turns and tilts move them with the nose; the mouth corners sit the template's half
mouth width (0.41 units) either side of the mouth centre, along the eye line. The mouth is estimated, not detected:
good enough for ArcFace-style alignment and keypoint drawing, not for measuring the mouth.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.base import BaseFaceEncoder, FaceResult, to_rgb_array
from instantportrait.face.keypoints import ARCFACE_TEMPLATE_112

logger = logging.getLogger(__name__)

BACKEND = "dlib"
INSTALL_HINT = "pip install dlib-bin face-recognition-models"
LICENCE = "CC0 (dlib's models); dlib itself Boost Software License"
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
DETECTORS = ("hog", "cnn")
SAME_PERSON_DISTANCE = 0.6  # dlib's documented threshold on the Euclidean distance of raw descriptors
NOSE_BASE_DEPTH = 0.74  # dlib's nose base below the eye line, in inter-eye distances (median of 9 frontal faces)
# Faces whose box side is within this fraction of the largest count as equally large; the detector score then picks.
SIZE_TIE = 0.1


def models_dir() -> Path:
    """The folder of the ``face-recognition-models`` package's ``.dat`` files, found without importing the package
    (its ``__init__`` imports the deprecated ``pkg_resources``); :class:`ModelNotAvailableError` if not installed."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec (e.g. set to None)
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"dlib's face models are not installed (the face-recognition-models package is "
                                     f"missing): {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _template_depths() -> tuple[float, float, float]:
    """``(nose tip depth, mouth centre depth, half mouth width)`` of the ArcFace template, in inter-eye distances."""
    t = np.asarray(ARCFACE_TEMPLATE_112, dtype=np.float64)  # (5, 2)
    mid = (t[0] + t[1]) / 2  # (2,)
    ex = t[1] - t[0]  # (2,) left eye -> right eye
    iod = float(np.linalg.norm(ex))
    ey = np.array([-ex[1], ex[0]]) / iod  # (2,) unit vector down the face
    mouth = (t[3] + t[4]) / 2  # (2,)
    return float((t[2] - mid) @ ey / iod), float((mouth - mid) @ ey / iod), float(np.linalg.norm(t[4] - t[3]) / iod / 2)


def five_point_to_insightface(parts: np.ndarray) -> np.ndarray:
    """dlib's 5 points ``(5, 2)`` -> insightface's 5 landmarks ``(5, 2)`` float32 (see the module docstring).

    dlib's order: 0, 1 = outer and inner corner of the eye on the image's right, 2, 3 = outer and inner corner of the
    eye on the image's left, 4 = nose base. insightface's: left eye, right eye, nose tip, left and right mouth corner.
    """
    p = np.asarray(parts, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye = p[2:4].mean(axis=0), p[0:2].mean(axis=0)  # (2,) each
    mid = (left_eye + right_eye) / 2  # (2,)
    ex = right_eye - left_eye  # (2,)
    tip_depth, mouth_depth, half_mouth = _template_depths()
    down = p[4] - mid  # (2,) eye midpoint -> nose base
    nose = mid + down * (tip_depth / NOSE_BASE_DEPTH)
    mouth = mid + down * (mouth_depth / NOSE_BASE_DEPTH)
    side = ex * half_mouth  # (2,) half the mouth, along the eye line (ex is one inter-eye distance long)
    return np.stack([left_eye, right_eye, nose, mouth - side, mouth + side]).astype(np.float32)  # (5, 2)


@dataclass
class _Models:
    detector: Any
    shape_predictor: Any
    recogniser: Any
    files: dict[str, str]


class DlibFaceEncoder(BaseFaceEncoder):
    """Detect faces and embed identities with dlib (HOG or MMOD detector, 5-point predictor, ResNet recogniser).

    Lazy: models load on first use or by :meth:`load` (about 0.35 s on 2 CPU cores); a missing ``dlib`` or
    ``face-recognition-models`` raises :class:`ModelNotAvailableError` at that point, in milliseconds, naming the pip
    command. ``upsample``: times the image is doubled before detection (1 finds faces down to about 40 px).
    ``det_thresh``: added to the detector's decision threshold (dlib's ``adjust_threshold``; higher finds fewer).
    ``num_jitters``: dlib re-embeds that many jittered copies and averages them (slower, slightly more accurate).
    ``models``: a folder holding dlib's ``.dat`` files instead of the pip package's.

    >>> DlibFaceEncoder().compare(photo_a, photo_b).same_person        # doctest: +SKIP
    True
    """

    distance_threshold = SAME_PERSON_DISTANCE

    def __init__(self, detector: str = "hog", *, upsample: int = 1, det_thresh: float = 0.0, num_jitters: int = 0,
                 models: str | Path | None = None, device: str = "cpu") -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        if upsample < 0 or num_jitters < 0:
            raise ValueError(f"upsample and num_jitters must be >= 0, got {upsample} and {num_jitters}")
        if str(device) != "cpu":
            logger.warning("the dlib backend runs on the CPU (dlib-bin wheels have no CUDA): ignoring device %s",
                           device)
        self.detector = detector
        self.upsample = int(upsample)
        self.det_thresh = float(det_thresh)
        self.num_jitters = int(num_jitters)
        self.models = Path(models).expanduser() if models is not None else None
        self._m: _Models | None = None

    @property
    def backend(self) -> str:
        return BACKEND

    @property
    def loaded(self) -> bool:
        return self._m is not None

    def model_files(self) -> dict[str, Path]:
        """The ``.dat`` files this encoder needs; :class:`ModelNotAvailableError` if any is missing. No loading."""
        folder = self.models if self.models is not None else models_dir()
        names = {"shape_predictor": SHAPE_PREDICTOR_FILE, "recognition": RECOGNITION_FILE}
        if self.detector == "cnn":
            names["detector"] = CNN_DETECTOR_FILE
        files = {role: folder / name for role, name in names.items()}
        absent = [p.name for p in files.values() if not p.is_file()]
        if absent:
            raise ModelNotAvailableError(f"dlib's face models are incomplete: {', '.join(absent)} not in {folder}. "
                                         f"Reinstall them: {INSTALL_HINT}")
        return files

    def load(self) -> DlibFaceEncoder:
        """Check the files (fast), import dlib, load the three models."""
        if self._m is not None:
            return self
        files = self.model_files()
        try:
            import dlib
        except ImportError as exc:
            raise ModelNotAvailableError(f"dlib is not installed: {INSTALL_HINT}") from exc
        t0 = time.perf_counter()
        detector = (dlib.cnn_face_detection_model_v1(str(files["detector"])) if self.detector == "cnn"
                    else dlib.get_frontal_face_detector())
        self._m = _Models(detector, dlib.shape_predictor(str(files["shape_predictor"])),
                          dlib.face_recognition_model_v1(str(files["recognition"])),
                          {role: p.name for role, p in files.items()})
        logger.debug("dlib face models loaded in %.2f s", time.perf_counter() - t0)
        return self

    def unload(self) -> None:
        self._m = None

    def describe(self) -> dict[str, Any]:
        """What to record next to a result: backend, detector, model files, settings, embedding size, rule."""
        self.load()
        return {
            "backend": self.backend,
            "detector": self.detector,
            "detection_model": self._m.files.get("detector", "dlib frontal_face_detector (HOG, built in)"),
            "shape_predictor": self._m.files["shape_predictor"],
            "recognition_model": self._m.files["recognition"],
            "embedding_dim": 128,
            "upsample": self.upsample,
            "det_thresh": self.det_thresh,
            "num_jitters": self.num_jitters,
            "same_person": self.same_person_rule,
            "licence": LICENCE,
        }

    def _settings_text(self) -> str:
        return f"backend dlib, detector {self.detector}, upsample {self.upsample}, det_thresh {self.det_thresh}"

    # -- inference -------------------------------------------------------------------------------------------------
    def _boxes(self, rgb: np.ndarray) -> list[tuple[Any, float]]:
        """``(dlib.rectangle, score)`` per detection."""
        if self.detector == "cnn":
            found = self._m.detector(rgb, self.upsample)
            return [(d.rect, float(d.confidence)) for d in found if d.confidence >= self.det_thresh]
        rects, scores, _ = self._m.detector.run(rgb, self.upsample, self.det_thresh)
        return [(r, float(s)) for r, s in zip(rects, scores)]

    def detect(self, image: Any) -> list[FaceResult]:
        """All faces in ``image``, *the* face first: the largest, where boxes within :data:`SIZE_TIE` of the largest
        side count as equally large and the higher detector score wins among them (dlib's boxes come from a scale
        pyramid, so two faces of similar size get near-equal boxes; the astronaut's mission patch is 1 px smaller
        than her face and scores 0.12 against 1.16)."""
        self.load()
        rgb = to_rgb_array(image)  # (H, W, 3) uint8
        boxes = self._boxes(rgb)
        results = []
        for rect, score in boxes:
            shape = self._m.shape_predictor(rgb, rect)
            parts = np.array([(pt.x, pt.y) for pt in shape.parts()], dtype=np.float64)  # (5, 2)
            raw = np.asarray(self._m.recogniser.compute_face_descriptor(rgb, shape, self.num_jitters),
                             dtype=np.float32)  # (128,)
            norm = float(np.linalg.norm(raw))
            results.append(FaceResult(
                embedding=raw / norm if norm > 0 else raw,
                kps=five_point_to_insightface(parts),
                bbox=np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float32),
                det_score=score,
                num_faces=len(boxes),
                embedding_norm=norm,
                backend=self.backend,
            ))
        return rank_faces(results)

    def distance(self, a: FaceResult, b: FaceResult) -> float:
        """Euclidean distance of the raw 128-d descriptors (dlib's metric: same person below 0.6)."""
        return float(np.linalg.norm(a.raw_embedding - b.raw_embedding))

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded"
        return f"DlibFaceEncoder(detector={self.detector!r}, upsample={self.upsample}, {state})"


def rank_faces(faces: list[FaceResult]) -> list[FaceResult]:
    """Largest first; among the boxes within :data:`SIZE_TIE` of the largest side, the highest score first."""
    faces = sorted(faces, key=lambda f: (-f.area, -f.det_score))
    if len(faces) < 2:
        return faces
    largest = np.sqrt(faces[0].area)
    tied = [f for f in faces if np.sqrt(f.area) >= (1 - SIZE_TIE) * largest]
    best = max(tied, key=lambda f: f.det_score)
    return [best] + [f for f in faces if f is not best]
