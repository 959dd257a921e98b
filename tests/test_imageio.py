import io

import numpy as np
import PIL.Image
import pytest

from instantportrait.errors import InvalidImageError
from instantportrait.imageio import load_image, prepare_image, to_rgb


def rgb_image(w=40, h=30):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (200, 30, 30)  # left half red
    return PIL.Image.fromarray(arr)


def test_exif_orientation_is_applied(tmp_path):
    img = rgb_image()
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.image.size == (30, 40)
    assert "applied EXIF orientation" in loaded.notes
    top = np.asarray(loaded.image)[:5].mean(axis=(0, 1))
    assert top[0] > 150 and top[1] < 80, "red half must end up on top after a 90 degree clockwise turn"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode):
    src = rgb_image()
    img = src.convert(mode) if mode not in ("I;16",) else PIL.Image.fromarray(
        np.asarray(src.convert("L"), np.uint16) * 257)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == src.size


def test_sixteen_bit_is_rescaled_not_clipped():
    arr = np.full((8, 8), 65535, np.uint16)
    arr[:, :4] = 32768
    out = np.asarray(to_rgb(PIL.Image.fromarray(arr)))
    assert out[0, 7, 0] == 255 and 120 <= out[0, 0, 0] <= 135


def test_transparency_flattened_on_white():
    img = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    notes = []
    out = to_rgb(img, notes)
    assert np.asarray(out).min() == 255 and notes


def test_large_image_downscaled_with_size_stated():
    res = prepare_image(rgb_image(4000, 3000), max_side=1024)
    assert res.image.size == (1024, 768) and res.original_size == (4000, 3000)
    assert "downscaled from 4000x3000 to 1024x768" in res.notes


def test_bad_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    buf = io.BytesIO()
    rgb_image(200, 200).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:200])
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(InvalidImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="folder"):
        load_image(tmp_path)
