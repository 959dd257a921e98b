"""Choosing a face-encoder backend by name: ``auto``, ``insightface``, ``dlib`` or ``toy``.

``auto`` prefers insightface's ``buffalo_l`` (the evaluation face model of the papers we compare with) when its pack
is installed, else dlib (CC0, always installable offline with pip). The toy demo pack is never picked automatically:
it was trained on synthetic faces and means nothing on a photo, so it is used only when named.
"""

from __future__ import annotations

from pathlib import Path

from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.base import BaseFaceEncoder

BACKENDS = ("auto", "insightface", "dlib", "toy")
DEFAULT_PACK = "buffalo_l"


def open_face_encoder(backend: str = "auto", *, pack: str | Path = DEFAULT_PACK, root: str | Path | None = None,
                      device: str = "cpu") -> BaseFaceEncoder:
    """A loaded face encoder for ``backend``; :class:`ModelNotAvailableError` (fast) when its models are missing.

    ``pack`` and ``root`` choose the insightface pack (``insightface``, and ``auto``'s first choice).
    """
    from instantportrait.face.dlib_backend import DlibFaceEncoder
    from instantportrait.face.encoder import FaceEncoder

    if backend not in BACKENDS:
        raise ValueError(f"unknown face backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "dlib":
        return DlibFaceEncoder(device=device).load()
    if backend == "toy":
        from instantportrait.config import DEMO_FACE_PACK

        return FaceEncoder(DEMO_FACE_PACK, device=device).load()
    if backend == "insightface":
        return FaceEncoder(pack, root=root, device=device).load()
    try:
        return FaceEncoder(pack, root=root, device=device).load()
    except ModelNotAvailableError as first:
        try:
            return DlibFaceEncoder(device=device).load()
        except ModelNotAvailableError as second:
            raise ModelNotAvailableError(f"no face model is available. insightface: {first} dlib: {second}") from second
