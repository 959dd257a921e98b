"""The insightface backend of the face encoder: detection and identity embeddings with an insightface model pack.

``FaceEncoder("buffalo_l")`` wraps insightface's ``FaceAnalysis`` (SCRFD detector + ArcFace recogniser) and adds what
the rest of the project needs from it:

* a fast, clear :class:`~instantportrait.errors.ModelNotAvailableError` when the pack is missing. insightface's own
  ``FaceAnalysis(name="buffalo_l")`` downloads a missing pack with a request that has no timeout (a hang or a
  ``ConnectionError`` offline), and ``antelopev2``'s official download link is dead; we check the folder *before*
  constructing ``FaceAnalysis``, so insightface is only ever given an existing folder and never goes to the network;
* RGB in (PIL images of any mode, RGB ``uint8`` arrays), BGR handed to insightface, as it expects;
* results as :class:`FaceResult` (L2-normalised embedding, landmarks, box, score, how many faces the image had), the
  largest face first, and ``None`` in batch results where an image has no face — never silently dropped (these
  policies, and comparing two faces, are shared with the dlib backend in :mod:`instantportrait.face.base`).

Backend names: ``"insightface:<pack>"``, and ``"toy:demo_face_pack"`` for the shipped demo pack (a toy trained on
synthetic faces; same code path, its own same-person threshold). Same person: cosine at least
:data:`ARCFACE_SAME_PERSON_COSINE` for real ArcFace packs, :data:`TOY_SAME_PERSON_COSINE` for the demo pack.

Pack location: ``pack`` is a key of :data:`instantportrait.config.MODELS` (``buffalo_l``, ``antelopev2``; the
environment variable ``INSTANTPORTRAIT_BUFFALO_L=/path/to/folder`` overrides it), another pack name, or a folder.
A name is looked up in ``<root>/models/<name>/`` with ``root`` = the argument, else ``$INSIGHTFACE_ROOT``, else
``~/.insightface``. insightface's packs are released for non-commercial research only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instantportrait.config import DEMO_FACE_PACK, MODELS, ModelSpec, resolve_model
from instantportrait.errors import ModelNotAvailableError
from instantportrait.face.base import BaseFaceEncoder, FaceResult, to_rgb_array
from instantportrait.hub import how_to_get

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ROOT_ENV = "INSIGHTFACE_ROOT"
DEFAULT_ROOT = "~/.insightface"
# Packs whose official insightface auto-download link no longer works.
DEAD_DOWNLOAD_LINKS = frozenset({"antelopev2"})
PACK_LICENCE = "insightface: non-commercial research only"
# Same person when the ArcFace cosine is at least this: insightface's model checks print a verification threshold of
# 1.28 on the squared L2 distance of normalised embeddings (deepinsight/insightface#1897), i.e. cosine
# 1 - 1.28 / 2 = 0.36; common practice for buffalo_l uses 0.3-0.5. Not measured here (no buffalo_l on this machine).
ARCFACE_SAME_PERSON_COSINE = 0.36
# The demo pack's own threshold, from its card's test-split numbers: two photos of one person 0.74 on average,
# different people 0.27 at the 95th percentile; 0.5 sits between the two.
TOY_SAME_PERSON_COSINE = 0.5
TOY_BACKEND = "toy:demo_face_pack"


def default_root() -> Path:
    """``$INSIGHTFACE_ROOT`` or ``~/.insightface``."""
    return Path(os.environ.get(ROOT_ENV, "").strip() or DEFAULT_ROOT).expanduser()


def _looks_like_path(value: str) -> bool:
    return os.sep in value or (os.altsep is not None and os.altsep in value) or value.startswith(("~", "."))


def resolve_pack(pack: str | Path, root: str | Path | None = None) -> tuple[ModelSpec, Path]:
    """The spec and the folder of an insightface pack, without touching the folder.

    A config key is resolved with :func:`~instantportrait.config.resolve_model` (so its environment override
    applies); a value that looks like a path is used as the folder; any other name is ``<root>/models/<name>``.
    """
    root_dir = Path(root).expanduser() if root is not None else default_root()
    text = str(pack)
    if isinstance(pack, Path):
        return ModelSpec(pack.name or text, text, kind="insightface", licence=PACK_LICENCE), pack.expanduser()
    if pack in MODELS:
        spec = resolve_model(pack)
        if spec.kind != "insightface":
            raise ValueError(f"model {pack!r} is a {spec.kind} model, not an insightface pack")
    else:
        name = Path(text).name if _looks_like_path(text) else text
        spec = ModelSpec(name or text, text, kind="insightface", licence=PACK_LICENCE)
    location = spec.repo_id
    if _looks_like_path(location) or Path(location).expanduser().is_absolute():
        folder = Path(location).expanduser()
    else:
        folder = root_dir / "models" / location
    return spec, folder


def _onnx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.onnx") if p.is_file())


def _advice(spec: ModelSpec, folder: Path) -> str:
    """How to obtain and where to put a pack, for the end of an error message."""
    known = spec.key in MODELS
    get = (f"To get it, {how_to_get(spec)}." if known
           else f"To use it, put the pack's detection and recognition .onnx files in {folder}/.")
    advice = (f"Unpack the pack's zip so that its .onnx files sit directly in {folder}/ (a common mistake is a "
              f"nested folder such as {folder / spec.key}/)")
    advice += (f", or point {spec.env_var} (or `pack=`) at the folder that holds them" if known
               else ", or pass `pack=` the folder that holds them")
    advice += f"; `root=` or ${ROOT_ENV} changes the root folder (packs live in <root>/models/<pack>/)."
    if spec.key in DEAD_DOWNLOAD_LINKS:
        advice = (f"insightface's official auto-download link for {spec.key} is dead (404), so FaceAnalysis cannot "
                  f"fetch it: download {spec.key}.zip by hand (e.g. from a Hugging Face mirror of the pack). "
                  + advice)
    return f"{get} {advice}"


def check_pack_folder(spec: ModelSpec, folder: Path) -> list[Path]:
    """The ``.onnx`` files directly in ``folder``; raises :class:`ModelNotAvailableError` fast if unusable.

    Reads only directory listings (no ONNX parsing, no network), so it answers in milliseconds. It catches a missing
    folder, an un-unpacked zip, the nested-folder mistake (the ``.onnx`` files one level deeper) and a folder with
    fewer than the two files (detector and recogniser) a pack needs. Which file is which is decided by insightface
    when the pack loads (see :meth:`FaceEncoder.load`).
    """
    head = f"insightface pack {spec.key!r} is not available"
    tail = _advice(spec, folder)
    if not folder.is_dir():
        zipped = [p for p in (folder.with_name(folder.name + ".zip"), folder.parent / f"{spec.key}.zip") if p.is_file()]
        why = f"the folder {folder} does not exist"
        if zipped:
            why += f" (but {zipped[0]} does: unzip it into {folder}/)"
        raise ModelNotAvailableError(f"{head}: {why}. {tail}")
    files = _onnx_files(folder)
    if not files:
        nested = sorted({p.parent for p in folder.glob("*/*.onnx")} | {p.parent for p in folder.glob("*/*/*.onnx")})
        if nested:
            raise ModelNotAvailableError(
                f"{head}: {folder} holds no .onnx files, but {nested[0]} does: the zip was unpacked into a nested "
                f"folder. Move the .onnx files up so that they sit directly in {folder}/ (or pass pack="
                f"'{nested[0]}'). {tail}")
        raise ModelNotAvailableError(f"{head}: the folder {folder} holds no .onnx files. {tail}")
    if len(files) < 2:
        raise ModelNotAvailableError(
            f"{head}: {folder} holds only {files[0].name}, but a pack needs a detection and a recognition .onnx. "
            f"{tail}")
    return files


def _providers(device: str) -> tuple[list[Any], int]:
    """ONNX Runtime providers and insightface ``ctx_id`` for a torch-style device string (``cpu``, ``cuda:1``).

    insightface ignores ``ctx_id`` beyond "negative means CPU", so the CUDA device index goes in the provider options.
    """
    import onnxruntime

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            device_id = int(index or 0)
            return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"], device_id
        logger.warning("device %s requested but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); "
                       "running insightface on the CPU", device)
    elif kind != "cpu":
        logger.warning("insightface has no provider for device %s; running on the CPU", device)
    return ["CPUExecutionProvider"], -1


def to_bgr(image: Any) -> np.ndarray:
    """A PIL image (any mode) or an RGB ``uint8`` array ``(H, W, 3)`` (or ``(H, W)``, ``(H, W, 4)``) -> contiguous
    BGR ``uint8`` ``(H, W, 3)``, the layout insightface (OpenCV) expects."""
    return np.ascontiguousarray(to_rgb_array(image)[:, :, ::-1])  # (H, W, 3) BGR


class FaceEncoder(BaseFaceEncoder):
    """Detect faces and embed identities with an insightface pack (default ``buffalo_l``).

    Lazy: the pack is loaded on first use or by :meth:`load`. A missing folder, an unpacked-into-a-nested-folder or
    not-unpacked zip, or a folder with fewer than two ``.onnx`` files raises :class:`ModelNotAvailableError` at that
    point in milliseconds, before insightface is even imported; never any network access. A folder whose files do
    not route to a detector and a recogniser is reported once insightface has parsed them.

    >>> enc = FaceEncoder("buffalo_l", device="cuda")          # doctest: +SKIP
    >>> enc.similarity(source_image, edited_image)            # doctest: +SKIP
    0.71
    """

    def __init__(
        self,
        pack: str | Path = "buffalo_l",
        root: str | Path | None = None,
        device: str | torch.device = "cpu",
        det_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
    ) -> None:
        det_size = (int(det_size[0]), int(det_size[1]))
        if min(det_size) <= 0 or det_size[0] % 32 or det_size[1] % 32:
            raise ValueError(f"det_size must be positive multiples of 32 (SCRFD's largest stride), got {det_size}")
        if not 0.0 < float(det_thresh) < 1.0:
            raise ValueError(f"det_thresh must be in (0, 1), got {det_thresh}")
        self.spec, self.folder = resolve_pack(pack, root)
        self.device = str(device)
        self.det_size = det_size
        self.det_thresh = float(det_thresh)
        self._app: Any = None
        self._providers: list[Any] = []
        # The shipped demo pack is a toy trained on synthetic faces: its own name and threshold.
        self.is_toy = self.folder.expanduser().resolve() == DEMO_FACE_PACK.resolve()
        self.cosine_threshold = TOY_SAME_PERSON_COSINE if self.is_toy else ARCFACE_SAME_PERSON_COSINE

    # -- loading ---------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The pack's name (config key or folder name), for recording with results."""
        return self.spec.key

    @property
    def backend(self) -> str:
        """``"insightface:<pack>"``, or ``"toy:demo_face_pack"`` for the shipped demo pack."""
        return TOY_BACKEND if self.is_toy else f"insightface:{self.name}"

    @property
    def loaded(self) -> bool:
        return self._app is not None

    def load(self) -> FaceEncoder:
        """Check the pack folder, then build insightface's ``FaceAnalysis`` on it (detection + recognition only).

        insightface routes each ``.onnx`` by its graph (>= 5 outputs: SCRFD detector; one output and a square input
        >= 112: ArcFace recogniser) and builds a Session for every file in the folder, unused ones included.
        """
        if self._app is not None:
            return self
        files = check_pack_folder(self.spec, self.folder)  # before importing insightface: fast and offline
        from insightface.app import FaceAnalysis

        providers, ctx_id = _providers(self.device)
        advice = _advice(self.spec, self.folder)
        try:
            # An existing directory as `name` is used as is by insightface 2.1 (no `root` lookup, no download).
            app = FaceAnalysis(name=str(self.folder.resolve()), allowed_modules=["detection", "recognition"],
                               providers=providers)
        except (AssertionError, KeyError) as exc:  # FaceAnalysis asserts that some file routed to detection
            raise ModelNotAvailableError(
                f"insightface pack {self.spec.key!r} in {self.folder} has no file insightface recognises as a "
                f"detection model (found {', '.join(p.name for p in files)}). {advice}") from exc
        if "recognition" not in app.models:
            raise ModelNotAvailableError(
                f"insightface pack {self.spec.key!r} in {self.folder} has no file insightface recognises as a "
                f"recognition model (found {', '.join(p.name for p in files)}; detection: "
                f"{Path(app.models['detection'].model_file).name}). {advice}")
        app.prepare(ctx_id=ctx_id, det_thresh=self.det_thresh, det_size=self.det_size)
        self._app, self._providers = app, providers
        return self

    def unload(self) -> None:
        """Drop the ONNX Runtime sessions (frees their memory); the next use loads them again."""
        self._app = None
        self._providers = []

    def describe(self) -> dict[str, Any]:
        """What to record next to a result: pack, model files, detector settings, embedding size, providers."""
        self.load()
        det = self._app.models["detection"]
        rec = self._app.models["recognition"]
        return {
            "backend": self.backend,
            "pack": self.name,
            "folder": str(self.folder),
            "detection_model": Path(det.model_file).name,
            "recognition_model": Path(rec.model_file).name,
            "embedding_dim": int(rec.output_shape[-1]) if isinstance(rec.output_shape[-1], int) else None,
            "det_size": list(self.det_size),
            "det_thresh": self.det_thresh,
            "providers": [p[0] if isinstance(p, tuple) else p for p in self._providers],
        }

    # -- inference -------------------------------------------------------------------------------------------------
    def detect(self, image: Any) -> list[FaceResult]:
        """All faces in ``image``, largest box first (ties: higher score first)."""
        self.load()
        faces = self._app.get(to_bgr(image))
        results = []
        for face in faces:
            if face.embedding is None:
                raise RuntimeError("insightface returned a face without an embedding (recognition did not run)")
            emb = np.asarray(face.embedding, dtype=np.float32).ravel()  # (D,)
            norm = float(np.linalg.norm(emb))
            results.append(FaceResult(
                embedding=emb / norm if norm > 0 else emb,
                kps=np.asarray(face.kps, dtype=np.float32).reshape(5, 2),
                bbox=np.asarray(face.bbox, dtype=np.float32)[:4].copy(),
                det_score=float(face.det_score),
                num_faces=len(faces),
                embedding_norm=norm,
                backend=self.backend,
            ))
        results.sort(key=lambda r: (-r.area, -r.det_score))
        return results

    def _settings_text(self) -> str:
        return f"pack {self.name}, det_thresh {self.det_thresh}, det_size {self.det_size[0]}x{self.det_size[1]}"

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded"
        return f"FaceEncoder(pack={self.name!r}, folder={str(self.folder)!r}, device={self.device!r}, {state})"
