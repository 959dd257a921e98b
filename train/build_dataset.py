"""python -m train.build_dataset --sources PORTRAITS_DIR --out data/pairs [--generator instructpix2pix] [--limit N]

Builds the paired portrait-edit set IDE-Net trains on (DESIGN.md §1 "Data", issue 3):

    source portraits (a folder, or a Hub dataset id when ``datasets`` is installed)
      x instructions (templates over the poster's categories, train/instructions.py, or ``--instructions FILE``)
      -> a target from a slow generator of the method registry (``--generator``, default instructpix2pix)
      -> filters: identity similarity source vs target (FaceEncoder, ``--min-identity``) and CLIP-T of the target
         against the instruction's target caption (ClipScorer, ``--min-clip-t``), both thresholds recorded
      -> ``OUT/manifest.jsonl`` + ``OUT/images/{src,tgt}/`` + ``OUT/dataset.json`` (format "instantportrait-pairs/1";
         trainers read the rows with ``"passed": true``).

Every (source, instruction) pair gets a row, rejected ones included, with ``reject_reason`` one of
``unreadable_source``, ``no_face_in_source``, ``generation_failed``, ``no_face_in_target``, ``low_identity``,
``low_clip_t`` (the first filter it failed), so nothing is silently dropped.

Examples::

    # one process (merges at the end)
    python -m train.build_dataset --sources portraits/ --out data/pairs --instructions-per-source 8
    # several GPUs: each process takes rows i, i+N, i+2N, ...; the last to finish writes the manifest
    accelerate launch --num_processes 8 -m train.build_dataset --sources portraits/ --out data/pairs
    # or by hand, e.g. on several machines sharing OUT, then merge
    python -m train.build_dataset --sources portraits/ --out data/pairs --num-shards 4 --shard-index 2
    python -m train.build_dataset --out data/pairs --merge
    # a tiny offline run
    python -m train.build_dataset --sources faces/ --out /tmp/pairs --generator-model tiny-ip2p/ --steps 2 \\
        --resolution 64 --face-pack tiny_pack/ --clip tiny_clip.pt --limit 20

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

import argparse
import hashlib
import json
import logging
import os
import random
import re
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.instructions import CATEGORIES, EditInstruction, load_instructions, template_instructions

if TYPE_CHECKING:
    import PIL.Image

    from instantportrait.eval.clip_score import ClipScorer
    from instantportrait.face.encoder import FaceEncoder, FaceResult
    from instantportrait.methods.base import Editor, EditSettings

logger = logging.getLogger("train.build_dataset")

FORMAT = "instantportrait-pairs/1"
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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

UNREADABLE_SOURCE = "unreadable_source"
NO_FACE_IN_SOURCE = "no_face_in_source"
GENERATION_FAILED = "generation_failed"
NO_FACE_IN_TARGET = "no_face_in_target"
LOW_IDENTITY = "low_identity"
LOW_CLIP_T = "low_clip_t"
REJECT_REASONS = (UNREADABLE_SOURCE, NO_FACE_IN_SOURCE, GENERATION_FAILED, NO_FACE_IN_TARGET, LOW_IDENTITY, LOW_CLIP_T)
MAX_CONSECUTIVE_GENERATION_FAILURES = 5  # then the generator itself is broken: stop (the build can be resumed)
SCORE_DECIMALS = 6
_HOST = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"
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


@dataclass
class Locations:
    """Where things were read from (recorded in ``build.json`` for the record; not compared on resume)."""

    sources: str = ""
    source_root: str = ""
    instructions_file: str | None = None
    generator_model: str | None = None
    face_pack: str = "buffalo_l"
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


# ------------------------------------------------------------------------------------------------ files
def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and machine: shards on several machines may share OUT (and the same source copies).
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_png_atomic(image: PIL.Image.Image, path: Path) -> None:
    """Save ``image`` as a PNG at ``path`` atomically (a reader never sees a half-written file)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def serialize_row(row: dict[str, Any]) -> str:
    """One manifest line (no newline): the contract's keys in the contract's order."""
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise BuildError(f"row {row.get('id')!r} lacks {', '.join(missing)}")
    return json.dumps({k: row[k] for k in ROW_KEYS}, ensure_ascii=False)


def _parse_jsonl(data: bytes, path: Path) -> tuple[list[dict[str, Any]], bytes]:
    """Complete lines of ``data`` as rows, and the bytes after the last newline (a torn write, or b"")."""
    lines = data.split(b"\n")
    tail = lines.pop()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BuildError(f"{path}:{n}: corrupt row ({exc.msg}); only a torn *last* line is repaired "
                             "automatically, so this file was changed by something else: delete the line") from exc
        if not isinstance(row, dict) or "id" not in row:
            raise BuildError(f"{path}:{n}: not a manifest row")
        rows.append(row)
    return rows, tail


def read_part_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a part file, ignoring an unterminated last line (another shard may be writing it right now)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return _parse_jsonl(data, path)[0]


class PartFile:
    """This shard's append-only part file: locked while open, torn tail repaired on open, fsync after each append."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def open(self) -> list[dict[str, Any]]:
        """Lock the file, cut a torn last line, return the rows already in it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")  # kept open (and locked) for the whole run
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise BuildError(f"{self.path} is locked: another process is already running this shard") from None
        fh.seek(0)
        data = fh.read()
        rows, tail = _parse_jsonl(data, self.path)
        if tail:
            logger.warning("%s: cut a torn last line (%d bytes) left by an interrupted run; that row is redone",
                           self.path, len(tail))
            fh.truncate(len(data) - len(tail))
            fh.flush()
            os.fsync(fh.fileno())
        self._fh = fh
        return rows

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        data = "".join(serialize_row(r) + "\n" for r in rows).encode("utf-8")
        if not data:
            return
        self._fh.write(data)  # one write: a crash leaves whole rows and at most one torn tail
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # releases the lock
            self._fh = None


def read_build_json(out: Path) -> dict[str, Any] | None:
    path = out / BUILD_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path} is corrupt ({exc.msg}); it is written atomically, so it was changed by hand") from exc
    if info.get("format") != BUILD_FORMAT:
        raise BuildError(f"{path} is not a {BUILD_FORMAT} file (format {info.get('format')!r})")
    return info


def check_same_config(out: Path, config: BuildConfig) -> None:
    """Refuse to resume (or join) a build whose recorded settings differ from ``config``, naming what differs."""
    info = read_build_json(out)
    if info is None:
        return
    recorded = info["config"]
    current = json.loads(json.dumps(asdict(config)))
    differs = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differs:
        details = []
        for k in differs:
            a, b = recorded.get(k), current.get(k)
            if isinstance(a, list) and isinstance(b, list):
                details.append(f"{k} ({len(a)} recorded vs {len(b)} now" + (", same count but different content)"
                                                                             if len(a) == len(b) else ")"))
            else:
                details.append(f"{k} ({a!r} recorded vs {b!r} now)")
        raise BuildError(f"{out} holds a build with different settings: {'; '.join(details)}. Resume it with the "
                         "same settings, or choose a new --out")


def write_build_json(out: Path, config: BuildConfig, locations: Locations, descriptions: dict[str, Any]) -> None:
    """Record the settings (first process only; later ones were checked by :func:`check_same_config`)."""
    if (out / BUILD_JSON).is_file():
        return
    info = {"format": BUILD_FORMAT, "config": asdict(config), "locations": asdict(locations),
            "components": descriptions}
    atomic_write_bytes(out / BUILD_JSON, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# ------------------------------------------------------------------------------------------------ merging
def collect_rows(out: Path, plan: Sequence[PlannedRow]) -> tuple[dict[str, dict[str, Any]], list[PlannedRow]]:
    """The first row per planned id over all part files (sorted by name), and the planned rows still missing."""
    wanted = {r.id for r in plan}
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((out / PARTS_DIR).glob("part-*.jsonl")):
        for row in read_part_rows(path):
            if row["id"] in wanted and row["id"] not in found:
                found[row["id"]] = row
    return found, [r for r in plan if r.id not in found]


def summarize(rows: Sequence[dict[str, Any]], config: BuildConfig) -> dict[str, int]:
    """The contract's ``counts`` (how many rows passed each filter), from the rows and the recorded thresholds.

    ``passed_identity`` / ``passed_clip``: generated targets that pass that filter (all of them when it is off);
    ``no_face``: rows rejected for a missing face in the source or the target; ``failed``: rows that could not be
    evaluated (unreadable source, generation error).
    """
    generated = [r for r in rows if r["target"] is not None]
    id_ok = [r for r in generated if not config.face_filter
             or (r["identity_sim"] is not None and r["identity_sim"] >= config.min_identity)]
    clip_ok = [r for r in generated if not config.clip_filter
               or (r["clip_t"] is not None and r["clip_t"] >= config.min_clip_t)]
    reasons = [r["reject_reason"] for r in rows]
    return {
        "total": len(rows),
        "passed_identity": len(id_ok),
        "passed_clip": len(clip_ok),
        "passed": sum(bool(r["passed"]) for r in rows),
        "no_face": sum(x in (NO_FACE_IN_SOURCE, NO_FACE_IN_TARGET) for x in reasons),
        "failed": sum(x in (UNREADABLE_SOURCE, GENERATION_FAILED) for x in reasons),
    }


def dataset_info(rows: Sequence[dict[str, Any]], plan: Sequence[PlannedRow], build: dict[str, Any]) -> dict[str, Any]:
    """``dataset.json``: the contract's keys, then details (reasons, categories, instruction source)."""
    config = BuildConfig.from_dict(build["config"])
    comps = build.get("components") or {}
    by_id = {r.id: r for r in plan}
    categories: dict[str, dict[str, int]] = {}
    for row in rows:
        cat = categories.setdefault(row["category"], {"total": 0, "passed": 0})
        cat["total"] += 1
        cat["passed"] += bool(row["passed"])
    return {
        "format": FORMAT,
        "generator": comps.get("generator"),
        "face_model": comps.get("face_model") if config.face_filter else None,
        "clip": comps.get("clip") if config.clip_filter else None,
        "thresholds": {"identity_sim": config.min_identity if config.face_filter else None,
                       "clip_t": config.min_clip_t if config.clip_filter else None},
        "resolution": config.resolution,
        "seed": config.seed,
        "counts": summarize(rows, config),
        "generated": sum(r["target"] is not None for r in rows),
        "reject_reasons": {k: sum(r["reject_reason"] == k for r in rows) for k in REJECT_REASONS},
        "categories": dict(sorted(categories.items())),
        "instructions": {"from": config.instructions_from, "count": len(config.instructions),
                         "per_source": config.instructions_per_source},
        "num_sources": len({r.source_file for r in plan}),
        "unreadable_sources": sorted({by_id[r["id"]].source_file for r in rows
                                      if r["reject_reason"] == UNREADABLE_SOURCE}),
    }


def merge(out: Path, *, plan: Sequence[PlannedRow] | None = None, build: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """Write ``manifest.jsonl`` (plan order) and ``dataset.json`` from the part files; returns dataset.json.

    Raises :class:`BuildError` naming the missing rows when some shard has not finished.
    """
    build = build or read_build_json(out)
    if build is None:
        raise BuildError(f"{out / BUILD_JSON} does not exist: nothing to merge (run the build first)")
    plan = plan if plan is not None else plan_rows(BuildConfig.from_dict(build["config"]))
    found, missing = collect_rows(out, plan)
    if missing:
        counts = {int(m.group(1)) for p in (out / PARTS_DIR).glob("part-*.jsonl")
                  if (m := re.fullmatch(r"part-\d+-of-(\d+)\.jsonl", p.name))}
        which = "; ".join(f"with --num-shards {n}: shard(s) "
                          + ", ".join(str(i) for i in sorted({r.index % n for r in missing})) for n in sorted(counts))
        raise BuildError(f"cannot merge {out}: {len(missing)} of {len(plan)} rows are not built yet (first missing: "
                         f"{missing[0].id}, row {missing[0].index}; {which or 'no part files yet'}); run those shards "
                         "to completion (rerunning a shard resumes it), then merge")
    rows = [found[r.id] for r in plan]
    info = dataset_info(rows, plan, build)
    atomic_write_bytes(out / MANIFEST, "".join(serialize_row(r) + "\n" for r in rows).encode("utf-8"))
    atomic_write_bytes(out / DATASET_JSON, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    for stale in (out / "images").rglob(".*.tmp"):  # temporaries of killed runs (no shard is writing any more)
        stale.unlink(missing_ok=True)
    return info


def format_summary(out: Path, info: dict[str, Any]) -> str:
    c, th, why = info["counts"], info["thresholds"], info["reject_reasons"]
    id_rule = f"ArcFace cosine >= {th['identity_sim']}" if th["identity_sim"] is not None else "filter off"
    clip_rule = f">= {th['clip_t']}" if th["clip_t"] is not None else "filter off"
    return "\n".join([
        f"dataset {out}: {c['total']} rows ({info['num_sources']} sources, {info['instructions']['count']} "
        f"instructions), {info['generated']} targets generated",
        f"  identity ({id_rule}): {c['passed_identity']} of {info['generated']} passed",
        f"  CLIP-T ({clip_rule}): {c['passed_clip']} of {info['generated']} passed",
        f"  passed both (training rows): {c['passed']}",
        f"  no face: {c['no_face']} (source {why[NO_FACE_IN_SOURCE]}, target {why[NO_FACE_IN_TARGET]}); failed: "
        f"{c['failed']} (unreadable source {why[UNREADABLE_SOURCE]}, generation {why[GENERATION_FAILED]})",
    ])


# ------------------------------------------------------------------------------------------------ building
@dataclass
class _Source:
    png: str | None  # relative path of the stored copy
    image: PIL.Image.Image | None
    face: FaceResult | None
    error: str | None = None


class RowBuilder:
    """Turns planned rows into manifest rows (source copy, generation, target image, scores)."""

    def __init__(self, config: BuildConfig, components: Components, out: Path, source_root: Path) -> None:
        self.config = config
        self.c = components
        self.out = out
        self.source_root = source_root
        self._sources: OrderedDict[str, _Source] = OrderedDict()  # small LRU: a shard's rows come source by source
        self._consecutive_failures = 0

    def source(self, rel: str, key: str) -> _Source:
        if rel in self._sources:
            self._sources.move_to_end(rel)
            return self._sources[rel]
        info = self._load_source(rel, key)
        self._sources[rel] = info
        if len(self._sources) > 16:
            self._sources.popitem(last=False)
        return info

    def _load_source(self, rel: str, key: str) -> _Source:
        import PIL.Image

        from instantportrait.imageio import load_image
        from instantportrait.methods.base import working_size

        path = self.source_root / rel
        try:
            image = load_image(path).image  # RGB, upright
        except Exception as exc:  # corrupt, truncated, not an image, unreadable: recorded, never fatal
            logger.warning("skipping unreadable source %s: %s", rel, exc)
            return _Source(None, None, None, f"{type(exc).__name__}: {exc}")
        size = working_size(image.size, self.config.resolution)  # long side = resolution, multiples of 8
        if image.size != size:
            image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        png = f"{SRC_DIR}/{key}.png"
        if not (self.out / png).is_file():
            save_png_atomic(image, self.out / png)
        face = None
        if self.c.face is not None:
            faces = self.c.face.detect(image)
            face = faces[0] if faces else None
        return _Source(png, image, face)

    def _row(self, pr: PlannedRow, src: _Source, **values: Any) -> dict[str, Any]:
        face = src.face
        row = {
            "id": pr.id, "source": src.png, "target": None, "instruction": pr.instruction.instruction,
            "target_caption": pr.instruction.target_caption, "category": pr.instruction.category,
            "identity_sim": None, "clip_t": None, "passed": False, "reject_reason": None,
            "source_bbox": None if face is None else [round(float(v), COORD_DECIMALS) for v in face.bbox],
            "source_kps": None if face is None else [[round(float(x), COORD_DECIMALS), round(float(y), COORD_DECIMALS)]
                                                     for x, y in face.kps],
            "width": None if src.image is None else src.image.width,
            "height": None if src.image is None else src.image.height,
        }
        row.update(values)
        return row

    def _generate(self, rows: list[PlannedRow], images: list[PIL.Image.Image]) -> list[PIL.Image.Image | None]:
        """Targets for ``rows`` in one batched call; on an error, row by row (a failing row gives ``None``)."""
        texts = [r.instruction.instruction for r in rows]
        seeds = [r.seed for r in rows]
        try:
            out = self.c.editor.edit(images, texts, seed=seeds, settings=self.c.settings)
            self._consecutive_failures = 0
            return list(out)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise
            if len(rows) == 1:
                self._consecutive_failures += 1
                logger.warning("generation failed for %s: %s: %s", rows[0].id, type(exc).__name__, exc)
                if self._consecutive_failures >= MAX_CONSECUTIVE_GENERATION_FAILURES:
                    raise BuildError(f"the generator failed on {self._consecutive_failures} rows in a row (last: "
                                     f"{type(exc).__name__}: {exc}); fix it and rerun the same command to "
                                     "resume") from exc
                return [None]
            logger.warning("batch generation failed (%s: %s); retrying row by row", type(exc).__name__, exc)
        return [self._generate([r], [img])[0] for r, img in zip(rows, images)]

    def build(self, chunk: Sequence[PlannedRow]) -> list[dict[str, Any]]:
        """Manifest rows for ``chunk`` (in order): one generation batch, then per-row scoring."""
        cfg, face, clip = self.config, self.c.face, self.c.clip
        rows: list[dict[str, Any] | None] = [None] * len(chunk)
        todo: list[int] = []
        for j, pr in enumerate(chunk):
            src = self.source(pr.source_file, pr.source_key)
            if src.error is not None:
                rows[j] = self._row(pr, src, reject_reason=UNREADABLE_SOURCE)
            elif face is not None and src.face is None:
                rows[j] = self._row(pr, src, reject_reason=NO_FACE_IN_SOURCE)
            else:
                todo.append(j)
        if todo:
            sources = [self.source(chunk[j].source_file, chunk[j].source_key) for j in todo]
            targets = self._generate([chunk[j] for j in todo], [s.image for s in sources])  # type: ignore[misc]
            for j, src, target in zip(todo, sources, targets):
                pr = chunk[j]
                if target is None:
                    rows[j] = self._row(pr, src, reject_reason=GENERATION_FAILED)
                    continue
                tgt = f"{TGT_DIR}/{pr.id}.png"
                save_png_atomic(target, self.out / tgt)
                identity = clip_t = None
                reason = None
                if face is not None:
                    found = face.detect(target)
                    if found:
                        identity = round(face.cosine(src.face, found[0]), SCORE_DECIMALS)  # type: ignore[arg-type]
                if clip is not None:  # one image per call: scores do not depend on batch composition
                    clip_t = round(float(clip.clip_t([target], [pr.instruction.target_caption])[0]), SCORE_DECIMALS)
                if face is not None and identity is None:
                    reason = NO_FACE_IN_TARGET
                elif face is not None and identity < cfg.min_identity:  # type: ignore[operator]
                    reason = LOW_IDENTITY
                elif clip is not None and clip_t < cfg.min_clip_t:  # type: ignore[operator]
                    reason = LOW_CLIP_T
                rows[j] = self._row(pr, src, target=tgt, identity_sim=identity, clip_t=clip_t,
                                    passed=reason is None, reject_reason=reason)
            _fsync_dir(self.out / TGT_DIR)
        _fsync_dir(self.out / SRC_DIR)
        return rows  # type: ignore[return-value]


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def run_shard(config: BuildConfig, components: Components, opts: RunOptions, source_root: Path,
              plan: Sequence[PlannedRow] | None = None) -> tuple[int, int]:
    """Build this shard's missing rows; returns (rows written now, rows of this shard)."""
    plan = plan if plan is not None else plan_rows(config)
    mine = shard_rows(plan, opts.num_shards, opts.shard_index)
    part = PartFile(part_path(opts.out, opts.num_shards, opts.shard_index))
    own = part.open()
    try:
        done = {r["id"] for r in own}
        for path in sorted((opts.out / PARTS_DIR).glob("part-*.jsonl")):  # rows another sharding already built
            if path != part.path:
                done.update(r["id"] for r in read_part_rows(path))
        builder = RowBuilder(config, components, opts.out, source_root)
        written = 0
        from tqdm import tqdm

        already = sum(r.id in done for r in mine)
        bar = tqdm(total=len(mine), initial=already, unit="row", disable=not opts.progress, dynamic_ncols=True,
                   desc=f"shard {opts.shard_index}/{opts.num_shards}" if opts.num_shards > 1 else "pairs")
        with bar:
            # Fixed batch boundaries over the shard's rows: a redone batch has the same companions as before.
            for start in range(0, len(mine), opts.batch_size):
                chunk = mine[start:start + opts.batch_size]
                if all(r.id in done for r in chunk):
                    continue
                new = [row for row in builder.build(chunk) if row["id"] not in done]
                part.append(new)
                done.update(row["id"] for row in new)
                written += len(new)
                bar.update(len(new))
    finally:
        part.close()
    return written, len(mine)


# ------------------------------------------------------------------------------------------------ sources
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def export_hub_dataset(dataset_id: str, folder: Path, *, split: str = "train", image_column: str = "image",
                       max_sources: int | None = None) -> Path:
    """Save a Hub dataset's images as ``folder/000000.png``, ... (once; resumable) and return ``folder``.

    An image that cannot be decoded becomes an empty ``.png`` file, so that its rows are recorded as
    ``unreadable_source`` like any corrupt file.
    """
    try:
        import datasets
    except ImportError:
        raise BuildError(
            f"--sources {dataset_id!r} is not an existing folder. If it is a Hugging Face dataset id, reading it needs "
            f"the `datasets` package (pip install datasets), or download the dataset's images into a folder (e.g. "
            f"`huggingface-cli download --repo-type dataset {dataset_id} --local-dir DIR`) and pass --sources DIR"
        ) from None
    import PIL.Image

    marker = folder / ".complete.json"
    if marker.is_file():
        return folder
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, no such dataset, no such split, ...
        raise BuildError(f"cannot load the dataset {dataset_id!r} (split {split!r}): {type(exc).__name__}: {exc}. "
                         "If you meant a local folder: it does not exist") from exc
    if image_column not in ds.column_names:
        raise BuildError(f"dataset {dataset_id!r} (split {split!r}) has no column {image_column!r}; its columns: "
                         f"{', '.join(ds.column_names)} (choose one with --image-column)")
    n = len(ds) if max_sources is None else min(len(ds), max_sources)
    for i in range(n):
        dst = folder / f"{i:06d}.png"
        if dst.is_file():
            continue
        try:
            image = ds[i][image_column]
            if isinstance(image, dict):  # undecoded {"bytes", "path"}
                import io

                image = PIL.Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else PIL.Image.open(
                    image["path"])
            if not isinstance(image, PIL.Image.Image):
                raise TypeError(f"column {image_column!r} holds {type(image).__name__}, not an image")
            save_png_atomic(image.convert("RGB"), dst)
        except Exception as exc:
            logger.warning("dataset row %d: cannot decode its image (%s); recorded as unreadable", i, exc)
            atomic_write_bytes(dst, b"")
    atomic_write_bytes(marker, json.dumps({"dataset": dataset_id, "split": split, "rows": n}).encode("utf-8"))
    return folder


def resolve_sources(sources: str, out: Path, *, split: str, image_column: str,
                    max_sources: int | None) -> tuple[Path, list[str]]:
    """The source folder and its sorted image files (a Hub id is exported under ``out`` first)."""
    path = Path(sources).expanduser()
    if path.is_dir():
        root = path.resolve()
    elif path.exists():
        raise BuildError(f"--sources {sources} is a file; pass the folder that holds the portraits")
    elif _HUB_ID.match(sources):
        root = export_hub_dataset(sources, out / HUB_SOURCES_DIR, split=split, image_column=image_column,
                                  max_sources=max_sources).resolve()
    else:
        raise BuildError(f"--sources {sources}: no such folder (pass a folder of portraits or a Hub dataset id)")
    out_dir = out.expanduser().resolve()
    files = find_sources(root, exclude=None if root.is_relative_to(out_dir) else out_dir)  # never our own images
    if not files:
        raise BuildError(f"no images found in {root} (looked for {', '.join(IMAGE_SUFFIXES)}, in subfolders too)")
    if max_sources is not None:
        files = files[:max_sources]
    return root, files


# ------------------------------------------------------------------------------------------------ CLI
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


# (world size, rank, local rank) variables of the launchers: torchrun / `accelerate launch` (GPUs), and the MPI
# launchers `accelerate launch` uses for several CPU processes (the same variables accelerate's PartialState reads).
_LAUNCHER_VARS = (("WORLD_SIZE", "RANK", "LOCAL_RANK"),
                  ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
                  ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
                  ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"))


def shard_from_environment(env: dict[str, str] | None = None) -> tuple[int, int, str | None]:
    """(num_shards, shard_index, device or None) of a multi-process launch, read from the launcher's environment.

    ``accelerate launch`` and ``torchrun`` set ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; accelerate's multi-CPU
    (MPI) launch sets the Open MPI / MPICH / MVAPICH equivalents. With a local rank and CUDA, the device is
    ``cuda:<local rank>``. No process group is opened: shards never talk to each other. A plain run is
    ``(1, 0, None)``.
    """
    env = dict(os.environ) if env is None else env
    for size_var, rank_var, local_var in _LAUNCHER_VARS:
        world = int(env.get(size_var) or 1)
        if world <= 1:
            continue
        rank = int(env.get(rank_var) or 0)
        if not 0 <= rank < world:
            raise BuildError(f"{rank_var}={rank} is outside {size_var}={world}")
        local = env.get(local_var)
        return world, rank, (f"cuda:{int(local)}" if local is not None and _cuda_available() else None)
    return 1, 0, None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.build_dataset", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io_ = p.add_argument_group("input / output")
    io_.add_argument("--sources", help="folder of source portraits (searched recursively), or a Hub dataset id")
    io_.add_argument("--out", required=True, type=Path, help="dataset folder (created; resumed if it exists)")
    io_.add_argument("--split", default="train", help="Hub dataset split (default: train)")
    io_.add_argument("--image-column", default="image", help="Hub dataset image column (default: image)")
    io_.add_argument("--max-sources", type=int, help="use only the first N sources (sorted by path)")
    io_.add_argument("--limit", type=int, help="build at most N rows (the first N of the plan)")
    io_.add_argument("--resolution", type=int, default=512, help="long side of sources and targets (default: 512)")
    ins = p.add_argument_group("instructions")
    ins.add_argument("--instructions", type=Path, help="JSONL/JSON/YAML of {instruction, target_caption, category} "
                     "records, instead of the templates")
    ins.add_argument("--instructions-per-source", type=int, default=0,
                     help="instructions drawn per source (seeded); 0 = every instruction (default)")
    ins.add_argument("--paraphrases", type=int, default=3, help="template paraphrases per concept (default: 3)")
    ins.add_argument("--combos", type=int, default=12, help="template multi-edit instructions (default: 12)")
    ins.add_argument("--categories", default=",".join(CATEGORIES),
                     help=f"template categories, comma-separated (default: all: {','.join(CATEGORIES)})")
    ins.add_argument("--seed", type=int, default=0, help="global seed: instructions, sampling, per-row seeds")
    gen = p.add_argument_group("generator")
    gen.add_argument("--generator", default="instructpix2pix", help="method registry name (default: instructpix2pix)")
    gen.add_argument("--generator-model", help="the generator's model: a local folder or Hub id[@revision]")
    gen.add_argument("--steps", type=int, help="inference steps (default: the generator's)")
    gen.add_argument("--guidance-scale", type=float, help="text guidance (default: the generator's)")
    gen.add_argument("--image-guidance-scale", type=float, help="image guidance (default: the generator's)")
    gen.add_argument("--device", help="torch device (default: cuda:<local rank> under a launcher, cuda, else cpu)")
    gen.add_argument("--dtype", choices=sorted(_DTYPES), help="default: float16 on CUDA, else float32")
    gen.add_argument("--batch-size", type=int, default=1, help="rows generated per call (default: 1)")
    flt = p.add_argument_group("filters")
    flt.add_argument("--face-pack", default="buffalo_l", help="insightface pack name or folder (default: buffalo_l)")
    flt.add_argument("--det-size", type=int, default=640, help="face detector input size (default: 640)")
    flt.add_argument("--det-thresh", type=float, default=0.5, help="face detector threshold (default: 0.5)")
    flt.add_argument("--min-identity", type=float, default=0.4,
                     help="minimum ArcFace cosine source vs target (default: 0.4)")
    flt.add_argument("--no-face-filter", action="store_true", help="no face detection / identity filter")
    flt.add_argument("--clip", help="CLIP variant (e.g. ViT-L/14) or weights file (default: the config's clip)")
    flt.add_argument("--min-clip-t", type=float, default=0.2, help="minimum CLIP-T of target vs caption "
                     "(default: 0.2)")
    flt.add_argument("--no-clip-filter", action="store_true", help="no CLIP-T filter")
    sh = p.add_argument_group("sharding")
    sh.add_argument("--num-shards", type=int,
                    help="number of processes (default: the launcher's WORLD_SIZE, else 1)")
    sh.add_argument("--shard-index", type=int, help="this process's shard, 0-based (default: its rank)")
    sh.add_argument("--merge", action="store_true", help="only merge the part files of --out into the manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _config_from_args(args: argparse.Namespace, files: list[str], dtype: str) -> BuildConfig:
    if args.instructions is not None:
        try:
            instructions = load_instructions(args.instructions)
        except ValueError as exc:
            raise BuildError(str(exc)) from exc
    else:
        cats = tuple(c.strip() for c in args.categories.split(",") if c.strip())
        try:
            instructions = template_instructions(args.seed, paraphrases=args.paraphrases, combos=args.combos,
                                                 categories=cats)
        except ValueError as exc:
            raise BuildError(str(exc)) from exc
    return BuildConfig(
        source_files=files, instructions=[i.to_dict() for i in instructions],
        instructions_from="file" if args.instructions is not None else "templates",
        instructions_per_source=args.instructions_per_source, seed=args.seed, limit=args.limit,
        max_sources=args.max_sources, resolution=args.resolution, generator=args.generator,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale, dtype=dtype,
        face_filter=not args.no_face_filter, min_identity=None if args.no_face_filter else args.min_identity,
        det_size=args.det_size, det_thresh=args.det_thresh,
        clip_filter=not args.no_clip_filter, min_clip_t=None if args.no_clip_filter else args.min_clip_t)


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.merge:
        return
    if not args.sources:
        p.error("--sources is required (unless --merge)")
    for name in ("limit", "max_sources", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.resolution < 8 or args.resolution % 8:
        p.error(f"--resolution must be a positive multiple of 8, got {args.resolution}")
    if args.det_size < 32 or args.det_size % 32:
        p.error(f"--det-size must be a positive multiple of 32, got {args.det_size}")
    if not 0.0 < args.det_thresh < 1.0:
        p.error(f"--det-thresh must be in (0, 1), got {args.det_thresh}")
    if args.instructions_per_source < 0:
        p.error(f"--instructions-per-source must be >= 0, got {args.instructions_per_source}")
    for name in ("min_identity", "min_clip_t"):
        if not -1.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} is a cosine: it must be in [-1, 1], got {getattr(args, name)}")
    if (args.num_shards is None) != (args.shard_index is None):
        p.error("--num-shards and --shard-index go together")
    if args.num_shards is not None and not 0 <= args.shard_index < args.num_shards:
        p.error(f"--shard-index must be in [0, {args.num_shards}), got {args.shard_index}")


def load_components(config: BuildConfig, locations: Locations, device: str) -> Components:
    """Build (and load) the generator and the enabled scorers; ModelNotAvailableError fast when one is missing."""
    import torch

    from instantportrait.methods import get_editor
    from instantportrait.methods.base import EditSettings

    dtype = getattr(torch, config.dtype)
    try:
        editor = get_editor(config.generator, device=device, dtype=dtype, model=locations.generator_model,
                            resolution=config.resolution)
    except KeyError as exc:
        raise BuildError(f"--generator: {exc.args[0]}") from None
    editor.check_available()
    settings = EditSettings(num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                            image_guidance_scale=config.image_guidance_scale)
    face = clip = None
    if config.face_filter:
        from instantportrait.face.encoder import FaceEncoder

        pack: str | Path = Path(locations.face_pack) if Path(locations.face_pack).expanduser().is_dir() \
            else locations.face_pack
        face = FaceEncoder(pack, device=device, det_size=(config.det_size, config.det_size),
                           det_thresh=config.det_thresh).load()
    if config.clip_filter:
        from instantportrait.eval.clip_score import ClipScorer

        clip_dtype = dtype if torch.device(device).type == "cuda" else torch.float32
        if locations.clip is not None and Path(locations.clip).expanduser().is_file():
            clip = ClipScorer(weights=locations.clip, device=device, dtype=clip_dtype)
        else:
            clip = ClipScorer(locations.clip, device=device, dtype=clip_dtype)
        clip.load()
    editor.load()
    generator = {**editor.describe(), "nfe": editor.nfe(settings),  # per target, with these settings
                 "settings": {"num_inference_steps": config.num_inference_steps,
                              "guidance_scale": config.guidance_scale,
                              "image_guidance_scale": config.image_guidance_scale}}
    return Components(editor, settings, face, clip, {
        "generator": generator,
        "face_model": face.describe() if face is not None else None,
        "clip": clip.describe() if clip is not None else None,
    })


def _finish(out: Path, plan: Sequence[PlannedRow], num_shards: int, shard_index: int) -> int:
    """After a shard: merge if every row of every shard exists (so the last shard to finish merges), else say so."""
    if collect_rows(out, plan)[1]:
        print(f"shard {shard_index}/{num_shards} done; other shards are still missing rows. The last shard to "
              f"finish writes the manifest, or run: python -m train.build_dataset --out {out} --merge")
    else:
        print(format_summary(out, merge(out, plan=plan)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the builder; 0 on success (also when other shards still run), 1 on an error, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from instantportrait.errors import InstantPortraitError

    out: Path = args.out
    try:
        if args.merge:
            info = merge(out)
            print(format_summary(out, info))
            return 0
        if args.num_shards is not None:
            num_shards, shard_index, env_device = args.num_shards, args.shard_index, None
        else:
            num_shards, shard_index, env_device = shard_from_environment()
        device = args.device or env_device or ("cuda" if _cuda_available() else "cpu")
        dtype = _DTYPES[args.dtype] if args.dtype else ("float16" if device.startswith("cuda") else "float32")
        root, files = resolve_sources(args.sources, out, split=args.split, image_column=args.image_column,
                                      max_sources=args.max_sources)
        config = _config_from_args(args, files, dtype)
        check_same_config(out, config)  # before loading any model
        plan = plan_rows(config)
        if (out / BUILD_JSON).is_file() and not collect_rows(out, shard_rows(plan, num_shards, shard_index))[1]:
            logger.info("shard %d/%d: every row is already built; nothing to generate", shard_index, num_shards)
            return _finish(out, plan, num_shards, shard_index)
        locations = Locations(sources=str(args.sources), source_root=str(root),
                              instructions_file=str(args.instructions) if args.instructions else None,
                              generator_model=args.generator_model, face_pack=args.face_pack, clip=args.clip)
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # the row bar is the one progress bar
        t0 = time.perf_counter()
        components = load_components(config, locations, device)
        out.mkdir(parents=True, exist_ok=True)
        write_build_json(out, config, locations, components.descriptions)
        opts = RunOptions(out=out, device=device, batch_size=args.batch_size, num_shards=num_shards,
                          shard_index=shard_index, progress=not args.no_progress)
        written, total = run_shard(config, components, opts, root, plan)
        logger.info("shard %d/%d: %d rows built now, %d rows in this shard (%.1f s)", shard_index, num_shards,
                    written, total, time.perf_counter() - t0)
        return _finish(out, plan, num_shards, shard_index)
    except (BuildError, InstantPortraitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
