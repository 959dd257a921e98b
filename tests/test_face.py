"""FaceEncoder on a tiny insightface pack built from code (no network, no downloaded weights)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures.faces import drawn_face as _drawn_face
from PIL import Image

from instantportrait.errors import InvalidImageError, ModelNotAvailableError, NoFaceError
from instantportrait.face.encoder import FaceEncoder, FaceResult, resolve_pack, to_bgr
from instantportrait.tiny.face_pack import DET_FILE, REC_EMBED_DIM, REC_FILE, build_tiny_face_pack

# insightface's face_align calls a scikit-image API deprecated in 0.26; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

# The astronaut's face in skimage.data.astronaut() (512x512), checked by eye: hairline to chin, ear to ear.
ASTRONAUT_FACE = (178.0, 75.0, 272.0, 185.0)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def drawn_face(size: int = 256, skin=(224, 172, 140), background=(70, 110, 160), eye=(30, 30, 30)) -> np.ndarray:
    """The shared drawn face as an RGB uint8 array."""
    return np.asarray(_drawn_face(size, background=background, skin=skin, eye=eye))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def pack(tmp_path_factory) -> Path:
    return build_tiny_face_pack(tmp_path_factory.mktemp("tiny_face_pack"))


@pytest.fixture(scope="module")
def encoder(pack) -> FaceEncoder:
    return FaceEncoder(pack).load()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


# -- the tiny pack itself ---------------------------------------------------------------------------------------------
def test_tiny_pack_is_small_and_loads_through_face_analysis(pack):
    from insightface.app import FaceAnalysis
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    for name in (DET_FILE, REC_FILE):
        assert (pack / name).stat().st_size < 1_000_000
    # insightface 2.1 uses an existing directory given as `name` directly (no root lookup, no download).
    app = FaceAnalysis(name=str(pack), allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"])
    assert isinstance(app.models["detection"], SCRFD) and app.models["detection"].use_kps
    assert isinstance(app.models["recognition"], ArcFaceONNX)
    assert app.models["recognition"].input_mean == 127.5  # not mistaken for an mxnet-style model with mean 0


def test_build_is_deterministic(tmp_path, pack):
    other = build_tiny_face_pack(tmp_path / "again")
    assert (other / REC_FILE).read_bytes() == (pack / REC_FILE).read_bytes()


# -- detection --------------------------------------------------------------------------------------------------------
def test_finds_the_astronaut_face(encoder, astronaut):
    face = encoder.encode(astronaut)
    assert isinstance(face, FaceResult)
    assert face.num_faces == 1
    assert face.det_score >= 0.5
    assert iou(face.bbox, ASTRONAUT_FACE) > 0.3, face.bbox
    x1, y1, x2, y2 = face.bbox
    assert face.kps.shape == (5, 2) and face.kps.dtype == np.float32
    assert np.all((face.kps[:, 0] >= x1) & (face.kps[:, 0] <= x2) & (face.kps[:, 1] >= y1) & (face.kps[:, 1] <= y2))
    assert face.embedding.shape == (REC_EMBED_DIM,) and face.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5


@pytest.mark.parametrize("value", [255, 128, 0])
def test_blank_image_has_no_face(encoder, value):
    blank = np.full((384, 512, 3), value, np.uint8)
    assert encoder.detect(blank) == []
    with pytest.raises(NoFaceError, match="no face detected"):
        encoder.encode(blank)


def test_uniform_skin_coloured_image_has_no_face(encoder):
    # The contrast gate: skin colour alone is not a face.
    assert encoder.detect(np.full((256, 256, 3), (224, 172, 140), np.uint8)) == []


def test_finds_a_drawn_face(encoder):
    face = encoder.encode(drawn_face())
    assert face.num_faces == 1
    assert iou(face.bbox, (68, 48, 188, 208)) > 0.5, face.bbox


def test_shifted_and_cropped_astronaut(encoder, astronaut):
    ref = encoder.encode(astronaut)
    shifted = encoder.encode(astronaut[:, 60:])
    assert abs((shifted.bbox[0] + 60) - ref.bbox[0]) < 20
    cropped = encoder.encode(astronaut[40:300, 100:360])
    assert iou(cropped.bbox + np.array([100, 40, 100, 40]), ASTRONAUT_FACE) > 0.3


def test_largest_face_first(encoder):
    canvas = np.full((256, 512, 3), (70, 110, 160), np.uint8)
    canvas[:, :256] = drawn_face(256)
    small = np.asarray(Image.fromarray(drawn_face(256)).resize((160, 160)))
    canvas[48:208, 300:460] = small[:, :, :]
    faces = encoder.detect(canvas)
    assert len(faces) == 2 and all(f.num_faces == 2 for f in faces)
    assert faces[0].area > faces[1].area and faces[0].bbox[0] < 256
    assert encoder.encode(canvas).bbox.tolist() == faces[0].bbox.tolist()


# -- embeddings -------------------------------------------------------------------------------------------------------
def test_same_image_similarity_is_one_and_deterministic(encoder, astronaut):
    assert encoder.similarity(astronaut, astronaut.copy()) == pytest.approx(1.0, abs=1e-5)
    a, b = encoder.encode(astronaut), encoder.encode(astronaut)
    assert np.array_equal(a.embedding, b.embedding) and np.array_equal(a.bbox, b.bbox)


def test_pil_any_mode_matches_numpy(encoder, astronaut):
    ref = encoder.encode(astronaut).embedding
    for mode in ("RGB", "RGBA"):
        got = encoder.encode(Image.fromarray(astronaut).convert(mode)).embedding
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_different_faces_differ(encoder, astronaut):
    assert encoder.similarity(astronaut, drawn_face()) < 0.9


def test_encode_batch_keeps_positions(encoder, astronaut):
    blank = np.full((128, 128, 3), 255, np.uint8)
    out = encoder.encode_batch([astronaut, blank, drawn_face()])
    assert len(out) == 3 and out[1] is None
    assert isinstance(out[0], FaceResult) and isinstance(out[2], FaceResult)


def test_identity_similarity(encoder, astronaut):
    blank = np.zeros((64, 64, 3), np.uint8)
    sims = encoder.identity_similarity(astronaut, [astronaut, blank, drawn_face()])
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[1] is None and sims[2] < 0.9
    with pytest.raises(NoFaceError, match="source"):
        encoder.identity_similarity(blank, [astronaut])


def test_similarity_names_the_faceless_image(encoder, astronaut):
    blank = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(NoFaceError, match=r"second image \(b\)"):
        encoder.similarity(astronaut, blank)
    with pytest.raises(NoFaceError, match=r"first image \(a\)"):
        encoder.similarity(blank, astronaut)


# -- colour order -----------------------------------------------------------------------------------------------------
def test_insightface_receives_bgr(pack, astronaut, monkeypatch):
    """Detector-agnostic: what reaches FaceAnalysis.get is the RGB input with its channels reversed."""
    enc = FaceEncoder(pack).load()
    seen: list[np.ndarray] = []
    original = enc._app.get

    def spy(img, *args, **kwargs):
        seen.append(img.copy())
        return original(img, *args, **kwargs)

    monkeypatch.setattr(enc._app, "get", spy)
    enc.detect(astronaut)
    enc.detect(Image.fromarray(astronaut))
    assert len(seen) == 2
    for img in seen:
        assert img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(img, astronaut[:, :, ::-1])


def test_channel_order_matters_to_the_tiny_detector(encoder, astronaut):
    # The tiny detector is colour based, so a red/blue swap (the classic RGB/BGR mix-up) hides the face.
    assert encoder.detect(np.ascontiguousarray(astronaut[:, :, ::-1])) == []


def test_invalid_images(encoder):
    with pytest.raises(InvalidImageError, match="uint8"):
        to_bgr(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InvalidImageError, match="shape"):
        to_bgr(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(InvalidImageError):
        encoder.detect("not an image")
    assert to_bgr(np.zeros((4, 6), np.uint8)).shape == (4, 6, 3)


# -- missing / broken packs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["buffalo_l", "antelopev2"])
def test_missing_pack_fails_fast_and_offline(tmp_path, monkeypatch, name):
    monkeypatch.delenv(f"INSTANTPORTRAIT_{name.upper()}", raising=False)
    import insightface.app
    import insightface.utils.storage

    calls: list[tuple] = []

    def forbidden(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("FaceAnalysis / download must not be reached when the pack folder is missing")

    monkeypatch.setattr(insightface.app, "FaceAnalysis", forbidden)
    monkeypatch.setattr(insightface.utils.storage, "download", forbidden)
    enc = FaceEncoder(name, root=tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as info:
        enc.encode(np.zeros((64, 64, 3), np.uint8))
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert repr(name) in message and str(tmp_path / "models" / name) in message
    assert "directly in" in message
    if name == "antelopev2":
        assert "dead" in message and "404" in message
    assert calls == [] and not enc.loaded


def test_nested_folder_is_diagnosed(tmp_path, pack):
    nested = tmp_path / "models" / "antelopev2" / "antelopev2"
    shutil.copytree(pack, nested)
    with pytest.raises(ModelNotAvailableError, match="nested") as info:
        FaceEncoder("antelopev2", root=tmp_path).load()
    assert str(nested) in str(info.value)


def test_zip_not_unpacked_is_diagnosed(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "buffalo_l.zip").write_bytes(b"PK")
    with pytest.raises(ModelNotAvailableError, match="unzip"):
        FaceEncoder("buffalo_l", root=tmp_path).load()


def test_pack_without_recogniser(tmp_path, pack):
    folder = tmp_path / "only_det"
    folder.mkdir()
    shutil.copy(pack / DET_FILE, folder / DET_FILE)
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="detection and a recognition"):
        FaceEncoder(folder).load()
    assert time.perf_counter() - start < 1.0
    shutil.copy(pack / DET_FILE, folder / "det_copy.onnx")  # two files, neither a recogniser
    with pytest.raises(ModelNotAvailableError, match="recognition model"):
        FaceEncoder(folder).load()


def test_pack_without_detector(tmp_path, pack):
    folder = tmp_path / "only_rec"
    folder.mkdir()
    shutil.copy(pack / REC_FILE, folder / "a.onnx")
    shutil.copy(pack / REC_FILE, folder / "b.onnx")
    with pytest.raises(ModelNotAvailableError, match="detection model"):
        FaceEncoder(folder).load()


# -- locating packs ---------------------------------------------------------------------------------------------------
def test_pack_resolution(tmp_path, monkeypatch, pack):
    monkeypatch.delenv("INSTANTPORTRAIT_BUFFALO_L", raising=False)
    monkeypatch.setenv("INSIGHTFACE_ROOT", str(tmp_path))
    assert resolve_pack("buffalo_l")[1] == tmp_path / "models" / "buffalo_l"
    assert resolve_pack("buffalo_l", root=tmp_path / "r")[1] == tmp_path / "r" / "models" / "buffalo_l"
    assert resolve_pack("buffalo_s")[1] == tmp_path / "models" / "buffalo_s"
    assert resolve_pack(str(pack))[1] == pack and resolve_pack(pack)[1] == pack
    monkeypatch.setenv("INSTANTPORTRAIT_BUFFALO_L", str(pack))
    enc = FaceEncoder("buffalo_l")
    assert enc.name == "buffalo_l" and enc.folder == pack
    info = enc.describe()
    assert info["pack"] == "buffalo_l" and info["recognition_model"] == REC_FILE
    assert info["det_size"] == [640, 640] and info["embedding_dim"] == REC_EMBED_DIM
    assert info["providers"] == ["CPUExecutionProvider"]


def test_unload_and_reload(pack, astronaut):
    enc = FaceEncoder(pack, det_size=(320, 320))
    assert not enc.loaded  # lazy
    first = enc.encode(astronaut)
    enc.unload()
    assert not enc.loaded
    np.testing.assert_array_equal(enc.encode(astronaut).embedding, first.embedding)


def test_bad_settings():
    with pytest.raises(ValueError, match="multiples of 32"):
        FaceEncoder("buffalo_l", det_size=(500, 500))
    with pytest.raises(ValueError, match="det_thresh"):
        FaceEncoder("buffalo_l", det_thresh=1.5)
    with pytest.raises(ValueError, match="not an insightface pack"):
        FaceEncoder("clip")
