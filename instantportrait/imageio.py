"""Reading user images safely: any file or PIL mode in, an upright RGB image out, or one clear error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from instantportrait.errors import InvalidImageError

# The file endings every command treats as images (folders of portraits, frames, training sources).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Pillow's decompression-bomb guard stays on; beyond this many pixels we refuse before decoding.
MAX_PIXELS = 64_000_000


@dataclass
class LoadedImage:
    image: PIL.Image.Image  # RGB, EXIF orientation applied, at most `max_side` on the long side
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)  # what was changed, for the UI / CLI


def to_rgb(image: PIL.Image.Image, notes: list[str] | None = None) -> PIL.Image.Image:
    """Any PIL mode -> RGB. Alpha is composited on white; 16-bit and float images are rescaled to 8 bits."""
    notes = notes if notes is not None else []
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        notes.append(f"converted {mode} (high bit depth) to 8-bit RGB")
        return PIL.Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = PIL.Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        notes.append(f"flattened {mode} transparency onto white")
        return background
    notes.append(f"converted {mode} to RGB")
    return image.convert("RGB")


def prepare_image(image: PIL.Image.Image, max_side: int | None = None) -> LoadedImage:
    """Upright (EXIF), RGB, downscaled so the long side is at most ``max_side``."""
    notes: list[str] = []
    original = image.size
    if _orientation(image) not in (None, 1):
        image = PIL.ImageOps.exif_transpose(image)
        notes.append("applied EXIF orientation")
    image = to_rgb(image, notes)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        notes.append(f"downscaled from {image.width}x{image.height} to {new[0]}x{new[1]}")
        image = image.resize(new, PIL.Image.Resampling.LANCZOS)
    return LoadedImage(image=image, original_size=original, notes=notes)


def _orientation(image: PIL.Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:
        return None


def load_image(path: str | Path, max_side: int | None = None) -> LoadedImage:
    """Open and fully decode an image file; ``InvalidImageError`` (one line) for missing, non-image or corrupt."""
    path = Path(path)
    if not path.exists():
        raise InvalidImageError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidImageError(f"{path}: is a folder, not an image")
    try:
        with PIL.Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise InvalidImageError(f"{path}: {im.width}x{im.height} is too large (limit {MAX_PIXELS} pixels)")
            im.load()  # decode now so truncated files fail here, not mid-edit
            return prepare_image(im, max_side)
    except InvalidImageError:
        raise
    except PIL.Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{path}: refused, {exc}") from exc
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        kind = "not an image" if isinstance(exc, PIL.UnidentifiedImageError) else "corrupt or truncated image"
        raise InvalidImageError(f"{path}: {kind} ({type(exc).__name__})") from exc
