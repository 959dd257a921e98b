"""The plan of a paired-edit build: the recorded settings, the rows they determine, and how shards own them.

Crash safety and sharding (the design):

* The plan is a pure function of the recorded settings: sources sorted by relative path, each with its instructions
  (all of them, or ``--instructions-per-source`` drawn with a seed derived from (seed, source)), row ``index`` in
  that order, row ``id`` = ``<source-key>-<8 hex of sha1(instruction)>``, per-row generator seed derived from
  (``--seed``, id). Nothing depends on which process generates a row, in which order or after how many restarts.
* ``OUT/build.json`` records the settings that determine the rows; a restart (or another shard) with different
  settings is refused with the list of what differs, so a resumed build cannot mix two plans.
* Shard ``i`` of ``N`` owns the rows with ``index % N == i`` and appends each finished row to its own part file
  ``OUT/parts/part-<i>-of-<N>.jsonl`` (one ``write`` per batch, then flush + fsync), after writing the batch's target
  images atomically (temporary file + fsync + rename). A part file is locked while its shard runs.
* A restart reads its part file, cuts a torn last line (a crash mid-write), skips the ids already written (in any
  part file) and redoes the unfinished batches. Batches have fixed boundaries over the shard's rows, so a redone batch
  is generated with the same companions as in an uninterrupted run.
* Merging reads every part file, keeps the first row per id and writes ``manifest.jsonl`` in plan order (row keys in
  the contract's order, scores rounded to 6 decimals) and ``dataset.json``, both atomically. A single-process run
  merges at its end; in a sharded run every shard checks when it finishes and merges once all rows exist, so the last
  one to finish merges (no barrier that could time out); ``--merge`` does it by hand.

The final manifest is therefore byte-identical whether the build ran once, was killed and restarted any number of
times, or was split into shards. Generated pixels (and so scores) can differ in their last bits between different
``--batch-size`` / ``--num-shards`` settings, because batched GPU/CPU kernels are not bitwise batch-invariant; with the
same settings a resumed build is exact.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instantportrait.imageio import IMAGE_SUFFIXES
from train.instructions import EditInstruction

if TYPE_CHECKING:
    from instantportrait.eval.clip_score import ClipScorer
    from instantportrait.face.encoder import FaceEncoder
    from instantportrait.methods.base import Editor, EditSettings

BUILD_FORMAT = "instantportrait-pairs-build/1"
MANIFEST = "manifest.jsonl"
DATASET_JSON = "dataset.json"
BUILD_JSON = "build.json"
PARTS_DIR = "parts"
SRC_DIR = "images/src"
TGT_DIR = "images/tgt"
HUB_SOURCES_DIR = "hub_sources"
ROW_KEYS = ("id", "source", "target", "instruction", "target_caption", "category", "identity_sim", "clip_t",
            "passed", "reject_reason", "source_bbox", "source_kps", "width", "height")

UNREADABLE_SOURCE = "unreadable_source"
NO_FACE_IN_SOURCE = "no_face_in_source"
GENERATION_FAILED = "generation_failed"
NO_FACE_IN_TARGET = "no_face_in_target"
LOW_IDENTITY = "low_identity"
LOW_CLIP_T = "low_clip_t"
REJECT_REASONS = (UNREADABLE_SOURCE, NO_FACE_IN_SOURCE, GENERATION_FAILED, NO_FACE_IN_TARGET, LOW_IDENTITY, LOW_CLIP_T)
MAX_CONSECUTIVE_GENERATION_FAILURES = 5  # then the generator itself is broken: stop (the build can be resumed)
SCORE_DECIMALS = 6
COORD_DECIMALS = 2


class BuildError(Exception):
    """A bad input or state the user can fix; ``main`` prints it as one line and exits with 1."""


# ------------------------------------------------------------------------------------------------ configuration
@dataclass
class BuildConfig:
    """Everything that determines the rows. Recorded in ``build.json``; a resume or another shard must match it.

    Model *locations* are not part of it (they may differ between machines): see :class:`Locations`.
    """

    source_files: list[str]  # relative posix paths under the source folder, sorted
    instructions: list[dict[str, Any]]  # EditInstruction.to_dict() records, in order
    instructions_from: str = "templates"  # "templates" or "file"
    instructions_per_source: int = 0  # 0: every instruction for every source
    seed: int = 0
    limit: int | None = None  # at most this many rows (the first ones of the plan)
    max_sources: int | None = None
    resolution: int = 512
    generator: str = "instructpix2pix"
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    dtype: str = "float32"
    face_filter: bool = True
    min_identity: float | None = 0.4
    det_size: int = 640
    det_thresh: float = 0.5
    clip_filter: bool = True
    min_clip_t: float | None = 0.2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# The identity filter's default face model: dlib (real, CC0), a different model from the one the benchmark evaluates
# identity with (buffalo_l's ArcFace), so that pairs are not selected by the judge that later scores the trained model.
DEFAULT_FILTER_FACE = "dlib"
EVALUATION_FACE = "insightface:buffalo_l"
ARCFACE_MIN_IDENTITY = 0.4  # ArcFace cosine, just above its same-person 0.36
# dlib's cosines are compressed (about 0.96 for two photos of one person vs 0.86 for different people, see
# instantportrait.face.dlib_backend): the midpoint, as 0.4 sits at ArcFace's own boundary.
DLIB_MIN_IDENTITY = 0.91


@dataclass
class Locations:
    """Where things were read from (recorded in ``build.json`` for the record; not compared on resume)."""

    sources: str = ""
    source_root: str = ""
    instructions_file: str | None = None
    generator_model: str | None = None
    face_pack: str = DEFAULT_FILTER_FACE
    clip: str | None = None


@dataclass
class RunOptions:
    """How this process runs (free to change between restarts)."""

    out: Path
    device: str = "cpu"
    batch_size: int = 1
    num_shards: int = 1
    shard_index: int = 0
    progress: bool = True


@dataclass(frozen=True)
class PlannedRow:
    index: int
    id: str
    source_file: str  # relative to the source root
    source_key: str
    instruction: EditInstruction
    seed: int


@dataclass
class Components:
    """The loaded models a shard uses (face / clip are ``None`` when their filter is off)."""

    editor: Editor
    settings: EditSettings
    face: FaceEncoder | None = None
    clip: ClipScorer | None = None
    descriptions: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ planning
def find_sources(folder: Path, exclude: Path | None = None) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped, ``exclude`` skipped), as sorted posix paths."""
    folder = folder.resolve()
    excluded = exclude.resolve() if exclude is not None else None
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if excluded is not None and (path == excluded or excluded in path.parents):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def source_keys(files: Sequence[str]) -> dict[str, str]:
    """A unique, filesystem-safe key per source file: its path without suffix, ``/`` -> ``__``; name clashes (same
    stem, different suffix) get the suffix appended, in sorted order."""
    keys: dict[str, str] = {}
    used: set[str] = set()
    for rel in files:
        stem, _, suffix = rel.rpartition(".") if "." in Path(rel).name else (rel, "", "")
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("._") or "source"
        key = base
        if key in used:
            key = f"{base}_{suffix.lower()}"
        n = 2
        while key in used:
            key, n = f"{base}_{n}", n + 1
        used.add(key)
        keys[rel] = key
    return keys


def row_id(source_key: str, instruction: str) -> str:
    """``<source-key>-<8 hex of sha1(instruction)>``, stable across runs and machines."""
    return f"{source_key}-{hashlib.sha1(instruction.encode('utf-8')).hexdigest()[:8]}"


def row_seed(seed: int, rid: str) -> int:
    """The generator seed of one row: a 63-bit hash of (global seed, row id), independent of order and sharding."""
    digest = hashlib.sha256(f"{int(seed)}:{rid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def plan_rows(config: BuildConfig) -> list[PlannedRow]:
    """Every row of the dataset, in the canonical (manifest) order; a pure function of ``config``."""
    instructions = [EditInstruction.from_dict(d) for d in config.instructions]
    keys = source_keys(config.source_files)
    rows: list[PlannedRow] = []
    k = config.instructions_per_source
    for rel in config.source_files:
        chosen = range(len(instructions))
        if 0 < k < len(instructions):
            rng = random.Random(f"instantportrait-pairs:{config.seed}:{keys[rel]}")
            chosen = sorted(rng.sample(range(len(instructions)), k))
        for j in chosen:
            rid = row_id(keys[rel], instructions[j].instruction)
            rows.append(PlannedRow(len(rows), rid, rel, keys[rel], instructions[j], row_seed(config.seed, rid)))
            if config.limit is not None and len(rows) >= config.limit:
                return rows
    return rows


def shard_rows(plan: Sequence[PlannedRow], num_shards: int, shard_index: int) -> list[PlannedRow]:
    """The rows shard ``shard_index`` of ``num_shards`` owns: ``index % num_shards == shard_index``."""
    return [r for r in plan if r.index % num_shards == shard_index]


def part_path(out: Path, num_shards: int, shard_index: int) -> Path:
    return out / PARTS_DIR / f"part-{shard_index:05d}-of-{num_shards:05d}.jsonl"

