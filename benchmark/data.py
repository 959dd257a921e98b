"""Benchmark inputs: portraits and instruction sets (JSONL or text).

Portraits (``--images``): a folder (recursively, sorted; unreadable files are skipped and listed in ``run.json``),
one image file, a Hugging Face dataset ``owner/name[:split]`` (needs the ``datasets`` package; offline it must be
cached), ``synthetic:N[:SIZE]`` (N generated images without faces, for timing runs without data), or
``demo-world:N[:SIZE]``: the sources of the first N *test-split* samples of the synthetic demo world
(:data:`instantportrait.config.DEMO_WORLD`, people never seen by the demo models and scorers in training), SIZE px
(default 64).

Instruction files are JSONL, one object a line::

    {"id": "simple-glasses", "instruction": "wearing glasses", "target_caption": "a photo of a person wearing
     glasses", "category": "accessories", "source_caption": "a photo of a person"}

``id``, ``instruction`` and ``target_caption`` are required (``target_caption`` is what CLIP-T scores the output
against); ``category`` defaults to ``"other"``, ``source_caption`` to the run's ``--source-caption``. A ``.txt``
file is one instruction a line (``#`` comments), used as its own target caption. The default set is
``benchmark/instructions.jsonl``: the InstantPortrait poster's instructions plus single-attribute edits;
``demo-world`` (the default with ``--images demo-world:...``) is the demo world's single edits, one canonical
phrasing each, with target captions in the words the demo CLIP was trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from instantportrait.config import DEMO_WORLD
from instantportrait.imageio import IMAGE_SUFFIXES

DEFAULT_INSTRUCTIONS = Path(__file__).with_name("instructions.jsonl")
HF_PREFIX = "hf://datasets/"
SYNTHETIC_PREFIX = "synthetic:"
DEMO_WORLD_SPEC = "demo-world"  # --instructions demo-world; --images demo-world:N[:SIZE]
DEMO_WORLD_PREFIX = DEMO_WORLD_SPEC + ":"
DEMO_WORLD_SIZE = 64
DEMO_WORLD_COLORS = {"hat": "red", "shirt_color": "green"}  # the one colour of each coloured edit
# The demo CLIP learnt "a photo of a person" + the world's edit phrase (train.train_scorers' edit texts), with the bare
# prefix for an unedited portrait: identity-free captions that fit every source.
DEMO_WORLD_SOURCE_CAPTION = "a photo of a person"


@dataclass(frozen=True)
class Instruction:
    id: str
    instruction: str
    target_caption: str
    category: str = "other"
    source_caption: str | None = None
    origin: str = ""


@dataclass
class SourceImage:
    """A portrait as the editors and the metrics see it (RGB, long side at most the run's resolution)."""

    id: str
    image: PIL.Image.Image
    origin: str  # file path or dataset row
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------- instructions
def demo_world_instructions() -> list[Instruction]:
    """One instruction per edit of the synthetic world (``EDIT_DEFS`` order; hats and shirt colours in one colour):
    its first imperative phrasing, the edit's category, and the target caption "a photo of a person" + the edit's
    description ("a photo of a person with hipster glasses")."""
    from instantportrait.demo import EDIT_DEFS, Edit, describe_edits, instruction_paraphrases

    items = []
    for name, definition in EDIT_DEFS.items():
        edit = Edit(name, DEMO_WORLD_COLORS[name] if definition.colors else None)
        items.append(Instruction(
            id=f"world-{edit.key.replace(':', '-').replace('_', '-')}", instruction=instruction_paraphrases([edit])[0],
            target_caption=f"{DEMO_WORLD_SOURCE_CAPTION} {describe_edits([edit])}", category=definition.category,
            source_caption=DEMO_WORLD_SOURCE_CAPTION, origin="instantportrait.demo demo world"))
    return items


def load_instructions(path: str | Path | None = None) -> list[Instruction]:
    """Read an instruction file (JSONL, or ``.txt`` one per line); one ``ValueError`` naming the bad line.
    ``"demo-world"`` gives :func:`demo_world_instructions`."""
    if str(path) == DEMO_WORLD_SPEC:
        return demo_world_instructions()
    path = Path(path) if path else DEFAULT_INSTRUCTIONS
    if not path.is_file():
        raise ValueError(f"instruction file {path} does not exist")
    items: list[Instruction] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(Instruction(id=f"line{n:03d}", instruction=line, target_caption=line, category="custom"))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in ("id", "instruction", "target_caption"):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise ValueError(f"{where}: missing or empty {key!r} (each line needs id, instruction and "
                                     "target_caption)")
            unknown = set(obj) - {"id", "instruction", "target_caption", "category", "source_caption", "origin"}
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            items.append(Instruction(id=obj["id"].strip(), instruction=obj["instruction"].strip(),
                                     target_caption=obj["target_caption"].strip(),
                                     category=str(obj.get("category") or "other"),
                                     source_caption=obj.get("source_caption") or None,
                                     origin=str(obj.get("origin") or "")))
    if not items:
        raise ValueError(f"instruction file {path} holds no instructions")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"{path}: instruction id {item.id!r} appears twice (ids key the results)")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", item.id):
            raise ValueError(f"{path}: instruction id {item.id!r} may only use letters, digits, '.', '_', '-'")
        seen.add(item.id)
    return items


# ---------------------------------------------------------------------------------------------------- images
def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _ids_for(paths: list[Path], root: Path) -> list[str]:
    stems = [_safe_id(str(p.relative_to(root).with_suffix("")).replace("/", "__")) for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    # a.png and a.jpg: keep both, told apart by their suffix
    return [s if counts[s] == 1 else _safe_id(f"{s}_{p.suffix.lstrip('.')}") for s, p in zip(stems, paths)]


def is_hub_dataset(spec: str) -> bool:
    """``hf://datasets/owner/name[:split]`` or ``owner/name[:split]`` that is not a local path."""
    if spec.startswith(HF_PREFIX):
        return True
    return (not Path(spec).expanduser().exists() and re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.\[\]%-]+)?", spec)
            is not None)


def iter_images(spec: str, max_side: int | None = None) -> Iterator[SourceImage | tuple[str, str]]:
    """Yield ``SourceImage`` per readable image and ``(origin, error)`` per unreadable one."""
    from instantportrait.errors import InvalidImageError
    from instantportrait.imageio import load_image, prepare_image

    if spec.startswith(SYNTHETIC_PREFIX):
        yield from _iter_synthetic(spec, max_side)
        return
    if spec == DEMO_WORLD_SPEC or spec.startswith(DEMO_WORLD_PREFIX):
        yield from _iter_demo_world(spec, max_side)
        return
    if is_hub_dataset(spec):
        yield from _iter_hub_dataset(spec, max_side, prepare_image)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise ValueError(f"--images {spec}: no such file or folder (and not a Hub dataset id owner/name)")
    files = [path] if path.is_file() else image_files(path)
    if not files:
        raise ValueError(f"--images {spec}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    ids = _ids_for(files, path.parent if path.is_file() else path)
    for image_id, file in zip(ids, files):
        try:
            loaded = load_image(file, max_side=max_side)
        except InvalidImageError as exc:
            yield (str(file), str(exc))
            continue
        yield SourceImage(id=image_id, image=loaded.image, origin=str(file), notes=tuple(loaded.notes))


def _iter_synthetic(spec: str, max_side: int | None) -> Iterator[SourceImage]:
    """``synthetic:N[:SIZE]``: N smooth synthetic images (no faces), for timing and harness checks without data."""
    from instantportrait.tiny.images import portrait_like_image

    parts = spec[len(SYNTHETIC_PREFIX):].split(":")
    try:
        n = int(parts[0])
        size = int(parts[1]) if len(parts) > 1 else (max_side or 512)
    except ValueError:
        raise ValueError(f"--images {spec}: expected synthetic:N or synthetic:N:SIZE") from None
    if n < 1 or size < 8 or len(parts) > 2:
        raise ValueError(f"--images {spec}: expected synthetic:N or synthetic:N:SIZE with N >= 1, SIZE >= 8")
    for i in range(n):
        yield SourceImage(id=f"synthetic-{i:04d}", image=portrait_like_image(size, seed=i), origin=f"{spec}[{i}]")


def parse_demo_world(spec: str) -> tuple[int, int]:
    """``demo-world:N[:SIZE]`` -> ``(N, SIZE)``; one clear ``ValueError`` otherwise."""
    usage = f"--images {spec}: expected demo-world:N or demo-world:N:SIZE (N >= 1 portraits, SIZE 32..1024 px)"
    parts = spec[len(DEMO_WORLD_PREFIX):].split(":") if spec.startswith(DEMO_WORLD_PREFIX) else []
    if not 1 <= len(parts) <= 2:
        raise ValueError(usage)
    try:
        n, size = int(parts[0]), int(parts[1]) if len(parts) == 2 else DEMO_WORLD_SIZE
    except ValueError:
        raise ValueError(usage) from None
    if n < 1 or not 32 <= size <= 1024:
        raise ValueError(usage)
    return n, size


def _iter_demo_world(spec: str, max_side: int | None) -> Iterator[SourceImage]:
    """The sources of the first N test-split samples of the demo world (ids ``demo-world-test-000000-<person>``)."""
    from instantportrait.demo import World
    from instantportrait.imageio import prepare_image

    n, size = parse_demo_world(spec)
    world = World(**DEMO_WORLD, size=size)
    for s in world.samples("test", n):
        loaded = prepare_image(s.source, max_side)
        yield SourceImage(id=f"demo-world-{s.sample_id}-{s.identity_id}", image=loaded.image,
                          origin=f"{world!r} {s.sample_id} ({s.identity_id})", notes=tuple(loaded.notes))


def _iter_hub_dataset(spec: str, max_side: int | None, prepare: Any) -> Iterator[SourceImage | tuple[str, str]]:
    """Rows of a Hugging Face dataset (uses the local cache when offline); the first image column is used."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"--images {spec} names a Hub dataset, which needs the `datasets` package "
                         "(pip install datasets); or pass a local folder of images") from None
    name = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    name, _, split = name.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise ValueError(f"--images {spec}: could not load the dataset ({type(exc).__name__}: {exc}). Offline, it "
                         "must already be in the Hugging Face cache; or pass a local folder") from None
    for i, row in enumerate(ds):
        origin = f"{name}[{split or 'train'}][{i}]"
        image = next((v for v in row.values() if isinstance(v, PIL.Image.Image)), None)
        if image is None:
            yield (origin, "no image column in this row")
            continue
        raw_id = row.get("id", row.get("image_id"))
        image_id = _safe_id(str(raw_id)) if raw_id is not None else f"{_safe_id(name.split('/')[-1])}-{i:05d}"
        loaded = prepare(image, max_side)
        yield SourceImage(id=image_id, image=loaded.image, origin=origin, notes=tuple(loaded.notes))


def load_images(spec: str, max_side: int | None = None) -> tuple[list[SourceImage], list[dict[str, str]]]:
    """Every readable image (sorted by id, ids unique) and the skipped ones with why."""
    images: list[SourceImage] = []
    skipped: list[dict[str, str]] = []
    for item in iter_images(spec, max_side):
        if isinstance(item, SourceImage):
            images.append(item)
        else:
            skipped.append({"origin": item[0], "error": item[1]})
    ids = [im.id for im in images]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"--images {spec}: duplicate image ids {', '.join(dup[:5])}")
    if not images:
        raise ValueError(f"--images {spec}: no readable image ({len(skipped)} skipped: "
                         f"{skipped[0]['error'] if skipped else 'none found'})")
    return sorted(images, key=lambda im: im.id), skipped
