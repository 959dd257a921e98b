"""A build on disk: atomic writes, the per-shard part files, ``build.json``, and the merge into
``manifest.jsonl`` + ``dataset.json`` (the ``instantportrait-pairs/1`` format the trainers read).
See :mod:`train.build_dataset.plan` for why every write is atomic and every part file append-only."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import PIL.Image  # already loaded by the dataset reader this module imports

from instantportrait.jsonl import jsonl_records
from instantportrait.training.data import FORMAT
from train.build_dataset.plan import (
    BUILD_FORMAT,
    BUILD_JSON,
    DATASET_JSON,
    GENERATION_FAILED,
    MANIFEST,
    NO_FACE_IN_SOURCE,
    NO_FACE_IN_TARGET,
    PARTS_DIR,
    REJECT_REASONS,
    ROW_KEYS,
    UNREADABLE_SOURCE,
    BuildConfig,
    BuildError,
    Locations,
    PlannedRow,
    plan_rows,
)

logger = logging.getLogger(__name__)  # a child of "train.build_dataset"

_HOST = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"


# ------------------------------------------------------------------------------------------------ files
def fsync_dir(folder: Path) -> None:
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
    hint = ("; only a torn *last* line is repaired automatically, so this file was changed by something else: "
            "delete the line")
    for n, row in jsonl_records(lines, path, error=BuildError, hint=hint):
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
    face = (info.get("face_model") or {}).get("backend") or "face"
    id_rule = f"{face} cosine >= {th['identity_sim']}" if th["identity_sim"] is not None else "filter off"
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

