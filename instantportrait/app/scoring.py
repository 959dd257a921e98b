"""The app's two scores, computed with the benchmark's own scorers: identity similarity (``FaceEncoder``) and CLIP-T
(``ClipScorer``). Either may be unavailable (no face pack, no CLIP weights offline): then its numbers are ``None``
and the reason is kept, so the UI shows "n/a" with why, and editing still works.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from instantportrait.demo.scorers import DEFAULT_FACE_PACK, demo_clip_for, demo_face_pack_for
from instantportrait.errors import InstantPortraitError, ModelNotAvailableError

logger = logging.getLogger(__name__)


@dataclass
class SourceFaces:
    """Faces found in the input: the largest (used for identity), how many, or why there is none."""

    face: Any | None  # FaceResult
    count: int
    reason: str | None = None  # why identity similarity is n/a for every method


def _is_file(value: str | Path | None) -> bool:
    return value is not None and Path(str(value)).expanduser().is_file()


class Scorers:
    """Lazily loaded, thread-safe face encoder and CLIP scorer.

    ``face_pack``: an insightface pack name or folder (``FaceEncoder``'s ``pack``). ``clip``: a CLIP variant name
    (``ViT-L/14``) or a weights file; ``None`` -> ``INSTANTPORTRAIT_CLIP`` or ``ViT-L/14``. ``tiny_root``: when
    given, a missing pack / CLIP file is replaced by tiny random-weight stand-ins written there (``--tiny`` only;
    labelled as such by :meth:`labels`). Loading failures are remembered, so a missing model costs one check, not
    one per request.
    """

    def __init__(self, face_pack: str | Path = DEFAULT_FACE_PACK, clip: str | Path | None = None, device: str = "cpu",
                 tiny_root: str | Path | None = None) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._face: Any = None
        self._clip: Any = None
        self.face_error: str | None = None
        self.clip_error: str | None = None
        self.face_label = ""
        self.clip_label = ""
        self._setup_face(face_pack, tiny_root)
        self._setup_clip(clip, tiny_root)

    # ------------------------------------------------------------------ set-up (fast: no model is loaded here)
    def _setup_face(self, pack: str | Path, tiny_root: str | Path | None) -> None:
        from instantportrait.face.encoder import FaceEncoder, check_pack_folder

        try:
            encoder = FaceEncoder(pack, device=self.device)
            check_pack_folder(encoder.spec, encoder.folder)  # directory listing only
            self._face, self.face_label = encoder, f"face model: {encoder.name}"
            return
        except (ModelNotAvailableError, ValueError) as exc:
            error = str(exc)
        demo = demo_face_pack_for(pack)
        if demo is not None:
            # The default pack is missing (offline, non-commercial weights not installed): the shipped demo pack.
            self._face = FaceEncoder(demo, device=self.device)
            self.face_label = f"face model: demo pack (toy, synthetic portraits only; {DEFAULT_FACE_PACK} missing)"
            return
        if tiny_root is not None:
            from instantportrait.tiny.face_pack import build_tiny_face_pack

            folder = build_tiny_face_pack(Path(tiny_root) / "tiny_face_pack")
            self._face = FaceEncoder(folder, device=self.device)
            self.face_label = "face model: TINY random recogniser (ID-sim meaningless)"
            return
        self.face_error, self.face_label = error, "face model: not available"

    def _setup_clip(self, clip: str | Path | None, tiny_root: str | Path | None) -> None:
        from instantportrait.eval.clip_score import ClipScorer

        try:
            scorer = (ClipScorer(weights=clip, device=self.device) if _is_file(clip)
                      else ClipScorer(str(clip) if clip is not None else None, device=self.device))
        except ModelNotAvailableError as exc:
            scorer, error = None, str(exc)
        else:
            error = None
            demo = demo_clip_for(None) if clip is None else None
            if demo is not None:
                # The default CLIP is not on disk: the shipped demo CLIP rather than a download attempt.
                self._clip = ClipScorer(weights=demo, device=self.device)
                self.clip_label = f"CLIP: demo model (toy, synthetic portraits only; {scorer.variant} missing)"
                return
            if scorer.expected_path.is_file() or tiny_root is None:
                # Present, or (without --tiny) downloaded on first use if the network allows; fails fast offline.
                name = scorer.variant or scorer.expected_path.name
                self._clip, self.clip_label = scorer, f"CLIP: {name}"
                return
        if tiny_root is not None:
            from instantportrait.tiny.clip import build_tiny_clip

            path = Path(tiny_root) / "tiny_clip.pt"
            if not path.is_file():
                build_tiny_clip(path, seed=0)
            self._clip = ClipScorer(weights=path, device=self.device)
            self.clip_label = "CLIP: TINY random weights (CLIP-T meaningless)"
            return
        self.clip_error, self.clip_label = error, "CLIP: not available"

    # ------------------------------------------------------------------ loading
    def _face_encoder(self) -> Any | None:
        with self._lock:
            if self._face is not None and not self._face.loaded and self.face_error is None:
                try:
                    self._face.load()
                except ModelNotAvailableError as exc:
                    self.face_error = str(exc)
                except Exception as exc:  # an unreadable pack: report it, keep the app up
                    logger.exception("loading the face pack failed")
                    self.face_error = f"{type(exc).__name__}: {exc}"
            return self._face if self.face_error is None else None

    def _clip_scorer(self) -> Any | None:
        with self._lock:
            if self._clip is not None and not self._clip.is_loaded and self.clip_error is None:
                try:
                    self._clip.load()
                except ModelNotAvailableError as exc:
                    self.clip_error = str(exc)
                except Exception as exc:
                    logger.exception("loading CLIP failed")
                    self.clip_error = f"{type(exc).__name__}: {exc}"
            return self._clip if self.clip_error is None else None

    def labels(self) -> list[str]:
        return [self.face_label, self.clip_label]

    # ------------------------------------------------------------------ scores
    def source_faces(self, image: PIL.Image.Image) -> SourceFaces:
        """Detect the faces of the input image; the largest is the identity reference."""
        encoder = self._face_encoder()
        if encoder is None:
            return SourceFaces(None, 0, f"face model not available: {self.face_error}")
        try:
            with self._lock:  # one insightface call at a time (its detector keeps per-call state)
                faces = encoder.detect(image)
        except Exception as exc:  # a scorer failure must not stop the edit
            logger.exception("face detection failed")
            return SourceFaces(None, 0, f"face detection failed ({type(exc).__name__}: {exc})")
        if not faces:
            return SourceFaces(None, 0, "no face detected in the input")
        return SourceFaces(faces[0], len(faces))

    def identity(self, source: SourceFaces, image: PIL.Image.Image) -> tuple[float | None, str | None]:
        """Cosine between the input's largest face and the output's largest face, or ``(None, why)``."""
        if source.face is None:
            return None, source.reason
        encoder = self._face_encoder()
        if encoder is None:
            return None, f"face model not available: {self.face_error}"
        try:
            with self._lock:
                faces = encoder.detect(image)
        except Exception as exc:
            logger.exception("face detection failed")
            return None, f"face detection failed ({type(exc).__name__}: {exc})"
        if not faces:
            return None, "no face detected in the output"
        return encoder.cosine(source.face, faces[0]), None

    def clip_t(self, image: PIL.Image.Image, text: str) -> tuple[float | None, str | None]:
        """CLIP-T of an output and the instruction, or ``(None, why)``."""
        scorer = self._clip_scorer()
        if scorer is None:
            return None, f"CLIP not available: {self.clip_error}"
        try:
            return float(scorer.clip_t([image], [text])[0]), None
        except InstantPortraitError as exc:
            return None, str(exc)
        except Exception as exc:  # a scorer failure must not stop the edit
            logger.exception("CLIP scoring failed")
            return None, f"CLIP scoring failed ({type(exc).__name__}: {exc})"
