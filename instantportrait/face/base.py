"""The one face-encoder interface every backend implements, and the results it returns.

A backend (insightface packs in :mod:`~instantportrait.face.encoder`, dlib in
:mod:`~instantportrait.face.dlib_backend`) only has to load its models and :meth:`BaseFaceEncoder.detect` faces; the
policies the rest of the project relies on live here once: the largest face is *the* face, an image without one
raises :class:`~instantportrait.errors.NoFaceError` naming the image, batch results keep ``None`` in place, and two
faces are compared the same way whatever the backend.

Comparing two faces (:class:`IdentityMatch`): ``similarity`` is always the cosine of the L2-normalised embeddings, so
one number exists for every backend; ``distance`` is the backend's own metric where it has one (dlib: the Euclidean
distance of its raw 128-d descriptors, which its same-person threshold of 0.6 is defined on) and ``None`` otherwise.
The same-person verdict uses the metric each model was calibrated on: ``distance < 0.6`` for dlib, a cosine threshold
for ArcFace packs, the toy pack's own cosine threshold for the demo pack. Cosines of different backends are on
different scales (dlib's cosines are compressed: about 0.96 same person vs 0.86 different), so never compare them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from instantportrait.errors import InvalidImageError, NoFaceError


@dataclass
class FaceResult:
    """One detected face.

    ``embedding``: ``(D,)`` float32, L2-normalised (D = 512 for buffalo_l / antelopev2, 128 for dlib). ``kps``:
    ``(5, 2)`` float32 landmarks (left eye, right eye, nose, left and right mouth corner, "left" meaning the image's
    left) in image pixels. ``bbox``: ``(4,)`` float32 ``x1, y1, x2, y2``. ``det_score``: detector confidence (on the
    backend's own scale). ``num_faces``: how many faces were detected in the image this face came from.
    ``embedding_norm``: the L2 norm of the recogniser's raw output, so ``embedding * embedding_norm`` is the raw
    embedding (insightface's unnormalised ``face.embedding``, which InstantID conditions on; dlib's descriptor).
    ``backend``: the encoder that made it (``"insightface:buffalo_l"``, ``"dlib"``, ``"toy:demo_face_pack"``).
    """

    embedding: np.ndarray
    kps: np.ndarray
    bbox: np.ndarray
    det_score: float
    num_faces: int
    embedding_norm: float = 1.0
    backend: str = ""

    @property
    def area(self) -> float:
        """Box area in pixels."""
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    @property
    def raw_embedding(self) -> np.ndarray:
        """``(D,)`` the recogniser's output before normalisation."""
        return self.embedding * np.float32(self.embedding_norm)


@dataclass(frozen=True)
class IdentityMatch:
    """Two faces compared: cosine ``similarity``, the backend's ``distance`` (or ``None``), the verdict, the backend,
    and the ``rule`` the verdict came from (e.g. ``"distance < 0.6"``)."""

    similarity: float
    distance: float | None
    same_person: bool
    backend: str
    rule: str

    def to_dict(self) -> dict[str, Any]:
        """The four keys the ``identity`` command's ``--json`` prints."""
        return {"similarity": self.similarity, "distance": self.distance, "same_person": self.same_person,
                "backend": self.backend}


def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image (any mode) or an RGB ``uint8`` array ``(H, W, 3)`` (or ``(H, W)``, ``(H, W, 4)``) -> contiguous
    RGB ``uint8`` ``(H, W, 3)``; :class:`InvalidImageError` for anything else."""
    from PIL import Image

    if isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InvalidImageError(f"expected a uint8 RGB array, got dtype {image.dtype} (convert 0-1 floats with "
                                    "(x * 255).round().astype(np.uint8))")
        if image.ndim == 2:
            rgb = np.repeat(image[:, :, None], 3, axis=2)  # (H, W, 3)
        elif image.ndim == 3 and image.shape[2] in (3, 4):
            rgb = image[:, :, :3]  # (H, W, 3), alpha dropped
        else:
            raise InvalidImageError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
    else:
        raise InvalidImageError(f"expected a PIL image or a uint8 RGB numpy array, got {type(image).__name__}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InvalidImageError(f"empty image of shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


class BaseFaceEncoder(ABC):
    """Detect faces, embed identities, compare two faces. Subclasses load models lazily and implement :meth:`detect`
    (every face, largest first); the rest is shared.

    Verdict thresholds: set ``distance_threshold`` (same person when :meth:`distance` is below it) or
    ``cosine_threshold`` (same person when the cosine is at or above it).
    """

    distance_threshold: float | None = None
    cosine_threshold: float | None = None

    @property
    @abstractmethod
    def backend(self) -> str:
        """``"<kind>"`` or ``"<kind>:<model>"``, recorded with every result and comparison."""

    @property
    @abstractmethod
    def loaded(self) -> bool: ...

    @abstractmethod
    def load(self) -> BaseFaceEncoder:
        """Load the models; :class:`~instantportrait.errors.ModelNotAvailableError`, fast, when they are missing."""

    @abstractmethod
    def unload(self) -> None: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What to record next to a result (backend, model files, settings, embedding size)."""

    @abstractmethod
    def detect(self, image: Any) -> list[FaceResult]:
        """All faces in ``image`` (PIL or RGB uint8 array), *the* face (see :meth:`encode`) first."""

    def _settings_text(self) -> str:
        """The detector settings a :class:`NoFaceError` message mentions."""
        return f"backend {self.backend}"

    # -- shared policies -------------------------------------------------------------------------------------------
    def encode(self, image: Any, *, what: str = "image") -> FaceResult:
        """The largest face in ``image``; :class:`NoFaceError` when there is none (``what`` names the image)."""
        faces = self.detect(image)
        if not faces:
            raise NoFaceError(f"no face detected in the {what} ({self._settings_text()}); use a clear, frontal "
                              "portrait")
        return faces[0]

    def encode_batch(self, images: list[Any]) -> list[FaceResult | None]:
        """:meth:`encode` per image, with ``None`` in place where an image has no face."""
        results: list[FaceResult | None] = []
        for image in images:
            faces = self.detect(image)
            results.append(faces[0] if faces else None)
        return results

    @staticmethod
    def cosine(a: FaceResult, b: FaceResult) -> float:
        """Cosine similarity of two results' embeddings, in [-1, 1] (the scorer's own cosine, so the ``identity``
        command, the app and the benchmark compute one number the same way)."""
        from instantportrait.eval.metrics import cosine

        return cosine(a.embedding, b.embedding)

    def distance(self, a: FaceResult, b: FaceResult) -> float | None:
        """The backend's own distance between two faces, or ``None`` where it judges by cosine."""
        return None

    def similarity(self, a: Any, b: Any) -> float:
        """Identity similarity: cosine of the largest faces' embeddings. :class:`NoFaceError` names the image."""
        return self.cosine(self.encode(a, what="first image (a)"), self.encode(b, what="second image (b)"))

    def identity_similarity(self, source: Any, outputs: list[Any]) -> list[float | None]:
        """Cosine between the source's face and each output's face; ``None`` for an output without a face.

        A source without a face raises :class:`NoFaceError` (there is no identity to compare with).
        """
        ref = self.encode(source, what="source image")
        return [None if r is None else self.cosine(ref, r) for r in self.encode_batch(outputs)]

    @property
    def same_person_rule(self) -> str:
        """The verdict rule in words, e.g. ``"distance < 0.6"`` or ``"cosine >= 0.36"``."""
        if self.distance_threshold is not None:
            return f"distance < {self.distance_threshold:g}"
        if self.cosine_threshold is not None:
            return f"cosine >= {self.cosine_threshold:g}"
        raise NotImplementedError(f"{type(self).__name__} sets neither distance_threshold nor cosine_threshold")

    def match(self, a: FaceResult, b: FaceResult) -> IdentityMatch:
        """Compare two detected faces: cosine, the backend's distance, and the same-person verdict."""
        rule = self.same_person_rule  # raises when the backend sets no threshold
        similarity, distance = self.cosine(a, b), self.distance(a, b)
        if self.distance_threshold is not None:
            if distance is None:
                raise NotImplementedError(f"{type(self).__name__} has a distance threshold but no distance")
            same = distance < self.distance_threshold
        else:
            same = similarity >= self.cosine_threshold
        return IdentityMatch(similarity=similarity, distance=distance, same_person=bool(same), backend=self.backend,
                             rule=rule)

    def compare(self, a: Any, b: Any) -> IdentityMatch:
        """:meth:`match` of the largest faces of two images. :class:`NoFaceError` names the image."""
        return self.match(self.encode(a, what="first image (a)"), self.encode(b, what="second image (b)"))
