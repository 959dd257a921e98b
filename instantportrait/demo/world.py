"""The synthetic portrait world: identities, instructed edits with paraphrases and captions, splits, dataset export.

``World(seed, num_identities)`` draws ``num_identities`` people (see ``render.random_identity``) and splits them *by
identity* into train / validation / test, so test people are never seen in training. ``world.sample(split, i)`` is
the i-th (source, instruction, ground-truth target) triple of a split: a person of that split (cycling through them
in a seeded order, so every person appears equally often), a photo scene (pose, scale, lighting, backdrop, shirt),
one edit or a combination of edits, an instruction chosen among that edit's paraphrases, and both images rendered.
Everything is a pure function of ``(seed, split, i)``: same seed -> byte-identical PNGs, random access, no state.

Language: every edit has imperative phrasings ("add hipster glasses", "give them thick black-framed glasses", ...) and
a descriptive fragment ("with hipster glasses", "wearing a red hat", "in a forest", "as a sepia photograph").
Combinations are phrased like the poster's ("with hipster glasses and a mustache, wearing a plaid shirt") or as
joined imperatives. ``parse_instruction`` maps any of these (and similar free text) back to the edits, so every
paraphrase of an instruction renders the same target (``World.render_target``).

Exports: ``export_pairs`` writes the paired-edit dataset format the trainers read (``manifest.jsonl`` +
``dataset.json`` + ``images/``), ``export_captions`` writes (image, description) pairs for a small CLIP, and
``identity_crops`` yields aligned face crops labelled by identity for an identity encoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from instantportrait.demo.language import CURATED_COMBOS, caption, instruction_paraphrases, parse_instruction
from instantportrait.demo.render import (
    EDIT_DEFS,
    RENDERER_VERSION,
    SHIRT_COLORS,
    SLOTS,
    Edit,
    Identity,
    Render,
    Scene,
    normalize_edits,
    random_identity,
    random_scene,
    render_portrait,
)
from instantportrait.face.keypoints import ARCFACE_TEMPLATE_112

SPLITS = ("train", "validation", "test")
CAPTIONS_FORMAT = "instantportrait-captions/1"
# Seed-sequence tags: each kind of draw has its own stream, so adding draws of one kind never shifts another.
_TAG_IDENTITY, _TAG_SPLIT, _TAG_SAMPLE, _TAG_ORDER, _TAG_CROP = 11, 12, 13, 14, 15
_ARCFACE_112 = np.array(ARCFACE_TEMPLATE_112)  # (5, 2) insightface's 112x112 ArcFace landmark template


# ============================================================================================== records
@dataclass
class Sample:
    """One (source, instruction, target) triple with everything known about it."""

    sample_id: str  # "<split>-<index:06d>"
    split: str
    index: int
    identity: Identity
    scene: Scene
    edits: tuple[Edit, ...]
    instruction: str
    paraphrases: tuple[str, ...]
    source: Image.Image
    target: Image.Image
    source_caption: str
    target_caption: str
    bbox: tuple[float, float, float, float]  # face box in the source (and target: same pose), pixels
    kps: tuple[tuple[float, float], ...]  # 5 landmarks in the source (and target), pixels

    @property
    def identity_id(self) -> str:
        return self.identity.identity_id

    @property
    def attributes(self) -> dict[str, Any]:
        return self.identity.attributes()

    @property
    def category(self) -> str:
        """The edit's category (accessory, facial_hair, clothing, background, style) or 'combo'."""
        return self.edits[0].definition.category if len(self.edits) == 1 else "combo"

    @property
    def edit_key(self) -> str:
        return "+".join(e.key for e in self.edits)

    @property
    def edit_spec(self) -> dict[str, Any]:
        return {"key": self.edit_key, "category": self.category, "edits": [e.to_dict() for e in self.edits]}


@dataclass
class CaptionPair:
    """An image and its descriptions (for contrastive CLIP training)."""

    image: Image.Image
    caption: str  # with identity attributes
    short_caption: str  # edits, clothing, background, style only
    identity_id: str
    edits: tuple[Edit, ...]
    kind: str  # source | target


@dataclass
class IdentityCrop:
    """A face crop labelled with its identity (for an identity encoder)."""

    image: Image.Image
    label: int  # index of the identity within the split (see World.identity_labels)
    identity_id: str
    edits: tuple[Edit, ...] = field(default_factory=tuple)
    kps: tuple[tuple[float, float], ...] = ()  # landmarks in the crop's pixels


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world; two worlds with equal configs render identical data."""

    seed: int = 0
    num_identities: int = 200
    size: int = 128
    supersample: int = 4
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validation, test
    edits: tuple[str, ...] = tuple(EDIT_DEFS)  # the edits samples draw from
    combo_prob: float = 0.25  # chance that a sample combines several edits
    max_combo: int = 3
    pose_jitter: float = 1.0  # 0 = every photo frontal and centred
    lighting: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.num_identities, int) or self.num_identities < 3:
            raise ValueError(f"num_identities must be an int >= 3 (one per split), got {self.num_identities!r}")
        fr = self.split_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6) or fr[0] <= 0:
            raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1 with train > 0, got {fr}")
        unknown = [e for e in self.edits if e not in EDIT_DEFS]
        if unknown or not self.edits:
            raise ValueError(f"edits must be a non-empty subset of {list(EDIT_DEFS)}; unknown: {unknown}")
        if not 0.0 <= self.combo_prob <= 1.0:
            raise ValueError(f"combo_prob must be in [0, 1], got {self.combo_prob}")
        if self.max_combo < 2:
            raise ValueError(f"max_combo must be >= 2, got {self.max_combo}")
        if self.pose_jitter < 0 or self.pose_jitter > 2:
            raise ValueError(f"pose_jitter must be in [0, 2], got {self.pose_jitter}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        d["edits"] = list(self.edits)
        return d


# ============================================================================================== the world
class World:
    """A deterministic synthetic portrait world (see the module docstring).

    ``World(seed=0, num_identities=200, size=128, ...)``; keyword arguments are the fields of :class:`WorldConfig`.
    """

    def __init__(self, seed: int = 0, num_identities: int = 200, **kwargs: Any) -> None:
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
        self.config = WorldConfig(seed=seed, num_identities=num_identities, **kwargs)
        self.identities: list[Identity] = [
            random_identity(np.random.default_rng([seed, _TAG_IDENTITY, i]), i, f"s{seed}-id{i:05d}")
            for i in range(num_identities)
        ]
        self._by_id = {ident.identity_id: ident for ident in self.identities}
        self._splits = self._assign_splits()
        self._split_of = {i: s for s, ids in self._splits.items() for i in ids}
        enabled = set(self.config.edits)
        self._slot_edits = {s: [n for n in EDIT_DEFS if n in enabled and EDIT_DEFS[n].slot == s] for s in SLOTS}
        self._slot_edits = {s: names for s, names in self._slot_edits.items() if names}
        self._combos = [c for c in CURATED_COMBOS if all(e.name in enabled for e in c)]

    # ------------------------------------------------------------------------------------------ identities, splits
    def _assign_splits(self) -> dict[str, list[str]]:
        """Rank identities by a per-identity seeded draw; the lowest go to test, then validation, the rest train."""
        n = self.config.num_identities
        keys = np.array([np.random.default_rng([self.config.seed, _TAG_SPLIT, i]).random() for i in range(n)])
        order = np.argsort(keys, kind="stable")
        _, f_val, f_test = self.config.split_fractions
        n_test = max(1, round(n * f_test)) if f_test > 0 else 0
        n_val = max(1, round(n * f_val)) if f_val > 0 else 0
        if n - n_test - n_val < 1:
            raise ValueError(f"{n} identities leave none for training with split_fractions "
                             f"{self.config.split_fractions}")
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        return {name: [self.identities[i].identity_id for i in sorted(part)]
                for name, part in (("train", train), ("validation", val), ("test", test))}

    def split_ids(self, split: str) -> list[str]:
        """Identity ids of a split, in identity-index order."""
        return list(self._splits[self._check_split(split)])

    def split_of(self, identity_id: str) -> str:
        return self._split_of[self.identity(identity_id).identity_id]

    def identity(self, identity_id: str) -> Identity:
        if identity_id not in self._by_id:
            example = self.identities[0].identity_id
            raise KeyError(f"no identity {identity_id!r} in this world (ids look like {example!r})")
        return self._by_id[identity_id]

    def identity_labels(self, split: str) -> dict[str, int]:
        """{identity id: class index} for a split (indices 0..k-1 in identity-index order)."""
        return {iid: k for k, iid in enumerate(self.split_ids(split))}

    @staticmethod
    def _check_split(split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return split

    def _identity_for(self, split: str, index: int) -> Identity:
        """Identities of a split in a fresh seeded order every cycle, so each appears equally often."""
        ids = self._splits[split]
        cycle, pos = divmod(index, len(ids))
        perm = np.random.default_rng([self.config.seed, _TAG_ORDER, SPLITS.index(split), cycle]).permutation(len(ids))
        return self._by_id[ids[int(perm[pos])]]

    # ------------------------------------------------------------------------------------------ drawing edits
    def random_edits(self, rng: np.random.Generator) -> tuple[Edit, ...]:
        """One edit (probability 1 - combo_prob) or a combination of 2..max_combo edits in different slots."""
        cfg = self.config
        slots = list(self._slot_edits)
        if len(slots) >= 2 and rng.random() < cfg.combo_prob:
            if self._combos and rng.random() < 0.5:
                return normalize_edits(self._combos[int(rng.integers(len(self._combos)))])
            k = int(rng.integers(2, min(cfg.max_combo, len(slots)) + 1))
            chosen = sorted(rng.choice(len(slots), size=k, replace=False).tolist())
            return normalize_edits(self._edit_in(rng, self._slot_edits[slots[i]]) for i in chosen)
        return (self._edit_in(rng, list(cfg.edits)),)

    @staticmethod
    def _edit_in(rng: np.random.Generator, names: Sequence[str]) -> Edit:
        name = names[int(rng.integers(len(names)))]
        colors = EDIT_DEFS[name].colors
        return Edit(name, colors[int(rng.integers(len(colors)))] if colors else None)

    # ------------------------------------------------------------------------------------------ rendering
    def render(self, identity: Identity | str, scene: Scene, edits: Sequence[Edit] = (), *,
               masks: bool = False) -> Render:
        """Render an identity (object or id) in a scene with edits at this world's size."""
        ident = self.identity(identity) if isinstance(identity, str) else identity
        return render_portrait(ident, scene, edits, size=self.config.size, supersample=self.config.supersample,
                               masks=masks)

    def sample(self, split: str, index: int) -> Sample:
        """The ``index``-th sample of ``split`` (random access; a pure function of seed, split and index)."""
        self._check_split(split)
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")
        cfg = self.config
        ident = self._identity_for(split, index)
        rng = np.random.default_rng([cfg.seed, _TAG_SAMPLE, SPLITS.index(split), index])
        scene = random_scene(rng, jitter=cfg.pose_jitter, lighting=cfg.lighting)
        edits = self.random_edits(rng)
        paraphrases = instruction_paraphrases(edits)
        instruction = paraphrases[int(rng.integers(len(paraphrases)))]
        src = self.render(ident, scene)
        tgt = self.render(ident, scene, edits)
        return Sample(
            sample_id=f"{split}-{index:06d}", split=split, index=index, identity=ident, scene=scene, edits=edits,
            instruction=instruction, paraphrases=paraphrases, source=src.image, target=tgt.image,
            source_caption=caption(ident, scene), target_caption=caption(ident, scene, edits),
            bbox=src.bbox, kps=src.kps,
        )

    def samples(self, split: str, n: int, *, start: int = 0) -> Iterator[Sample]:
        """Samples ``start .. start + n - 1`` of ``split``."""
        self._check_split(split)
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        for i in range(start, start + n):
            yield self.sample(split, i)

    def render_target(self, sample: Sample, instruction: str) -> Image.Image:
        """The ground truth for any instruction on a sample's source (``parse_instruction`` + render): every
        paraphrase of the sample's instruction gives its target, byte for byte."""
        return self.render(sample.identity, sample.scene, parse_instruction(instruction)).image

    # ------------------------------------------------------------------------------------------ exports
    @staticmethod
    def _prepare(folder: str | Path, names: Sequence[str], overwrite: bool) -> Path:
        folder = Path(folder)
        existing = [n for n in names if (folder / n).exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{folder} already holds {existing}; pass overwrite=True to replace them")
        for n in existing:
            p = folder / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def export_pairs(self, folder: str | Path, split: str, n: int, *, start: int = 0,
                     overwrite: bool = False) -> dict[str, Any]:
        """Write ``n`` samples of ``split`` as a paired-edit dataset (``instantportrait-pairs/1``): ``dataset.json``,
        ``manifest.jsonl`` (one row per pair, every row ``passed``: the targets are exact renders, no filter ran,
        so ``identity_sim``/``clip_t`` are null) and ``images/src``, ``images/tgt``. Rows also carry
        ``identity_id``, ``split``, ``edit_key``, ``edits``, ``paraphrases`` and ``source_caption``.
        Returns the ``dataset.json`` content."""
        self._check_split(split)
        folder = self._prepare(folder, ["dataset.json", "manifest.jsonl", "images"], overwrite)
        (folder / "images" / "src").mkdir(parents=True)
        (folder / "images" / "tgt").mkdir(parents=True)
        size = self.config.size
        rows = []
        for s in self.samples(split, n, start=start):
            stem = f"{s.sample_id}-{s.identity_id}"
            row_id = f"{stem}-{hashlib.sha1(s.instruction.encode()).hexdigest()[:8]}"
            src_rel, tgt_rel = f"images/src/{stem}.png", f"images/tgt/{row_id}.png"
            s.source.save(folder / src_rel, format="PNG")
            s.target.save(folder / tgt_rel, format="PNG")
            rows.append({
                "id": row_id, "source": src_rel, "target": tgt_rel, "instruction": s.instruction,
                "target_caption": s.target_caption, "category": s.category, "identity_sim": None, "clip_t": None,
                "passed": True, "reject_reason": None, "source_bbox": [round(v, 3) for v in s.bbox],
                "source_kps": [[round(x, 3), round(y, 3)] for x, y in s.kps], "width": size, "height": size,
                "identity_id": s.identity_id, "split": split, "edit_key": s.edit_key,
                "edits": [e.to_dict() for e in s.edits], "paraphrases": list(s.paraphrases),
                "source_caption": s.source_caption,
            })
        with open(folder / "manifest.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=False) + "\n")
        meta = {
            "format": _pairs_format(),
            "generator": self.describe() | {"split": split, "start": start},
            "face_model": None,
            "clip": None,
            "thresholds": {"identity_sim": None, "clip_t": None},
            "resolution": size,
            "seed": self.config.seed,
            "counts": {"total": len(rows), "passed_identity": len(rows), "passed_clip": len(rows),
                       "passed": len(rows), "no_face": 0, "failed": 0},
        }
        (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return meta

    def caption_pairs(self, split: str, n: int, *, start: int = 0,
                      include_targets: bool = True) -> Iterator[CaptionPair]:
        """(image, description) pairs: each sample's source and (optionally) its edited target."""
        for s in self.samples(split, n, start=start):
            yield CaptionPair(s.source, s.source_caption, caption(s.identity, s.scene, with_identity=False),
                              s.identity_id, (), "source")
            if include_targets:
                yield CaptionPair(s.target, s.target_caption,
                                  caption(s.identity, s.scene, s.edits, with_identity=False), s.identity_id,
                                  s.edits, "target")

    def export_captions(self, folder: str | Path, split: str, n: int, *, start: int = 0,
                        include_targets: bool = True, overwrite: bool = False) -> dict[str, Any]:
        """Write ``caption_pairs`` to ``folder``: ``captions.jsonl`` rows {image, caption, short_caption,
        identity_id, split, edit_key, kind}, ``captions.json`` (format, world, counts) and ``images/``."""
        self._check_split(split)
        folder = self._prepare(folder, ["captions.json", "captions.jsonl", "images"], overwrite)
        (folder / "images").mkdir()
        rows = []
        for k, pair in enumerate(self.caption_pairs(split, n, start=start, include_targets=include_targets)):
            rel = f"images/{split}-{start + k // (2 if include_targets else 1):06d}-{pair.kind}.png"
            pair.image.save(folder / rel, format="PNG")
            rows.append({"image": rel, "caption": pair.caption, "short_caption": pair.short_caption,
                         "identity_id": pair.identity_id, "split": split,
                         "edit_key": "+".join(e.key for e in pair.edits), "kind": pair.kind})
        with open(folder / "captions.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        meta = {"format": CAPTIONS_FORMAT, "generator": self.describe() | {"split": split, "start": start},
                "resolution": self.config.size, "seed": self.config.seed, "counts": {"total": len(rows)}}
        (folder / "captions.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return meta

    def identity_crops(self, split: str, n: int, *, crop_size: int = 112, align: str = "arcface",
                       edit_prob: float = 0.5, start: int = 0) -> Iterator[IdentityCrop]:
        """Face crops labelled by identity, cycling through the split's identities in fresh scenes.

        ``align="arcface"``: the similarity warp of the 5 landmarks onto insightface's ArcFace template (what
        ``norm_crop`` does), ``crop_size`` a multiple of 112. ``align="bbox"``: a square 1.3x the face box.
        With probability ``edit_prob`` the photo carries random edits, so an encoder learns to ignore them.
        """
        self._check_split(split)
        if align not in ("arcface", "bbox"):
            raise ValueError(f"align must be 'arcface' or 'bbox', got {align!r}")
        if align == "arcface" and crop_size % 112:
            raise ValueError(f"an ArcFace crop size must be a multiple of 112, got {crop_size}")
        if not 0.0 <= edit_prob <= 1.0:
            raise ValueError(f"edit_prob must be in [0, 1], got {edit_prob}")
        labels = self.identity_labels(split)
        cfg = self.config
        for i in range(start, start + n):
            ident = self._identity_for(split, i)
            rng = np.random.default_rng([cfg.seed, _TAG_CROP, SPLITS.index(split), i])
            scene = random_scene(rng, jitter=cfg.pose_jitter, lighting=cfg.lighting)
            edits = self.random_edits(rng) if rng.random() < edit_prob else ()
            out = self.render(ident, scene, edits)
            image, kps = _crop(out, crop_size, align)
            yield IdentityCrop(image, labels[ident.identity_id], ident.identity_id, edits, kps)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (recorded as the dataset's ``generator``)."""
        return {"name": "synthetic-world", "renderer": RENDERER_VERSION, "world": self.config.to_dict(),
                "identities": {s: len(v) for s, v in self._splits.items()}}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(v)}" for s, v in self._splits.items())
        return f"World(seed={self.config.seed}, identities: {sizes}, size={self.config.size})"


# ============================================================================================== helpers
def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2, 3) mapping ``src`` (N, 2) onto ``dst`` (N, 2) (Umeyama, no reflection): the
    transform insightface's ``face_align.estimate_norm`` fits, in numpy."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, yd = src - mu_s, dst - mu_d
    norm = (xs**2).sum()
    a = (xs * yd).sum() / norm
    b = (xs[:, 0] * yd[:, 1] - xs[:, 1] * yd[:, 0]).sum() / norm
    rot = np.array([[a, -b], [b, a]])
    return np.concatenate([rot, (mu_d - rot @ mu_s)[:, None]], axis=1)


def _crop(out: Render, crop_size: int, align: str) -> tuple[Image.Image, tuple[tuple[float, float], ...]]:
    kps = np.asarray(out.kps, np.float64)  # (5, 2)
    if align == "arcface":
        m = similarity_matrix(kps, _ARCFACE_112 * (crop_size / 112.0))
    else:
        x1, y1, x2, y2 = out.bbox
        side = 1.3 * max(x2 - x1, y2 - y1)
        s = crop_size / side
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        m = np.array([[s, 0, crop_size / 2 - 0.5 - s * cx], [0, s, crop_size / 2 - 0.5 - s * cy]])
    # PIL wants the inverse map (output pixel -> input pixel) with pixel *corners* at integers
    full = np.vstack([m, [0, 0, 1]])
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    inv = np.linalg.inv(shift @ full @ np.linalg.inv(shift))
    image = out.image.transform((crop_size, crop_size), Image.Transform.AFFINE, tuple(inv[:2].ravel()),
                                resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    warped = kps @ m[:, :2].T + m[:, 2]
    return image, tuple((float(x), float(y)) for x, y in warped)


def contact_sheet(world: World, split: str = "test", rows: int = 6, columns: Sequence[Sequence[Edit]] | None = None,
                  *, start: int = 0) -> Image.Image:
    """A grid: one identity of ``split`` per row in a sample's scene; first column the source, then one column per
    edit set (default: one of every edit and the poster's combination)."""
    if columns is None:
        columns = [(Edit("glasses"),), (Edit("sunglasses"),), (Edit("headset"),), (Edit("hat", "red"),),
                   (Edit("mustache"),), (Edit("beard"),), (Edit("shirt_color", "green"),), (Edit("plaid_shirt"),),
                   (Edit("tshirt"),), (Edit("blue_drape"),), (Edit("forest"),), (Edit("underwater"),),
                   (Edit("yearbook"),), (Edit("sepia"),), (Edit("neon"),), CURATED_COMBOS[0]]
    size = world.config.size
    sheet = Image.new("RGB", (size * (len(columns) + 1), size * rows), "white")
    for r, s in enumerate(world.samples(split, rows, start=start)):
        sheet.paste(s.source, (0, r * size))
        for c, edits in enumerate(columns):
            sheet.paste(world.render(s.identity, s.scene, edits).image, ((c + 1) * size, r * size))
    return sheet


def _pairs_format() -> str:
    """The paired-edit format tag; its one home is the dataset reader (``instantportrait.training.data.FORMAT``).
    Imported on use: the reader imports torch, and the world stays light enough for the app and benchmark CLIs."""
    from instantportrait.training.data import FORMAT

    return FORMAT


def __getattr__(name: str) -> Any:
    if name == "PAIRS_FORMAT":  # the module attribute, resolved lazily (see _pairs_format)
        return _pairs_format()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPTIONS_FORMAT", "SHIRT_COLORS", "SPLITS", "CaptionPair", "IdentityCrop", "Sample", "World", "WorldConfig",
    "contact_sheet", "similarity_matrix",
]  # and PAIRS_FORMAT, served by __getattr__; the language (captions, phrases, parsing) is in language.py
