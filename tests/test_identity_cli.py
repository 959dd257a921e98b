"""``python -m instantportrait identity A B``: exit codes, the text and ``--json`` outputs, backend choice.

Real photos only from installed packages (scikit-image's astronaut, matplotlib's Grace Hopper); no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantportrait.cli.main import build_parser, main
from instantportrait.errors import EXIT_INPUT, EXIT_MODEL, EXIT_NO_FACE, EXIT_OK

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    import matplotlib
    from skimage.data import astronaut

    folder = tmp_path_factory.mktemp("identity")
    image = Image.fromarray(astronaut())
    paths = {"astronaut": folder / "astronaut.png", "mirror": folder / "mirror.jpg", "blank": folder / "blank.png",
             "corrupt": folder / "corrupt.png",
             "hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}
    image.save(paths["astronaut"])
    image.transpose(Image.FLIP_LEFT_RIGHT).save(paths["mirror"], quality=85)
    Image.fromarray(np.full((200, 200, 3), 255, np.uint8)).save(paths["blank"])
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return paths


@pytest.fixture(autouse=True)
def no_insightface_pack(tmp_path, monkeypatch):
    """No buffalo_l here, whatever the machine has: `auto` must pick dlib."""
    monkeypatch.setenv("INSIGHTFACE_ROOT", str(tmp_path / "insightface"))
    monkeypatch.delenv("INSTANTPORTRAIT_BUFFALO_L", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["identity", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_same_person(capsys, photos):
    code, out, _ = run(capsys, photos["astronaut"], photos["mirror"], "--backend", "dlib", "--json")
    assert code == EXIT_OK
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert set(result) == {"similarity", "distance", "same_person", "backend"}
    assert result["same_person"] is True and result["backend"] == "dlib"
    assert 0.0 <= result["distance"] < 0.6 and 0.9 < result["similarity"] <= 1.0


def test_text_different_people_auto_is_dlib(capsys, photos):
    code, out, _ = run(capsys, photos["astronaut"], photos["hopper"])
    assert code == EXIT_OK
    assert "same person  no (distance < 0.6)" in out and "backend      dlib" in out
    assert "similarity" in out and "distance" in out


def test_no_face_exits_4(capsys, photos):
    code, out, err = run(capsys, photos["astronaut"], photos["blank"], "--json")
    assert code == EXIT_NO_FACE and out == ""
    assert "no face detected" in err and "blank.png" in err


@pytest.mark.parametrize("name", ["missing", "corrupt"])
def test_missing_or_corrupt_file_exits_2(capsys, photos, name):
    bad = photos["astronaut"].with_name("nope.png") if name == "missing" else photos[name]
    code, out, err = run(capsys, bad, photos["astronaut"], "--json")
    assert code == EXIT_INPUT and out == "" and str(bad) in err


def test_missing_insightface_pack_exits_3(capsys, photos):
    code, out, err = run(capsys, photos["astronaut"], photos["mirror"], "--backend", "insightface")
    assert code == EXIT_MODEL and out == "" and "buffalo_l" in err


def test_insightface_pack_has_no_distance(capsys, photos, tiny_face_pack):
    code, out, _ = run(capsys, photos["astronaut"], photos["astronaut"], "--backend", "insightface", "--pack",
                       tiny_face_pack, "--json")
    result = json.loads(out)
    assert code == EXIT_OK and result["distance"] is None and result["same_person"] is True
    assert result["backend"] == f"insightface:{tiny_face_pack.name}"


def test_toy_backend_only_when_named(capsys, photos):
    code, out, err = run(capsys, photos["astronaut"], photos["astronaut"], "--backend", "toy", "--json")
    assert code == EXIT_OK and json.loads(out)["backend"] == "toy:demo_face_pack" and "synthetic" in err


def test_parser_lists_identity():
    args = build_parser().parse_args(["identity", "a.png", "b.png"])
    assert (args.backend, args.json) == ("auto", False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["identity", "a.png", "b.png", "--backend", "arcface"])
