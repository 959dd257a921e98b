"""Procedural portrait renderer for the synthetic demo world: PIL polygons, supersampled, no assets, no fonts.

A portrait is drawn from three things:

* an :class:`Identity` (face shape, skin tone, eyes, brows, nose, mouth, ears, hair: what a person *is*),
* a :class:`Scene` (pose and scale jitter, lighting, the plain source backdrop, the colour of the source shirt: what
  varies from photo to photo of the same person),
* a tuple of :class:`Edit` (glasses, a hat, a beard, a plaid shirt, a forest, sepia, ...: what an instruction adds).

Rendering the same identity and scene with and without edits gives a source and its exact ground-truth target: the
same person in the same pose with only the edit applied. Pixels the edit does not cover are identical (before an
era/style edit, which recolours the whole photo by design).

Everything is drawn in *canvas units* (the image is the unit square) on a canvas ``supersample`` times larger than
the output and box-filtered down, so edges are anti-aliased at any output size. The face is laid out in *face units*
``(u, v)``: ``u = ±1`` at the cheeks, ``v = -1`` at the top of the skull, ``v = +1`` at the chin. Landmarks and the
face box are exact (computed from the geometry, not detected) in output pixel coordinates with pixel centres at
integers (the convention of insightface and ``instantportrait.training.losses.warp_affine``).

Rendering is deterministic: the same arguments give byte-identical images (no global random state is read; the
background layout draws from ``Scene.layout_seed``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RENDERER_VERSION = "synthetic-portrait/1"

RGB = tuple[int, int, int]
Point = tuple[float, float]

# ============================================================================================== vocabularies
# Skin tones from very light to very deep, roughly evenly spaced in lightness (a 10-step scale in the spirit of the
# Monk Skin Tone scale); each identity jitters its tone a little.
SKIN_TONES: dict[str, RGB] = {
    "porcelain": (247, 226, 212),
    "fair": (238, 205, 180),
    "light": (226, 186, 152),
    "light-medium": (212, 165, 125),
    "medium": (192, 142, 100),
    "olive": (172, 134, 90),
    "tan": (150, 104, 70),
    "brown": (120, 80, 54),
    "dark brown": (90, 58, 40),
    "deep brown": (62, 40, 30),
}
EYE_COLORS: dict[str, RGB] = {
    "dark brown": (58, 34, 20),
    "brown": (110, 64, 30),
    "hazel": (135, 112, 52),
    "amber": (185, 124, 40),
    "green": (62, 135, 70),
    "blue": (58, 112, 190),
    "grey": (125, 135, 148),
}
HAIR_COLORS: dict[str, RGB] = {
    "black": (24, 21, 22),
    "dark brown": (58, 37, 26),
    "brown": (104, 68, 42),
    "auburn": (138, 56, 32),
    "ginger": (196, 100, 46),
    "blonde": (220, 184, 112),
    "grey": (150, 150, 152),
    "white": (232, 231, 226),
}
FACE_SHAPES = ("oval", "round", "square", "long", "heart")
EYE_SHAPES = ("round", "almond", "narrow")
NOSE_SHAPES = ("button", "straight", "wide")
HAIR_STYLES = ("bald", "buzz", "short", "side_part", "bob", "long", "curly", "bun")
HAIR_STYLE_WORDS = {  # caption phrase, {colour} filled in (or dropped for colourless styles)
    "bald": "a bald head",
    "buzz": "buzz-cut {color}hair",
    "short": "short {color}hair",
    "side_part": "side-parted {color}hair",
    "bob": "a {color}bob haircut",
    "long": "long {color}hair",
    "curly": "big curly {color}hair",
    "bun": "{color}hair in a bun",
}
# Source photos: a plain studio backdrop and a collared shirt in muted colours. Edit colours below are disjoint from
# these, so "a red shirt" always changes the shirt.
BACKDROPS: dict[str, RGB] = {
    "light grey": (204, 204, 204),
    "beige": (222, 206, 180),
    "cream": (236, 229, 210),
    "sage": (182, 198, 172),
    "dusty pink": (218, 186, 186),
    "taupe": (178, 166, 154),
}
SOURCE_CLOTHING: dict[str, RGB] = {
    "grey": (122, 122, 128),
    "navy": (36, 46, 84),
    "charcoal": (56, 56, 62),
    "beige": (200, 180, 150),
    "olive": (102, 106, 60),
    "maroon": (112, 36, 46),
    "teal": (30, 106, 112),
    "brown": (106, 72, 46),
}
SHIRT_COLORS: dict[str, RGB] = {
    "red": (206, 36, 42),
    "blue": (40, 92, 214),
    "green": (40, 164, 72),
    "yellow": (242, 204, 40),
    "orange": (242, 132, 30),
    "pink": (242, 122, 174),
    "purple": (132, 60, 176),
    "white": (242, 242, 240),
}
HAT_COLORS: dict[str, RGB] = {
    "red": (200, 34, 40),
    "blue": (36, 84, 200),
    "green": (36, 150, 66),
    "yellow": (236, 196, 36),
    "orange": (236, 126, 28),
    "purple": (126, 56, 170),
    "black": (30, 30, 34),
}


@dataclass(frozen=True)
class EditDef:
    """One kind of edit the renderer can draw. ``slot``: edits in the same slot exclude each other."""

    name: str
    category: str  # accessory | facial_hair | clothing | background | style
    slot: str  # eyewear | headwear | facial_hair | clothing | background | style
    colors: tuple[str, ...] = ()  # the colour parameter's values; empty = the edit takes no colour


EDIT_DEFS: dict[str, EditDef] = {
    d.name: d
    for d in (
        EditDef("glasses", "accessory", "eyewear"),
        EditDef("sunglasses", "accessory", "eyewear"),
        EditDef("headset", "accessory", "headwear"),
        EditDef("hat", "accessory", "headwear", tuple(HAT_COLORS)),
        EditDef("mustache", "facial_hair", "facial_hair"),
        EditDef("beard", "facial_hair", "facial_hair"),
        EditDef("shirt_color", "clothing", "clothing", tuple(SHIRT_COLORS)),
        EditDef("plaid_shirt", "clothing", "clothing"),
        EditDef("tshirt", "clothing", "clothing"),
        EditDef("blue_drape", "background", "background"),
        EditDef("forest", "background", "background"),
        EditDef("underwater", "background", "background"),
        EditDef("yearbook", "style", "style"),
        EditDef("sepia", "style", "style"),
        EditDef("neon", "style", "style"),
    )
}
SLOTS = ("eyewear", "headwear", "facial_hair", "clothing", "background", "style")
CATEGORIES = ("accessory", "facial_hair", "clothing", "background", "style")


@dataclass(frozen=True)
class Edit:
    """One edit: a name from ``EDIT_DEFS`` and, for ``hat`` and ``shirt_color``, its colour."""

    name: str
    color: str | None = None

    def __post_init__(self) -> None:
        if self.name not in EDIT_DEFS:
            raise ValueError(f"unknown edit {self.name!r}; known: {sorted(EDIT_DEFS)}")
        colors = EDIT_DEFS[self.name].colors
        if colors and self.color not in colors:
            raise ValueError(f"edit {self.name!r} needs a colour from {list(colors)}, got {self.color!r}")
        if not colors and self.color is not None:
            raise ValueError(f"edit {self.name!r} takes no colour, got {self.color!r}")

    @property
    def definition(self) -> EditDef:
        return EDIT_DEFS[self.name]

    @property
    def key(self) -> str:
        """``"hat:red"`` or ``"glasses"``: a stable short name."""
        return f"{self.name}:{self.color}" if self.color else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "color": self.color, "category": self.definition.category,
                "slot": self.definition.slot}


def normalize_edits(edits: Iterable[Edit]) -> tuple[Edit, ...]:
    """Edits sorted by slot (the canonical order); raises ``ValueError`` if two edits share a slot."""
    by_slot: dict[str, Edit] = {}
    for edit in edits:
        if not isinstance(edit, Edit):
            raise TypeError(f"edits must be Edit objects, got {type(edit).__name__}")
        slot = edit.definition.slot
        if slot in by_slot and by_slot[slot] != edit:
            raise ValueError(f"edits {by_slot[slot].key!r} and {edit.key!r} both change the {slot}; pick one")
        by_slot[slot] = edit
    return tuple(by_slot[s] for s in SLOTS if s in by_slot)


# ============================================================================================== identity, scene
@dataclass(frozen=True)
class Identity:
    """What stays the same across every photo of one synthetic person. Lengths are in face units (see module doc)
    except ``face_width``/``face_height`` (half-axes in canvas units)."""

    identity_id: str
    index: int
    face_shape: str
    face_width: float
    face_height: float
    squareness: float  # superellipse exponent of the outline (2 = ellipse)
    jaw_taper: float  # narrowing of the lower face (heart > oval > round)
    skin_tone: str
    skin: RGB
    eye_shape: str
    eye_spacing: float  # eye centre |u|
    eye_height: float  # eye centre v
    eye_size: float  # eye half-width in u
    eye_tilt: float  # degrees, outer corner up > 0
    eye_color: str
    iris: RGB
    brow_thickness: float
    brow_arch: float
    brow_tilt: float
    brow_color: RGB
    nose_shape: str
    nose_height: float  # nose tip v
    nose_width: float
    mouth_height: float  # mouth v
    mouth_width: float  # corner |u|
    lip_thickness: float
    smile: float
    lip: RGB
    ear_size: float
    hair_style: str
    hair_color: str
    hair: RGB
    hair_part: int  # -1 or +1: which way a side part sweeps
    freckles: bool

    def attributes(self) -> dict[str, Any]:
        """JSON-serialisable attributes (floats rounded; colours as names and RGB lists)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float):
                value = round(value, 4)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def describe(self, *, colors: bool = True) -> list[str]:
        """Caption phrases: skin, face shape, hair, eyes (colour words dropped when ``colors`` is False)."""
        hair_color = f"{self.hair_color} " if colors else ""
        hair = HAIR_STYLE_WORDS[self.hair_style].format(color=hair_color)
        if colors:
            return [f"{self.skin_tone} skin", f"a {self.face_shape} face", hair, f"{self.eye_color} eyes"]
        return [f"a {self.face_shape} face", hair]


@dataclass(frozen=True)
class Scene:
    """What changes from photo to photo of one identity (shared by a source and its targets)."""

    dx: float = 0.0  # canvas units
    dy: float = 0.0
    scale: float = 1.0
    roll: float = 0.0  # degrees, counter-clockwise on screen
    yaw: float = 0.0  # shift of the inner face features in face units (a hint of a head turn)
    light_angle: float = 0.0  # radians; direction the light comes *from* in the image plane
    light_strength: float = 0.0  # 0 = flat light
    brightness: float = 1.0
    backdrop: str = "light grey"
    clothing: str = "grey"
    layout_seed: int = 0  # trees, fish, drape folds

    def __post_init__(self) -> None:
        if self.backdrop not in BACKDROPS:
            raise ValueError(f"unknown backdrop {self.backdrop!r}; known: {list(BACKDROPS)}")
        if self.clothing not in SOURCE_CLOTHING:
            raise ValueError(f"unknown source clothing colour {self.clothing!r}; known: {list(SOURCE_CLOTHING)}")
        if not 0.5 <= self.scale <= 1.5:
            raise ValueError(f"scale must be in [0.5, 1.5], got {self.scale}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Render:
    """A rendered portrait. ``bbox`` (x1, y1, x2, y2) bounds the face outline (skull top to chin, cheek to cheek);
    ``kps`` are the 5 landmarks (image-left eye, image-right eye, nose tip, left and right mouth corners), both in
    output pixel coordinates. ``masks`` (only when asked) are soft 'L' images at output size: ``person`` (all but
    the background), ``face`` (the face outline), ``hair``."""

    image: Image.Image
    bbox: tuple[float, float, float, float]
    kps: tuple[Point, Point, Point, Point, Point]
    masks: dict[str, Image.Image] = field(default_factory=dict)


# ============================================================================================== small helpers
def _mix(a: Sequence[float], b: Sequence[float], t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _shade(c: Sequence[float], f: float) -> RGB:
    """Multiply a colour (f < 1 darker) or move it toward white (f > 1)."""
    if f <= 1:
        return tuple(int(round(x * f)) for x in c)  # type: ignore[return-value]
    return _mix(c, (255, 255, 255), f - 1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32, start: float = 0.0,
             end: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(start, end, n, endpoint=(end - start) < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # (n, 2)


def _superellipse(rx: float, ry: float, exponent: float, n: int = 40, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = 2.0 / exponent
    return np.stack([cx + rx * np.sign(c) * np.abs(c) ** p, cy + ry * np.sign(s) * np.abs(s) ** p], axis=1)


class _Painter:
    """Draws polygons and lines given in canvas units, through the pose transform, onto the supersampled canvas
    (and onto named masks)."""

    def __init__(self, image: Image.Image, matrix: np.ndarray, mask_names: Iterable[str]) -> None:
        self.image = image
        self.px = image.width
        self.matrix = matrix  # (2, 3): canvas units -> supersampled pixel coordinates
        self.draw = ImageDraw.Draw(image)
        self.blend = ImageDraw.Draw(image, "RGBA")
        self.masks = {name: Image.new("L", image.size, 0) for name in mask_names}
        self.mask_draws = {name: ImageDraw.Draw(m) for name, m in self.masks.items()}

    def to_px(self, pts: np.ndarray) -> list[float]:
        out = pts @ self.matrix[:, :2].T + self.matrix[:, 2]  # (n, 2)
        return out.ravel().tolist()

    def polygon(self, pts: np.ndarray, fill: Sequence[int], masks: Sequence[str] = ("person",)) -> None:
        flat = self.to_px(pts)
        if len(fill) == 4:
            self.blend.polygon(flat, fill=tuple(fill))
        else:
            self.draw.polygon(flat, fill=tuple(fill))
        for name in masks:
            if name in self.mask_draws:
                self.mask_draws[name].polygon(flat, fill=255)

    def line(self, pts: np.ndarray, fill: Sequence[int], width: float, masks: Sequence[str] = ("person",)) -> None:
        """A polyline ``width`` canvas units thick with round joints and ends."""
        flat = self.to_px(pts)
        w = max(1, int(round(width * abs(np.linalg.det(self.matrix[:, :2])) ** 0.5)))  # canvas units -> pixels
        draws = [self.draw] + [self.mask_draws[m] for m in masks if m in self.mask_draws]
        for i, d in enumerate(draws):
            ink = tuple(fill) if i == 0 else 255
            d.line(flat, fill=ink, width=w, joint="curve")
            r = w / 2.0
            for x, y in (flat[:2], flat[-2:]):
                d.ellipse([x - r, y - r, x + r, y + r], fill=ink)


# ============================================================================================== geometry
class _Face:
    """Maps face units to canvas units for one identity in one scene, and builds the face's shapes."""

    CENTER = (0.5, 0.42)

    def __init__(self, ident: Identity, scene: Scene) -> None:
        self.ident = ident
        self.w, self.h = ident.face_width, ident.face_height
        self.yaw = scene.yaw

    def pt(self, u: Any, v: Any, depth: float = 0.0) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        x = self.CENTER[0] + (u + self.yaw * depth) * self.w
        y = self.CENTER[1] + v * self.h
        return np.stack(np.broadcast_arrays(x, y), axis=-1)

    def pts(self, uv: np.ndarray, depth: float = 0.0) -> np.ndarray:
        return self.pt(uv[:, 0], uv[:, 1], depth)

    def outline_uv(self, n: int = 64, scale_side: float = 1.0, scale_top: float = 1.0, t0: float = 0.0,
                   t1: float = 2 * math.pi) -> np.ndarray:
        """The face outline in face units, clockwise on screen from the image-right cheek (theta = 0) down round the
        chin; ``t0``/``t1`` select an arc."""
        ident = self.ident
        t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
        c, s = np.cos(t), np.sin(t)
        p = 2.0 / ident.squareness
        u = np.sign(c) * np.abs(c) ** p
        v = np.sign(s) * np.abs(s) ** p
        lower = v > 0
        u = np.where(lower, u * (1 - ident.jaw_taper * v**2), u)
        u = u * scale_side
        v = np.where(lower, v, v * scale_top)
        return np.stack([u, v], axis=1)

    def upper_contour_uv(self, grow_side: float, grow_top: float, below: float = 0.1, n: int = 40,
                         bumps: float = 0.0) -> np.ndarray:
        """The outline's upper half grown outward, from the image-left side (at v = ``below``) over the top to the
        image-right side. ``bumps`` adds curls."""
        p = 2.0 / self.ident.squareness
        delta = math.asin(min(0.99, below))
        t = np.linspace(math.pi - delta, 2 * math.pi + delta, n)
        c, s = np.cos(t), np.sin(t)
        u = np.sign(c) * np.abs(c) ** p * (1 + grow_side)
        v = np.sign(s) * np.abs(s) ** p * np.where(s < 0, 1 + grow_top, 1.0)
        if bumps:
            r = 1 + bumps * np.sin(t * 13)
            u, v = u * r, np.where(s < 0, v * r, v)
        return np.stack([u, v], axis=1)


def _pose_matrix(scene: Scene, px: int) -> np.ndarray:
    """(2, 3) map from canvas units to supersampled pixel coordinates (pixel centres at integers)."""
    a = math.radians(-scene.roll)  # screen y points down: negate for counter-clockwise on screen
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scene.scale
    pivot = np.array([0.5, 0.62])
    trans = pivot - rot @ pivot + np.array([scene.dx, scene.dy])
    m = np.concatenate([rot, trans[:, None]], axis=1) * px  # (2, 3)
    m[:, 2] -= 0.5
    return m


# ============================================================================================== backgrounds
def _smooth(arr: np.ndarray, px: int, out: int) -> Image.Image:
    """A small float (h, w, 3) array in 0-255 upsampled bilinearly to the output size, then by pixel repetition to
    the canvas (which the final box filter undoes exactly: smooth gradients need no supersampling)."""
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    img = img.resize((out, out), Image.Resampling.BILINEAR)
    return img.resize((px, px), Image.Resampling.NEAREST) if px != out else img


def _bg_plain(color: RGB, px: int, out: int) -> Image.Image:
    g = np.linspace(-1, 1, 24)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    f = 1.07 - 0.16 * (xx**2 + (yy + 0.2) ** 2)  # a soft studio spot behind the head
    return _smooth(np.asarray(color, np.float64) * f[..., None], px, out)


def _bg_drape(rng: np.random.Generator, px: int, out: int) -> Image.Image:
    x = np.linspace(0, 1, 96)
    ph = rng.uniform(0, 2 * math.pi, 3)
    folds = 0.78 + 0.16 * np.sin(2 * math.pi * 5.3 * x + ph[0]) + 0.07 * np.sin(2 * math.pi * 12.7 * x + ph[1])
    y = np.linspace(0, 1, 48)
    vert = 0.86 + 0.14 * np.sin(math.pi * y) + 0.03 * np.sin(2 * math.pi * 3 * y + ph[2])
    shade = vert[:, None] * folds[None, :]  # (48, 96)
    color = np.array([34, 68, 172], np.float64)
    img = color * shade[..., None] + 40 * np.clip(shade - 0.95, 0, None)[..., None]  # sheen on the fold crests
    return _smooth(img, px, out)


def _bg_forest(rng: np.random.Generator, px: int, out: int) -> Image.Image:
    y = np.linspace(0, 1, 32)[:, None, None]
    sky = np.array([214, 232, 224]) * (1 - y) + np.array([150, 190, 170]) * y
    img = _smooth(np.broadcast_to(sky, (32, 8, 3)).copy(), px, out)
    draw = ImageDraw.Draw(img)
    s = px

    def tree(x: float, base: float, height: float, width: float, color: RGB) -> None:
        trunk = (92, 62, 40)
        draw.rectangle([(x - width * 0.09) * s, (base - height * 0.2) * s, (x + width * 0.09) * s, base * s],
                       fill=_mix(trunk, color, 0.3))
        for k in range(3):  # three stacked tiers of a conifer
            top = base - height * (1.0 - 0.22 * k)
            bottom = base - height * (0.15 + 0.2 * (2 - k))
            half = width * (0.55 + 0.22 * k) / 2
            draw.polygon([(x * s, top * s), ((x - half) * s, bottom * s), ((x + half) * s, bottom * s)],
                         fill=_shade(color, 1 - 0.06 * k))

    for x in np.sort(rng.uniform(-0.05, 1.05, 14)):  # far row: pale, bluish
        tree(float(x), 0.78, float(rng.uniform(0.45, 0.6)), float(rng.uniform(0.12, 0.18)),
             _mix((70, 120, 90), (150, 190, 170), 0.45))
    for x in np.sort(rng.uniform(-0.05, 1.05, 9)):  # near row: dark green
        tree(float(x), 0.97, float(rng.uniform(0.6, 0.85)), float(rng.uniform(0.18, 0.26)),
             _mix((28, 84, 40), (50, 110, 50), float(rng.uniform(0, 1))))
    draw.rectangle([0, 0.9 * s, s, s], fill=(66, 104, 48))
    return img


def _bg_underwater(rng: np.random.Generator, px: int, out: int) -> Image.Image:
    y = np.linspace(0, 1, 32)[:, None, None]
    water = np.array([52, 178, 206]) * (1 - y) + np.array([12, 54, 112]) * y
    img = _smooth(np.broadcast_to(water, (32, 8, 3)).copy(), px, out)
    draw = ImageDraw.Draw(img, "RGBA")
    s = px
    for x0 in rng.uniform(0.0, 1.0, 4):  # light rays from the surface
        w0, slant = float(rng.uniform(0.04, 0.08)), float(rng.uniform(-0.25, 0.1))
        draw.polygon([(x0 * s, 0), ((x0 + w0) * s, 0), ((x0 + w0 * 2.5 + slant) * s, s), ((x0 + slant) * s, s)],
                     fill=(220, 250, 255, 38))
    for side in (0, 1):  # coral clusters in the bottom corners
        cx = 0.1 if side == 0 else 0.9
        for _ in range(7):
            bx = cx + float(rng.normal(0, 0.06))
            by = 0.86 + float(rng.uniform(0, 0.12))
            r = float(rng.uniform(0.035, 0.07))
            col = [(246, 110, 120), (250, 160, 70), (236, 96, 170)][int(rng.integers(3))]
            draw.ellipse([(bx - r) * s, (by - r * 1.4) * s, (bx + r) * s, (by + r) * s], fill=col + (255,))
    for _ in range(3):  # fish near the top corners
        fx = float(rng.choice([rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95)]))
        fy = float(rng.uniform(0.12, 0.5))
        d = 1 if rng.uniform() < 0.5 else -1
        col = [(250, 170, 40), (250, 220, 60), (250, 120, 60)][int(rng.integers(3))]
        draw.ellipse([(fx - 0.04) * s, (fy - 0.022) * s, (fx + 0.04) * s, (fy + 0.022) * s], fill=col + (255,))
        draw.polygon([((fx - d * 0.035) * s, fy * s), ((fx - d * 0.07) * s, (fy - 0.025) * s),
                      ((fx - d * 0.07) * s, (fy + 0.025) * s)], fill=col + (255,))
    for _ in range(10):  # bubbles
        bx, by, r = float(rng.uniform(0.02, 0.98)), float(rng.uniform(0.02, 0.7)), float(rng.uniform(0.006, 0.016))
        draw.ellipse([(bx - r) * s, (by - r) * s, (bx + r) * s, (by + r) * s], outline=(235, 250, 255, 170),
                     width=max(1, int(px / 200)))
    return img


def _background(edit: Edit | None, scene: Scene, px: int, out: int) -> Image.Image:
    rng = np.random.default_rng([scene.layout_seed, 7])
    if edit is None:
        return _bg_plain(BACKDROPS[scene.backdrop], px, out)
    if edit.name == "blue_drape":
        return _bg_drape(rng, px, out)
    if edit.name == "forest":
        return _bg_forest(rng, px, out)
    return _bg_underwater(rng, px, out)


# ============================================================================================== person
def _hair_shapes(face: _Face) -> tuple[list[np.ndarray], list[np.ndarray], float, float, float]:
    """(back polygons, front polygons) in face units, the cap's extra (side, top) volume and the extra height of
    anything on top of the cap (a bun)."""
    ident = face.ident
    style = ident.hair_style
    if style == "bald":
        return [], [], 0.0, 0.0, 0.0
    params = {  # grow_side, grow_top, hairline v at the centre, curls
        "buzz": (0.03, 0.05, -0.64, 0.0),
        "short": (0.07, 0.17, -0.58, 0.0),
        "side_part": (0.08, 0.2, -0.6, 0.0),
        "bob": (0.2, 0.2, -0.36, 0.0),
        "long": (0.16, 0.16, -0.66, 0.0),
        "curly": (0.34, 0.42, -0.5, 0.045),
        "bun": (0.04, 0.07, -0.62, 0.0),
    }[style]
    gs, gt, hl, bumps = params
    back: list[np.ndarray] = []
    phi = np.linspace(0, math.pi, 25)  # hairline from the image-right temple over the forehead to the left
    shape = np.sin(phi) ** (0.35 if style == "bob" else 1.0)
    asym = 0.28 * ident.hair_part * np.cos(phi) * np.sin(phi) if style == "side_part" else 0.0
    hairline = np.stack([0.96 * np.cos(phi), -0.08 + (hl + 0.08) * shape + asym], axis=1)
    if style in ("bob", "long"):
        drop = 0.85 if style == "bob" else 1.95
        outer = face.upper_contour_uv(gs, gt, below=0.05)
        side = 1 + gs
        inner = 0.86 if style == "bob" else 0.84
        front = np.concatenate([
            outer,
            [[side, drop - 0.1], [side + 0.05, drop], [inner, drop], [inner, 0.1]],
            hairline,
            [[-inner, 0.1], [-inner, drop], [-side - 0.05, drop], [-side, drop - 0.1]],
        ])
        back.append(np.concatenate([outer, [[side + 0.05, drop], [-side - 0.05, drop]]]))
    else:
        outer = face.upper_contour_uv(gs, gt, below=0.12, bumps=bumps)
        front = np.concatenate([outer, hairline])
    if style == "curly":
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        r = 1 + 0.05 * np.sin(13 * t)
        back.append(np.stack([1.42 * r * np.cos(t), -0.25 + 1.3 * r * np.sin(t)], axis=1))
    if style == "bun":
        back.append(_ellipse(0.0, -1.2, 0.42, 0.36, 28))
    return back, [front], gs, gt, (0.5 if style == "bun" else 0.0)


def _eye_uv(ident: Identity, n: int = 24) -> np.ndarray:
    """One eye's opening in face units, centred at 0 (u to the image right, v down)."""
    rx = ident.eye_size
    ry = rx * {"round": 0.62, "almond": 0.46, "narrow": 0.3}[ident.eye_shape] * ident.face_width / ident.face_height
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, s = rx * np.cos(t), np.sin(t)
    if ident.eye_shape == "round":
        y = ry * s
    else:  # pointed corners: the lids meet at an angle
        y = ry * np.sign(s) * np.abs(s) ** 0.8 * np.where(s < 0, 1.0, 0.75)
    return np.stack([x, y], axis=1)


def _rotate(pts: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T


def _luma_of(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _facial_hair_color(ident: Identity) -> RGB:
    """The hair colour, darkened until its lightness differs from the skin's (a blonde beard on light skin reads
    poorly); hair as dark as the skin keeps its colour and relies on the strand texture."""
    base = ident.brow_color if ident.hair_style == "bald" else ident.hair
    f = 0.85
    while abs(_luma_of(_shade(base, f)) - _luma_of(ident.skin)) < 55 and f > 0.45:
        f -= 0.05
    return _shade(base, f)


def _texture_color(color: RGB) -> RGB:
    """Strands drawn over facial hair: lighter on dark hair, darker on light hair."""
    return _mix(color, (255, 255, 255), 0.14) if _luma_of(color) < 80 else _shade(color, 0.82)


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test: (N, 2) points, (M, 2) polygon -> (N,) bool."""
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    x0, y0 = poly[:, 0], poly[:, 1]  # (M,)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)  # (N, M)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return ((crosses & (x < xi)).sum(1) % 2) == 1


def _strands(p: _Painter, face: _Face, region: np.ndarray, candidates: np.ndarray, color: RGB,
             depth: float) -> None:
    """Short strokes at the candidate points (face units) that fall inside ``region``, away from the lips."""
    ident = face.ident
    keep = _inside(candidates, region)
    du, dv = candidates[:, 0] / ident.mouth_width, (candidates[:, 1] - ident.mouth_height) / 0.13
    keep &= du**2 + dv**2 > 1.3**2
    ink = _texture_color(color)
    for u, v in candidates[keep]:
        stroke = np.array([[u, v], [u + 0.03 * np.sign(u), v + 0.07]])
        p.line(face.pts(stroke, depth), ink, 0.011 * face.w / 0.15)


def _draw_mouth(p: _Painter, face: _Face) -> tuple[Point, Point]:
    ident = face.ident
    mw, mv, lt, sm = ident.mouth_width, ident.mouth_height, ident.lip_thickness, ident.smile
    x = np.linspace(-1, 1, 15)
    line_v = mv - sm * (x**2) * 0.1  # corners lift with a smile
    upper_top = line_v - lt * (0.75 - 0.25 * np.cos(x * math.pi * 1.5) ** 2) * (1 - x**2) ** 0.5
    lower_bot = line_v + lt * 1.25 * (1 - x**2) ** 0.6
    u = x * mw
    upper = np.concatenate([np.stack([u, upper_top], 1), np.stack([u, line_v], 1)[::-1]])
    lower = np.concatenate([np.stack([u, line_v], 1), np.stack([u, lower_bot], 1)[::-1]])
    p.polygon(face.pts(upper, 0.6), _shade(ident.lip, 0.88))
    p.polygon(face.pts(lower, 0.6), ident.lip)
    p.line(face.pts(np.stack([u, line_v], 1), 0.6), _shade(ident.lip, 0.45), 0.012 * face.w / 0.15)
    left, right = face.pt(-mw, line_v[0], 0.6), face.pt(mw, line_v[-1], 0.6)
    return (float(left[0]), float(left[1])), (float(right[0]), float(right[1]))


def _draw_mustache(p: _Painter, face: _Face, color: RGB) -> None:
    ident = face.ident
    mw, mv, lt = ident.mouth_width * 1.45, ident.mouth_height, ident.lip_thickness
    x = np.linspace(-1, 1, 17)
    top = mv - lt * 0.7 - 0.2 + 0.09 * x**2
    bottom = mv - lt * 0.55 + 0.1 * np.abs(x) ** 3 - 0.02 * (1 - x**2)
    pts = np.concatenate([np.stack([x * mw, top], 1), np.stack([x * mw * 1.05, bottom], 1)[::-1]])
    p.polygon(face.pts(pts, 0.6), color)
    us = np.linspace(-0.75, 0.75, 6) * mw
    ink = _texture_color(color)
    for u in us:
        v = mv - lt * 0.7 - 0.17 + 0.09 * (u / mw) ** 2
        p.line(face.pts(np.array([[u, v], [u + 0.02 * np.sign(u), v + 0.08]]), 0.6), ink, 0.011 * face.w / 0.15)


def _draw_beard(p: _Painter, face: _Face, color: RGB) -> None:
    ident = face.ident
    lower = face.outline_uv(64, scale_side=1.05, t0=-0.06, t1=math.pi + 0.06)  # right cheek, chin, left cheek
    chin_grow = np.clip(lower[:, 1] - 0.6, 0, None) * 0.35  # a little volume below the chin
    lower = lower + np.stack([np.zeros_like(chin_grow), chin_grow], 1)
    u = np.linspace(-0.98, 0.98, 17)  # the inner edge, left to right: cheek line dipping to just under the nose
    v = np.minimum(0.4 * (1 - u**2), ident.nose_height + 0.1)
    region = np.concatenate([lower, np.stack([u, v], 1)])
    p.polygon(face.pts(region, 0.2), color)
    gu, gv = np.meshgrid(np.linspace(-0.9, 0.9, 9), np.linspace(0.15, 1.05, 6))
    gu = gu + np.where(np.arange(6)[:, None] % 2 == 1, 0.1, 0.0)  # staggered rows
    _strands(p, face, region, np.stack([gu.ravel(), gv.ravel()], 1), color, 0.2)


def _draw_eyes(p: _Painter, face: _Face) -> list[np.ndarray]:
    """Eyes (white, iris, pupil, glint, lash line) and brows; returns the two eye centres in canvas units."""
    ident = face.ident
    eye = _eye_uv(ident)
    kps_eyes = []
    for sgn in (-1, 1):
        cu, cv = sgn * ident.eye_spacing, ident.eye_height
        opening = _rotate(eye, -sgn * ident.eye_tilt) + [cu, cv]
        p.polygon(face.pts(opening, 0.5), (238, 236, 230))
        ry = float(-eye[:, 1].min())  # upper lid height in v units
        iris_scale = face.h / face.w  # u units per v unit on screen: circles need rv = ru / iris_scale
        r_iris = min(0.55 * ident.eye_size, 0.95 * ry * iris_scale)
        p.polygon(face.pts(_ellipse(cu, cv, r_iris, r_iris / iris_scale, 20), 0.5), ident.iris)
        p.polygon(face.pts(_ellipse(cu, cv, r_iris * 0.45, r_iris * 0.45 / iris_scale, 14), 0.5), (12, 10, 10))
        p.polygon(face.pts(_ellipse(cu + r_iris * 0.3, cv - r_iris * 0.35 / iris_scale, r_iris * 0.2,
                                    r_iris * 0.2 / iris_scale, 8), 0.5), (250, 250, 250))
        upper = opening[opening[:, 1] <= cv + 1e-9]
        upper = upper[np.argsort(upper[:, 0])]
        p.line(face.pts(upper, 0.5), (28, 22, 22), 0.011 * face.w / 0.15)
        kps_eyes.append(face.pt(cu, cv, 0.5))
        # eyebrow: a tapered arc
        bx = np.linspace(-1, 1, 11)  # -1 at the inner end, +1 at the outer end
        bu = cu + sgn * bx * ident.eye_size * 1.25
        bv = cv - 0.24 - ident.brow_arch * (1 - bx**2) - bx * ident.eye_size * 1.25 * ident.brow_tilt
        thick = ident.brow_thickness * (1.0 - 0.45 * (bx + 1) / 2)
        brow = np.concatenate([np.stack([bu, bv - thick / 2], 1), np.stack([bu, bv + thick / 2], 1)[::-1]])
        p.polygon(face.pts(brow, 0.45), ident.brow_color)
    return kps_eyes


def _draw_nose(p: _Painter, face: _Face, scene: Scene) -> np.ndarray:
    """A shaded bridge, the tip and nostrils; returns the nose tip in canvas units."""
    ident, skin = face.ident, face.ident.skin
    nv, nw = ident.nose_height, ident.nose_width
    side = -1 if math.cos(scene.light_angle) > 0 else 1  # shadow on the side away from the light
    top = {"button": nv - 0.2, "straight": nv - 0.38, "wide": nv - 0.26}[ident.nose_shape]
    bridge = np.array([[side * 0.1, top], [side * (nw * 0.55), nv - 0.02], [side * nw * 0.4, nv + 0.02],
                       [side * 0.04, top + 0.02]])
    p.polygon(face.pts(bridge, 0.8), _shade(skin, 0.9))
    tip_r = {"button": 0.15, "straight": 0.11, "wide": 0.14}[ident.nose_shape] * (nw / 0.3)
    p.polygon(face.pts(_ellipse(0, nv - 0.01, tip_r, tip_r * 0.7, 16), 1.0), _shade(skin, 0.95))
    for sgn in (-1, 1):
        p.polygon(face.pts(_ellipse(sgn * nw * 0.42, nv + 0.05, nw * 0.18, 0.035, 12), 0.9), _shade(skin, 0.55))
    nose_tip = face.pt(0, nv, 1.0)
    return nose_tip


def _draw_person(p: _Painter, ident: Identity, scene: Scene, slots: dict[str, Edit]) -> tuple[np.ndarray, np.ndarray]:
    """Draws everything but the background; returns (face outline, 5 landmarks) in canvas units."""
    face = _Face(ident, scene)
    skin = ident.skin
    back, front, hair_gs, hair_gt, hair_extra = _hair_shapes(face)
    hair_masks = ("person", "hair")
    hair_col = _mix(ident.hair, skin, 0.45) if ident.hair_style == "buzz" else ident.hair
    for poly in back:
        p.polygon(face.pts(poly), _shade(hair_col, 0.82), hair_masks)

    # neck and clothing
    neck = np.array([[-0.42, 0.55], [0.42, 0.55], [0.5, 1.75], [-0.5, 1.75]])
    p.polygon(face.pts(neck), _shade(skin, 0.84))
    clothing = slots.get("clothing")
    _draw_clothing(p, face, scene, clothing)
    if ident.hair_style == "long":  # strands falling over the shoulders
        for sgn in (-1, 1):
            strand = np.array([[0.84, 0.9], [1.2, 0.9], [1.3, 1.95], [1.05, 2.05], [0.86, 1.9]]) * [sgn, 1]
            p.polygon(face.pts(strand), hair_col, hair_masks)

    # ears, face
    for sgn in (-1, 1):
        ear = _ellipse(sgn * 0.98, 0.08, 0.17 * ident.ear_size, 0.3 * ident.ear_size, 20)
        p.polygon(face.pts(ear), _shade(skin, 0.93))
        p.polygon(face.pts(_ellipse(sgn * 1.0, 0.08, 0.08 * ident.ear_size, 0.18 * ident.ear_size, 16)),
                  _shade(skin, 0.78))
    outline = face.pts(face.outline_uv(72))
    p.polygon(outline, skin, ("person", "face"))
    # soft cheek shading and blush
    for sgn in (-1, 1):
        p.polygon(face.pts(_ellipse(sgn * 0.55, 0.32, 0.22, 0.13, 20), 0.3), _mix(skin, (220, 90, 90), 0.08))
    if ident.freckles:
        rng = np.random.default_rng([ident.index, 99])
        dots = rng.uniform([-0.7, 0.12], [0.7, 0.38], size=(14, 2))
        dots = dots[np.abs(dots[:, 0]) > 0.2]
        for u, v in dots:
            p.polygon(face.pts(_ellipse(u, v, 0.025, 0.02, 8), 0.3), _shade(skin, 0.78))

    kps_eyes = _draw_eyes(p, face)
    nose_tip = _draw_nose(p, face, scene)

    facial_hair = slots.get("facial_hair")
    fh_color = _facial_hair_color(ident)
    if facial_hair is not None and facial_hair.name == "beard":
        _draw_beard(p, face, fh_color)
    left_mouth, right_mouth = _draw_mouth(p, face)
    if facial_hair is not None:
        _draw_mustache(p, face, fh_color)

    for poly in front:
        p.polygon(face.pts(poly), hair_col, hair_masks)
    if front and ident.hair_style != "buzz":  # a sheen across the top
        sheen = face.upper_contour_uv(hair_gs * 0.6, hair_gt * 0.55, below=-0.6, n=16)
        inner = sheen[::-1] * [0.9, 0.93]
        p.polygon(face.pts(np.concatenate([sheen, inner])), _shade(hair_col, 1.12), hair_masks)

    eyewear = slots.get("eyewear")
    if eyewear is not None:
        _draw_eyewear(p, face, eyewear.name)
    headwear = slots.get("headwear")
    if headwear is not None:
        _draw_headwear(p, face, headwear, hair_gs, hair_gt, hair_extra)

    kps = np.stack([kps_eyes[0], kps_eyes[1], nose_tip, np.array(left_mouth), np.array(right_mouth)])  # (5, 2)
    return outline, kps


def _draw_clothing(p: _Painter, face: _Face, scene: Scene, edit: Edit | None) -> None:
    # a torso in canvas units relative to the head, reaching below the frame so that pose jitter shows no gap
    cx = face.CENTER[0]
    neck_y = face.CENTER[1] + 1.42 * face.h
    body = np.array([
        [cx - 0.07, neck_y - 0.01], [cx - 0.2, neck_y + 0.03], [cx - 0.31, neck_y + 0.08], [cx - 0.37, neck_y + 0.16],
        [cx - 0.45, 1.4], [cx + 0.45, 1.4], [cx + 0.37, neck_y + 0.16], [cx + 0.31, neck_y + 0.08],
        [cx + 0.2, neck_y + 0.03], [cx + 0.07, neck_y - 0.01],
    ])
    name = edit.name if edit is not None else None
    if name == "shirt_color":
        color = SHIRT_COLORS[edit.color]  # type: ignore[index]
    elif name == "tshirt":
        color = (226, 214, 188)
    elif name == "plaid_shirt":
        color = (178, 32, 38)
    else:
        color = SOURCE_CLOTHING[scene.clothing]
    p.polygon(body, color)
    if name == "plaid_shirt":
        _plaid(p, body)
    # arm creases
    for sgn in (-1, 1):
        crease = np.array([[cx + sgn * 0.3, neck_y + 0.2], [cx + sgn * 0.32, 1.1]])
        p.line(crease, _shade(color, 0.8), 0.008)
    if name == "tshirt":  # crew neck and a faded sunset print
        collar = np.array([[cx - 0.085, neck_y - 0.012], [cx - 0.06, neck_y + 0.025], [cx, neck_y + 0.04],
                           [cx + 0.06, neck_y + 0.025], [cx + 0.085, neck_y - 0.012]])
        p.polygon(collar, _shade(face.ident.skin, 0.84))
        p.line(collar, _shade(color, 0.8), 0.018)
        gy = neck_y + 0.16
        p.polygon(_ellipse(cx, gy, 0.075, 0.075, 28), (236, 132, 54))
        p.polygon(_ellipse(cx, gy - 0.02, 0.05, 0.05, 24), (244, 196, 70))
        for k in range(3):
            yk = gy + 0.01 + 0.022 * k
            p.line(np.array([[cx - 0.08, yk], [cx + 0.08, yk]]), color, 0.009)
    else:  # a V neckline with a collar
        vee = np.array([[cx - 0.075, neck_y - 0.012], [cx, neck_y + 0.08], [cx + 0.075, neck_y - 0.012]])
        p.polygon(vee, _shade(face.ident.skin, 0.84))
        collar_col = _shade(color, 1.18) if sum(color) < 450 else _shade(color, 0.86)
        for sgn in (-1, 1):
            flap = np.array([[cx + sgn * 0.085, neck_y - 0.03], [cx + sgn * 0.005, neck_y + 0.085],
                             [cx + sgn * 0.12, neck_y + 0.05]])
            p.polygon(flap, collar_col)


def _plaid(p: _Painter, body: np.ndarray) -> None:
    """Overlay a red-black tartan on the torso polygon: translucent stripes drawn as polygons through the pose
    transform (so the pattern turns with the person), clipped to the torso."""
    px = p.px
    layer = Image.new("RGB", (px, px), (182, 30, 36))
    draw = ImageDraw.Draw(layer, "RGBA")
    period = 0.085
    x0, x1 = float(body[:, 0].min()) - period, float(body[:, 0].max()) + period
    y0, y1 = float(body[:, 1].min()) - period, min(float(body[:, 1].max()), 1.3) + period
    for k in range(int(math.floor(x0 / period)), int(math.ceil(x1 / period)) + 1):
        for start, width, ink in ((0.0, 0.32, (0, 0, 0, 107)), (0.62, 0.08, (235, 215, 200, 140))):
            a, b = (k + start) * period, (k + start + width) * period
            draw.polygon(p.to_px(np.array([[a, y0], [b, y0], [b, y1], [a, y1]])), fill=ink)
    for k in range(int(math.floor(y0 / period)), int(math.ceil(y1 / period)) + 1):
        for start, width, ink in ((0.0, 0.32, (0, 0, 0, 107)), (0.62, 0.08, (235, 215, 200, 140))):
            a, b = (k + start) * period, (k + start + width) * period
            draw.polygon(p.to_px(np.array([[x0, a], [x1, a], [x1, b], [x0, b]])), fill=ink)
    mask = Image.new("L", (px, px), 0)
    ImageDraw.Draw(mask).polygon(p.to_px(body), fill=255)
    p.image.paste(layer, (0, 0), mask)


def _draw_eyewear(p: _Painter, face: _Face, name: str) -> None:
    ident = face.ident
    lw = max(0.27, ident.eye_size * 1.5)
    lh = lw * 0.62 * face.w / face.h
    cv = ident.eye_height
    frame = (22, 18, 18)
    if name == "glasses":
        thick = 0.1 * face.w
        for sgn in (-1, 1):
            lens = _superellipse(lw, lh, 4.0, 36, cx=sgn * ident.eye_spacing, cy=cv)
            p.line(face.pts(np.concatenate([lens, lens[:1]]), 0.5), frame, thick)
            glint = np.array([[sgn * ident.eye_spacing + lw * 0.35, cv - lh * 0.6],
                              [sgn * ident.eye_spacing + lw * 0.6, cv - lh * 0.2]])
            p.line(face.pts(glint, 0.5), (250, 250, 250), thick * 0.35)
        bridge = np.array([[-ident.eye_spacing + lw, cv - lh * 0.3], [0, cv - lh * 0.45],
                           [ident.eye_spacing - lw, cv - lh * 0.3]])
        p.line(face.pts(bridge, 0.5), frame, thick * 0.8)
        for sgn in (-1, 1):
            arm = np.array([[sgn * (ident.eye_spacing + lw), cv - lh * 0.3], [sgn * 1.0, cv - 0.08]])
            p.line(face.pts(arm, 0.3), frame, thick * 0.8)
    else:  # aviator sunglasses: dark lenses, thin gold frame
        thin = 0.045 * face.w
        metal = (196, 164, 84)
        for sgn in (-1, 1):
            t = np.linspace(0, 2 * math.pi, 36, endpoint=False)
            cu = sgn * ident.eye_spacing
            u = cu + lw * 1.05 * np.cos(t) + sgn * 0.06 * np.clip(np.sin(t), 0, None)
            v = cv + lh * 1.15 * np.sin(t) * np.where(np.sin(t) > 0, 1.25, 0.8)
            lens = np.stack([u, v], 1)
            p.polygon(face.pts(lens, 0.5), (26, 30, 38))
            p.polygon(face.pts(np.stack([cu + (u - cu) * 0.6, cv + (v - cv) * 0.6 - lh * 0.3], 1)[6:14], 0.5),
                      (90, 100, 120))
            p.line(face.pts(np.concatenate([lens, lens[:1]]), 0.5), metal, thin)
        for dv in (-0.55, -0.1):
            bridge = np.array([[-ident.eye_spacing + lw, cv + lh * dv], [ident.eye_spacing - lw, cv + lh * dv]])
            p.line(face.pts(bridge, 0.5), metal, thin)
        for sgn in (-1, 1):
            arm = np.array([[sgn * (ident.eye_spacing + lw * 1.05), cv - lh * 0.5], [sgn * 1.0, cv - 0.08]])
            p.line(face.pts(arm, 0.3), metal, thin)


def _draw_headwear(p: _Painter, face: _Face, edit: Edit, hair_gs: float, hair_gt: float, hair_extra: float) -> None:
    if edit.name == "hat":
        color = HAT_COLORS[edit.color]  # type: ignore[index]
        vb = -0.68
        half = 1.06 + hair_gs
        top = max(-1.7, -(1.0 + hair_gt + hair_extra) - 0.3)
        crown = np.array([[-half, vb], [-half * 0.9, top + 0.15], [-half * 0.7, top], [0, top + 0.06],
                          [half * 0.7, top], [half * 0.9, top + 0.15], [half, vb]])
        p.polygon(face.pts(crown), color)
        band = np.array([[-half * 0.99, vb - 0.28], [half * 0.99, vb - 0.28], [half, vb], [-half, vb]])
        p.polygon(face.pts(band), _shade(color, 0.55) if sum(color) > 150 else (120, 30, 40))
        p.polygon(face.pts(_ellipse(0, vb, half + 0.62, 0.16, 40)), _shade(color, 0.9))
        p.polygon(face.pts(_ellipse(0, vb - 0.03, half + 0.5, 0.08, 40, math.pi, 2 * math.pi)), _shade(color, 1.1))
    else:  # a gaming headset: band over the head, ear cups, microphone boom
        dark, accent = (40, 40, 46), (0, 176, 176)
        band = face.upper_contour_uv(hair_gs + 0.06, hair_gt + 0.06, below=-0.05, n=32)
        p.line(face.pts(band), dark, 0.13 * face.w)
        for sgn in (-1, 1):
            cu = sgn * (1.02 + hair_gs * 0.5)
            p.polygon(face.pts(_ellipse(cu, 0.05, 0.24, 0.34, 28)), dark)
            p.polygon(face.pts(_ellipse(cu + sgn * 0.04, 0.05, 0.13, 0.2, 20)), accent)
        boom = np.array([[-1.0, 0.25], [-0.98, 0.5], [-0.86, 0.66], [-0.6, 0.7]])
        p.line(face.pts(boom), dark, 0.06 * face.w)
        p.polygon(face.pts(_ellipse(-0.55, 0.7, 0.09, 0.07, 14)), (20, 20, 24))


# ============================================================================================== styles, light
def _luma(arr: np.ndarray) -> np.ndarray:
    return arr @ np.array([0.299, 0.587, 0.114])  # (H, W)


def _vignette(size: int, strength: float) -> np.ndarray:
    g = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    return 1 - strength * np.clip(xx**2 + yy**2 - 0.35, 0, None)  # (H, W)


def _apply_style(arr: np.ndarray, style: str, person: np.ndarray | None) -> np.ndarray:
    """``arr``: (H, W, 3) float 0-255 -> styled (H, W, 3)."""
    size = arr.shape[0]
    lum = _luma(arr)
    if style == "yearbook":  # grayscale, a little contrast, a soft vignette: all channels equal
        g = np.clip((lum - 128) * 1.12 + 132, 0, 255) * _vignette(size, 0.35)
        g = np.round(np.clip(g, 0, 255))
        return np.repeat(g[..., None], 3, axis=2)
    if style == "sepia":
        t = np.clip((lum - 128) * 1.15 + 128, 0, 255)[..., None] / 255.0
        dark, light = np.array([46, 28, 14]), np.array([248, 228, 186])
        out = dark + (light - dark) * (0.04 + 0.94 * t)
        return out * _vignette(size, 0.45)[..., None]
    # neon: split tone into magenta / cyan, darkened surroundings, a glowing rim around the person
    assert person is not None
    t = np.clip(lum / 255.0, 0, 1)[..., None] ** 0.9
    x = np.linspace(0, 1, size)[None, :, None]
    hi = np.array([255, 70, 200]) * (1 - x) + np.array([60, 220, 255]) * x
    shadow = np.array([26, 8, 58])
    out = shadow + (hi - shadow) * t
    m = person[..., None]
    out = out * (0.45 + 0.55 * m)
    blur = np.asarray(Image.fromarray((person * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius=max(1.0, size / 48))), np.float64) / 255.0
    rim = np.clip(blur - person, 0, None)[..., None] * 2.5
    out = out + rim * (np.array([255, 40, 210]) - out).clip(0, None)
    return out


def _lighting(arr: np.ndarray, scene: Scene) -> np.ndarray:
    if scene.light_strength == 0 and scene.brightness == 1:
        return arr
    size = arr.shape[0]
    g = np.linspace(-0.5, 0.5, size)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    # brighter toward where the light comes from
    ramp = -(xx * math.cos(scene.light_angle) + yy * math.sin(scene.light_angle))
    return arr * (scene.brightness * (1 + scene.light_strength * ramp))[..., None]


# ============================================================================================== entry point
def render_portrait(identity: Identity, scene: Scene, edits: Iterable[Edit] = (), *, size: int = 128,
                    supersample: int = 4, masks: bool = False) -> Render:
    """Render ``identity`` in ``scene`` with ``edits`` applied at ``size`` x ``size`` pixels.

    ``supersample``: the canvas is drawn ``supersample`` times larger and box-filtered down (anti-aliasing).
    ``masks``: also return soft ``person``/``face``/``hair`` masks at output size.
    """
    if not isinstance(size, int) or size < 32 or size > 1024:
        raise ValueError(f"size must be an int in [32, 1024], got {size!r}")
    if not isinstance(supersample, int) or not 1 <= supersample <= 8:
        raise ValueError(f"supersample must be an int in [1, 8], got {supersample!r}")
    slots = {e.definition.slot: e for e in normalize_edits(edits)}
    px = size * supersample
    style = slots.get("style")
    mask_names = ("person", "face", "hair") if masks else (("person",) if style and style.name == "neon" else ())
    canvas = _background(slots.get("background"), scene, px, size)
    matrix = _pose_matrix(scene, px)
    painter = _Painter(canvas, matrix, mask_names)
    outline, kps = _draw_person(painter, identity, scene, slots)

    image = canvas.reduce(supersample) if supersample > 1 else canvas
    small = {k: (m.reduce(supersample) if supersample > 1 else m) for k, m in painter.masks.items()}
    arr = _lighting(np.asarray(image, np.float64), scene)
    if style is not None:
        person = np.asarray(small["person"], np.float64) / 255.0 if "person" in small else None
        arr = _apply_style(arr, style.name, person)
    image = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))

    def to_out(pts: np.ndarray) -> np.ndarray:  # canvas units -> output pixel coordinates (centres at integers)
        ss = pts @ matrix[:, :2].T + matrix[:, 2]
        return (ss + 0.5) / supersample - 0.5

    o = to_out(outline)
    bbox = (float(o[:, 0].min()), float(o[:, 1].min()), float(o[:, 0].max()), float(o[:, 1].max()))
    k = to_out(kps)
    kps_out = tuple((float(x), float(y)) for x, y in k)
    return Render(image=image, bbox=bbox, kps=kps_out, masks=small if masks else {})  # type: ignore[arg-type]


def random_identity(rng: np.random.Generator, index: int, identity_id: str | None = None) -> Identity:
    """Draw one identity's attributes from ``rng`` (uniform over the categorical attributes)."""
    shape = str(rng.choice(FACE_SHAPES))
    width, height, squareness, taper = {
        "oval": (0.178, 0.232, 2.0, 0.16),
        "round": (0.192, 0.214, 2.05, 0.06),
        "square": (0.188, 0.222, 3.0, 0.08),
        "long": (0.166, 0.246, 2.3, 0.12),
        "heart": (0.19, 0.228, 2.3, 0.42),
    }[shape]
    tone = str(rng.choice(list(SKIN_TONES)))
    skin = np.array(SKIN_TONES[tone], np.float64)
    skin = skin * rng.uniform(0.96, 1.04) + rng.normal(0, 3, 3)  # (3,) jitter within the tone
    skin_rgb = tuple(int(x) for x in np.clip(np.round(skin), 0, 255))
    eye_color = str(rng.choice(list(EYE_COLORS)))
    hair_color = str(rng.choice(list(HAIR_COLORS)))
    hair_style = str(rng.choice(HAIR_STYLES))
    hair = HAIR_COLORS[hair_color]
    if hair_style == "bald":
        brow = _shade(HAIR_COLORS[str(rng.choice(["black", "dark brown", "brown", "grey"]))], 0.8)
    elif hair_color in ("grey", "white"):
        brow = _shade(hair, 0.72)
    else:
        brow = _shade(hair, 0.75)
    lip = _mix(skin_rgb, (176, 64, 72), float(rng.uniform(0.28, 0.42)))
    return Identity(
        identity_id=identity_id or f"id{index:05d}",
        index=index,
        face_shape=shape,
        face_width=width * float(rng.uniform(0.95, 1.05)),
        face_height=height * float(rng.uniform(0.96, 1.04)),
        squareness=squareness + float(rng.uniform(-0.1, 0.1)),
        jaw_taper=taper + float(rng.uniform(-0.03, 0.03)),
        skin_tone=tone,
        skin=skin_rgb,  # type: ignore[arg-type]
        eye_shape=str(rng.choice(EYE_SHAPES)),
        eye_spacing=float(rng.uniform(0.34, 0.43)),
        eye_height=float(rng.uniform(-0.1, 0.0)),
        eye_size=float(rng.uniform(0.17, 0.22)),
        eye_tilt=float(rng.uniform(-7, 7)),
        eye_color=eye_color,
        iris=EYE_COLORS[eye_color],
        brow_thickness=float(rng.uniform(0.05, 0.1)),
        brow_arch=float(rng.uniform(0.0, 0.08)),
        brow_tilt=float(rng.uniform(-0.12, 0.12)),
        brow_color=brow,
        nose_shape=str(rng.choice(NOSE_SHAPES)),
        nose_height=float(rng.uniform(0.26, 0.34)),
        nose_width=float(rng.uniform(0.24, 0.36)),
        mouth_height=float(rng.uniform(0.58, 0.66)),
        mouth_width=float(rng.uniform(0.24, 0.34)),
        lip_thickness=float(rng.uniform(0.05, 0.09)),
        smile=float(rng.uniform(0.0, 0.5)),
        lip=lip,
        ear_size=float(rng.uniform(0.85, 1.15)),
        hair_style=hair_style,
        hair_color=hair_color,
        hair=hair,
        hair_part=int(rng.choice([-1, 1])),
        freckles=bool(rng.uniform() < 0.2),
    )


def random_scene(rng: np.random.Generator, *, jitter: float = 1.0, lighting: bool = True) -> Scene:
    """Draw a scene: pose/scale jitter scaled by ``jitter`` (0 = frontal, centred), optional lighting."""
    return Scene(
        dx=float(rng.uniform(-0.035, 0.035)) * jitter,
        dy=float(rng.uniform(-0.03, 0.03)) * jitter,
        scale=1.0 + float(rng.uniform(-0.07, 0.07)) * jitter,
        roll=float(rng.uniform(-7, 7)) * jitter,
        yaw=float(rng.uniform(-0.08, 0.08)) * jitter,
        light_angle=float(rng.uniform(0, 2 * math.pi)) if lighting else 0.0,
        light_strength=float(rng.uniform(0.0, 0.22)) if lighting else 0.0,
        brightness=float(rng.uniform(0.94, 1.05)) if lighting else 1.0,
        backdrop=str(rng.choice(list(BACKDROPS))),
        clothing=str(rng.choice(list(SOURCE_CLOTHING))),
        layout_seed=int(rng.integers(0, 2**31 - 1)),
    )


__all__ = ["CATEGORIES", "EDIT_DEFS", "RENDERER_VERSION", "SLOTS", "Edit", "EditDef", "Identity", "Render", "Scene",
           "normalize_edits", "random_identity", "random_scene", "render_portrait"]
