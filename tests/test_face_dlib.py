"""The dlib face backend on real photos that ship inside installed packages (no network, no downloads), and the
backend chooser. The encoder is loaded once per module (about 0.35 s)."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from test_face import ASTRONAUT_FACE, iou, no_network  # noqa: F401 (no_network: autouse fixture)

from instantportrait.errors import InvalidImageError, ModelNotAvailableError, NoFaceError
from instantportrait.face.backends import open_face_encoder
from instantportrait.face.base import FaceResult, IdentityMatch
from instantportrait.face.dlib_backend import (
    INSTALL_HINT,
    NOSE_BASE_DEPTH,
    SAME_PERSON_DISTANCE,
    DlibFaceEncoder,
    _template_depths,
    five_point_to_insightface,
    rank_faces,
)
from instantportrait.face.keypoints import ARCFACE_TEMPLATE_112

# insightface's face_align calls a scikit-image API deprecated in 0.26; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

def installed_photo(name: str) -> np.ndarray:
    """A real face photo shipped inside an installed package, as RGB uint8."""
    if name == "grace_hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    else:  # insightface's bundled sample images: t1.jpg (six people), Tom_Hanks_54745.png (a 112x112 crop)
        import insightface

        path = Path(insightface.__file__).parent / "data" / "images" / name
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def jpeg(image: np.ndarray, quality: int = 30) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def jitter(image: np.ndarray) -> np.ndarray:
    im = ImageEnhance.Brightness(Image.fromarray(image)).enhance(1.3)
    return np.asarray(ImageEnhance.Color(ImageEnhance.Contrast(im).enhance(0.7)).enhance(0.5))


@pytest.fixture(scope="module")
def enc() -> DlibFaceEncoder:
    return DlibFaceEncoder().load()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


@pytest.fixture(scope="module")
def astronaut_face(enc, astronaut) -> FaceResult:
    return enc.encode(astronaut)


# -- detection and landmarks ------------------------------------------------------------------------------------------
def test_astronaut_face_not_her_mission_patch(enc, astronaut):
    faces = enc.detect(astronaut)
    assert len(faces) == 2 and all(f.num_faces == 2 for f in faces)  # the patch on her suit is found too
    face = enc.encode(astronaut)
    assert face.bbox.tolist() == faces[0].bbox.tolist()
    assert iou(face.bbox, ASTRONAUT_FACE) > 0.5, face.bbox
    assert face.backend == "dlib" and enc.backend == "dlib"
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5 and face.embedding_norm > 0


def test_landmarks_in_insightface_order(astronaut_face):
    kps = astronaut_face.kps  # (5, 2): left eye, right eye, nose, left mouth, right mouth
    x1, y1, x2, y2 = astronaut_face.bbox  # (4,)
    assert kps.shape == (5, 2) and kps.dtype == np.float32
    assert np.all((kps[:, 0] >= x1) & (kps[:, 0] <= x2) & (kps[:, 1] >= y1) & (kps[:, 1] <= y2))
    left_eye, right_eye, nose, mouth_l, mouth_r = kps
    assert left_eye[0] < nose[0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert mouth_l[0] < nose[0] < mouth_r[0]


def test_landmark_estimate_reproduces_the_arcface_template_and_follows_rotation():
    t = np.asarray(ARCFACE_TEMPLATE_112, dtype=np.float64)  # (5, 2)
    eye_vec = t[1] - t[0]
    iod = np.linalg.norm(eye_vec)
    down = np.array([-eye_vec[1], eye_vec[0]]) / iod
    corner = eye_vec / iod * 0.2 * iod  # eye corners 0.2 inter-eye distances either side of each centre
    nose_base = (t[0] + t[1]) / 2 + down * NOSE_BASE_DEPTH * iod
    parts = np.stack([t[1] + corner, t[1] - corner, t[0] - corner, t[0] + corner, nose_base])  # dlib's order
    # within 0.3 px of the 112-px template: its nose and mouth sit a fraction of a pixel off the eyes' centre line
    np.testing.assert_allclose(five_point_to_insightface(parts), t, atol=0.3)
    tip, mouth, half = _template_depths()
    assert 0.5 < tip < 0.65 and 1.1 < mouth < 1.2 and 0.35 < half < 0.45
    angle = np.deg2rad(25)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(five_point_to_insightface(parts @ rot.T), five_point_to_insightface(parts) @ rot.T,
                               atol=1e-3)


def test_rank_faces_prefers_the_larger_then_the_surer_among_equals():
    def face(side: float, score: float) -> FaceResult:
        return FaceResult(np.ones(2, np.float32), np.zeros((5, 2), np.float32),
                          np.array([0, 0, side, side], np.float32), score, 3)

    patch, real, small = face(91, 0.12), face(90, 1.16), face(40, 3.0)
    assert rank_faces([patch, small, real]) == [real, patch, small]
    big = face(130, 0.1)
    assert rank_faces([real, big])[0] is big
    assert rank_faces([]) == []


@pytest.mark.parametrize("value", [255, 128, 0])
def test_blank_image_has_no_face(enc, value):
    blank = np.full((300, 400, 3), value, np.uint8)
    assert enc.detect(blank) == []
    with pytest.raises(NoFaceError, match="no face detected in the test image.*backend dlib"):
        enc.encode(blank, what="test image")


def test_non_face_photos_have_no_face(enc):
    from skimage import data

    for image in (data.chelsea(), data.coffee(), np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)):
        assert enc.detect(image) == []


def test_bad_input_is_invalid_image(enc):
    with pytest.raises(InvalidImageError):
        enc.detect(np.zeros((32, 32, 3), np.float32))


# -- identity ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", [
    pytest.param(lambda a: a[:, ::-1], id="mirror"),
    pytest.param(lambda a: a[33:333, 97:397], id="crop"),
    pytest.param(lambda a: np.asarray(Image.fromarray(a).resize((307, 307), Image.BICUBIC)), id="downscale"),
    pytest.param(lambda a: np.asarray(Image.fromarray(a).resize((768, 768), Image.BICUBIC)), id="upscale"),
    pytest.param(jpeg, id="jpeg-q30"),
    pytest.param(jitter, id="colour-jitter"),
    pytest.param(lambda a: np.asarray(Image.fromarray(a).convert("L")), id="grayscale"),
])
def test_transforms_of_one_photo_are_the_same_person(enc, astronaut, astronaut_face, transform):
    match = enc.match(astronaut_face, enc.encode(np.ascontiguousarray(transform(astronaut))))
    assert isinstance(match, IdentityMatch) and match.backend == "dlib" and match.rule == "distance < 0.6"
    assert match.same_person and match.distance < SAME_PERSON_DISTANCE, match
    assert match.similarity > 0.9  # dlib's compressed cosine scale


def test_same_image_distance_zero(enc, astronaut):
    match = enc.compare(astronaut, Image.fromarray(astronaut))
    assert match.distance == pytest.approx(0.0, abs=1e-5) and match.similarity == pytest.approx(1.0, abs=1e-5)
    assert match.to_dict() == {"similarity": match.similarity, "distance": match.distance, "same_person": True,
                               "backend": "dlib"}


def test_different_real_people_are_not_the_same_person(enc, astronaut_face):
    # six people in one photo, each face about 100 px: no upsampling needed, which saves a second
    group = DlibFaceEncoder(upsample=0).detect(installed_photo("t1.jpg"))
    assert len(group) >= 5
    people = [astronaut_face, enc.encode(installed_photo("grace_hopper")),
              enc.encode(installed_photo("Tom_Hanks_54745.png")), *group]
    for i in range(len(people)):
        for j in range(i + 1, len(people)):
            match = enc.match(people[i], people[j])
            assert not match.same_person and match.distance >= SAME_PERSON_DISTANCE, (i, j, match)


def test_distance_is_dlibs_raw_descriptor_distance(enc, astronaut_face):
    a, b = astronaut_face, enc.encode(installed_photo("grace_hopper"))
    assert enc.distance(a, b) == pytest.approx(float(np.linalg.norm(a.raw_embedding - b.raw_embedding)))
    assert enc.distance(a, b) != pytest.approx(float(np.linalg.norm(a.embedding - b.embedding)), abs=1e-3)


def test_describe(enc):
    info = enc.describe()
    assert info["backend"] == "dlib" and info["embedding_dim"] == 128 and info["same_person"] == "distance < 0.6"
    assert info["recognition_model"].endswith(".dat") and "CC0" in info["licence"]


# -- missing models -------------------------------------------------------------------------------------------------
def test_missing_dlib_is_fast_and_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match=INSTALL_HINT):
        DlibFaceEncoder().load()
    assert time.perf_counter() - t0 < 10


def test_missing_models_package_is_fast_and_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match=INSTALL_HINT):
        DlibFaceEncoder().load()
    assert time.perf_counter() - t0 < 10


def test_incomplete_models_folder(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="shape_predictor_5_face_landmarks.dat"):
        DlibFaceEncoder(models=tmp_path).load()


def test_bad_settings():
    with pytest.raises(ValueError, match="detector"):
        DlibFaceEncoder("mtcnn")
    with pytest.raises(ValueError, match="upsample"):
        DlibFaceEncoder(upsample=-1)


# -- choosing a backend -----------------------------------------------------------------------------------------------
@pytest.fixture()
def no_insightface_pack(tmp_path, monkeypatch):
    monkeypatch.setenv("INSIGHTFACE_ROOT", str(tmp_path))
    monkeypatch.delenv("INSTANTPORTRAIT_BUFFALO_L", raising=False)


def test_auto_falls_back_to_dlib(no_insightface_pack):
    assert open_face_encoder("auto").backend == "dlib"


def test_auto_without_any_model_names_both(no_insightface_pack, monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ModelNotAvailableError, match=r"insightface: .*buffalo_l.* dlib: .*pip install dlib-bin"):
        open_face_encoder("auto")


def test_insightface_backend_never_falls_back(no_insightface_pack):
    with pytest.raises(ModelNotAvailableError, match="buffalo_l"):
        open_face_encoder("insightface")


def test_insightface_pack_backend_name_and_cosine_verdict(tiny_face_pack, astronaut):
    enc = open_face_encoder("insightface", pack=tiny_face_pack)
    assert enc.backend == f"insightface:{tiny_face_pack.name}"
    assert enc.encode(astronaut).backend == enc.backend
    match = enc.compare(astronaut, astronaut.copy())
    assert match.distance is None and match.same_person and match.rule.startswith("cosine >= ")
    assert open_face_encoder("auto", pack=tiny_face_pack).backend == enc.backend  # an installed pack comes first


def test_toy_backend_is_the_demo_pack():
    enc = open_face_encoder("toy")
    assert enc.backend == "toy:demo_face_pack" and enc.same_person_rule == "cosine >= 0.5"
    with pytest.raises(ValueError, match="unknown face backend"):
        open_face_encoder("arcface")
