"""Example portraits and the poster's editing instructions, generated offline (no files shipped, no download).

Portraits come from two places:

* ``astronaut``: a crop of ``skimage.data.astronaut()`` (Eileen Collins, NASA, public domain), which ships inside
  scikit-image, so a real face is always at hand;
* ``drawn-*``: simple drawn portraits (head, hair, neck, shoulders, eyes, brows, mouth) in a few skin tones and
  backgrounds. Real face detectors may not see a face in them; they exist so that the demo and its tests have
  several distinct inputs without shipping images.

``write_examples(folder)`` writes the PNGs once and returns the example rows ``(portrait path, instruction)`` the app
shows under its inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

# The instructions shown on the paper's poster (verbatim, emphasis removed).
POSTER_INSTRUCTIONS: tuple[str, ...] = (
    "90s gamer yearbook photo, with headset, wearing 90's t-shirt, blue drape background",
    "Victorian Queen in elaborate royal clothing and delicate gemstone crown, depicted in a Rococo painting",
    "photorealistic photo, with hipster glasses, mustache, wearing plaid shirt, vintage tees",
    "Wearing 1920s flapper look, beaded dress, curl hair with a feathered headband featuring metallic details",
    "Cyberpunk character with unruly hair, wearing gritty riot gear, in a cyberpunk megacity",
    "A neonpunk and ultramodern aesthetic. Crisp and vibrant, with magenta highlights, dark purple shadows",
    "The Wolf God, with tribal face paint, wears a crown of wolf teeth and fur and leather armor and stands in a "
    "forest by wolves",
    "wearing a blue and black scuba diving suit and a red snorkel mask, smiling underwater in front of a coral reef",
    "A 90s computer geek yearbook photo featuring glasses, and a shirt with a pocket protector, in a blue-colored "
    "drape background",
)


# (skin, hair, shirt, background) RGB colours of the drawn portraits.
DRAWN_STYLES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "drawn-a": ((224, 172, 140), (60, 40, 30), (180, 60, 60), (70, 110, 160)),
    "drawn-b": ((198, 134, 96), (25, 20, 20), (60, 120, 80), (200, 200, 190)),
    "drawn-c": ((236, 188, 160), (170, 120, 60), (50, 70, 140), (120, 150, 120)),
    "drawn-d": ((178, 120, 86), (40, 30, 25), (230, 200, 80), (90, 80, 120)),
}


def astronaut_portrait(size: int = 320) -> PIL.Image.Image:
    """A square head-and-shoulders crop of ``skimage.data.astronaut()`` (the face is about 100 px wide at 320)."""
    from skimage.data import astronaut

    full = PIL.Image.fromarray(astronaut())  # 512x512 RGB
    crop = full.crop((65, 0, 385, 320))  # face box ~ (178, 75, 272, 185) lands near the centre
    return crop if size == 320 else crop.resize((size, size), PIL.Image.Resampling.LANCZOS)


def drawn_portrait(style: str = "drawn-a", size: int = 256) -> PIL.Image.Image:
    """A drawn head-and-shoulders portrait (``style`` is a key of :data:`DRAWN_STYLES`), RGB, ``size`` square."""
    try:
        skin, hair, shirt, background = DRAWN_STYLES[style]
    except KeyError:
        raise KeyError(f"unknown drawn style {style!r}; known: {', '.join(DRAWN_STYLES)}") from None
    img = PIL.Image.new("RGB", (size, size), background)
    d = PIL.ImageDraw.Draw(img)
    c, s = size / 2, size / 256

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [c + x0 * s, c + y0 * s, c + x1 * s, c + y1 * s]

    d.ellipse(box(-128, 88, 128, 260), fill=shirt)  # shoulders
    d.rectangle(box(-22, 50, 22, 110), fill=tuple(int(v * 0.9) for v in skin))  # neck, a little shaded
    d.ellipse(box(-66, -96, 66, 4), fill=hair)  # hair behind the top of the head
    d.ellipse(box(-60, -80, 60, 80), fill=skin)  # face
    d.chord(box(-62, -98, 62, -30), 180, 360, fill=hair)  # fringe
    for dx in (-23, 23):
        d.ellipse(box(dx - 9, -27, dx + 9, -13), fill=(245, 245, 245))  # eye white
        d.ellipse(box(dx - 5, -25, dx + 5, -15), fill=(30, 30, 30))  # iris
        d.line(box(dx - 11, -36, dx + 11, -38), fill=hair, width=max(1, round(3 * s)))  # brow
    d.line(box(0, -10, -5, 14), fill=tuple(int(v * 0.75) for v in skin), width=max(1, round(2 * s)))  # nose
    d.ellipse(box(-22, 34, 22, 50), fill=(150, 60, 60))  # mouth
    return img


def example_portraits() -> dict[str, PIL.Image.Image]:
    """Every example portrait by name: ``astronaut`` first, then the drawn ones."""
    out = {"astronaut": astronaut_portrait()}
    out.update({name: drawn_portrait(name) for name in DRAWN_STYLES})
    return out


def _save_once(image: PIL.Image.Image, path: Path) -> Path:
    """Write ``image`` to ``path`` unless it exists; atomic, so concurrent start-ups never read half a file."""
    if not path.is_file():
        tmp = path.with_suffix(".part.png")
        image.save(tmp)
        tmp.replace(path)
    return path


def write_examples(folder: str | Path) -> list[tuple[Path, str]]:
    """Write the example portraits as PNGs into ``folder`` and return the rows ``(portrait, instruction)``.

    Every poster instruction appears once; portraits are cycled, the real photo (``astronaut``) first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [_save_once(image, folder / f"{name}.png") for name, image in example_portraits().items()]
    return [(paths[i % len(paths)], text) for i, text in enumerate(POSTER_INSTRUCTIONS)]


def write_demo_world_examples(folder: str | Path, n: int = 6, size: int = 128) -> list[tuple[Path, str]]:
    """Examples for the toy demo models: ``n`` held-out *test* people of the demo world (the one the demo editors were
    scored on, never trained on) at ``size`` px with their own instructions, in the world's words (the only words a
    demo model was trained on). Rows ``(portrait path, instruction)``, one category after another."""
    from instantportrait.config import DEMO_WORLD
    from instantportrait.demo import World

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    world = World(**DEMO_WORLD, size=size)
    rows, seen = [], set()
    index = 0
    while len(rows) < n and index < 20 * n:  # one example per edit category first
        sample = world.sample("test", index)
        index += 1
        if sample.category in seen and len(seen) < 6:
            continue
        seen.add(sample.category)
        rows.append((_save_once(sample.source, folder / f"demo-world-{index - 1}.png"), sample.instruction))
    return rows


def two_faces(size: int = 256) -> PIL.Image.Image:
    """A drawn portrait and a smaller one side by side (``2 * size`` x ``size``): for 'several faces' handling."""
    canvas = PIL.Image.new("RGB", (2 * size, size), DRAWN_STYLES["drawn-a"][3])
    canvas.paste(drawn_portrait("drawn-a", size), (0, 0))
    small = drawn_portrait("drawn-a", size * 5 // 8)
    canvas.paste(small, (size + size // 8, (size - small.height) // 2))
    return canvas


def blank_image(size: int = 128, colour: tuple[int, int, int] = (235, 235, 235)) -> PIL.Image.Image:
    """A plain image with no face in it."""
    return PIL.Image.fromarray(np.full((size, size, 3), colour, np.uint8))
