"""Crash-safe, append-only JSONL files: one record a line, flushed and fsynced per record.

A killed writer leaves at most one partial last line; :func:`read_jsonl` with ``repair=True`` truncates it (the
partial text is kept in ``<file>.partial`` for inspection), so a resumed run appends after the last whole record.
Several processes never share a file: each writes its own part (``parts/<stem>.rank<i>.jsonl``) and rank 0 merges
the parts into the main file with :func:`merge_parts`, skipping keys already there, so a (method, image,
instruction, seed) key is written once however the run was interrupted and resumed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import PIL.Image

logger = logging.getLogger(__name__)

KEY_FIELDS = ("method", "image", "instruction_id", "seed")
PARTS_DIR = "parts"


def row_key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    """The identity of a sample: (method, image id, instruction id, seed)."""
    return (str(row["method"]), str(row["image"]), str(row["instruction_id"]), int(row["seed"]))


def jsonable(value: Any) -> Any:
    """NaN/inf become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(jsonable(record), ensure_ascii=False, allow_nan=False, sort_keys=False)


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """All whole records of ``path`` ([] if it does not exist).

    A last line without its newline, or one that is not valid JSON, is a write cut short: it is ignored, and with
    ``repair=True`` cut from the file. An invalid line elsewhere is skipped with a warning (never silently).
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        end = pos + len(raw) + 1  # byte after this line's newline
        is_last_piece = i == len(lines) - 1
        if is_last_piece:  # bytes after the final newline: empty, or a cut-short write
            break
        pos_line, pos = pos, end
        if not raw.strip():
            good_end = end
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if i == len(lines) - 2 and not lines[-1]:  # the last complete line is garbage: a torn write
                break
            logger.warning("%s: skipping an invalid line at byte %d", path, pos_line)
            good_end = end
            continue
        records.append(rec)
        good_end = end
    if good_end < len(data):
        tail = data[good_end:]
        if repair:
            with open(path.with_name(path.name + ".partial"), "ab") as f:
                f.write(tail + b"\n")
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
            logger.warning("%s: removed a partial last line of %d bytes (a write cut short; kept in %s.partial)",
                           path, len(tail), path.name)
    return records


class JsonlAppender:
    """Appends records to one file, each flushed and fsynced before ``write`` returns (repairs the file first)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        read_jsonl(self.path, repair=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self.written = 0

    def write(self, record: dict[str, Any]) -> None:
        line = dumps(record) + "\n"
        self._f.write(line)
        self._f.flush()
        os.fsync(self._f.fileno())
        self.written += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def append_records(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Append ``records`` (fsynced once at the end); returns how many."""
    app = JsonlAppender(path)
    n = 0
    try:
        for rec in records:
            line = dumps(rec) + "\n"
            app._f.write(line)
            n += 1
        app._f.flush()
        os.fsync(app._f.fileno())
    finally:
        app.close()
    return n


def part_path(out: str | Path, stem: str, rank: int) -> Path:
    return Path(out) / PARTS_DIR / f"{stem}.rank{rank}.jsonl"


def part_files(out: str | Path, stem: str) -> list[Path]:
    return sorted((Path(out) / PARTS_DIR).glob(f"{stem}.rank*.jsonl"))


def read_all(out: str | Path, stem: str) -> list[dict[str, Any]]:
    """Records of ``<stem>.jsonl`` followed by those of every part file (not deduplicated)."""
    records = read_jsonl(Path(out) / f"{stem}.jsonl")
    for part in part_files(out, stem):
        records += read_jsonl(part)
    return records


def merge_parts(out: str | Path, stem: str, key: Callable[[dict[str, Any]], Any] | None = None) -> int:
    """Append the part files' records to ``<stem>.jsonl`` (skipping keys already present when ``key`` is given),
    then delete the parts. Returns how many records were appended. Interrupted, it can simply be run again."""
    main = Path(out) / f"{stem}.jsonl"
    parts = part_files(out, stem)
    if not parts:
        return 0
    seen = {key(r) for r in read_jsonl(main, repair=True)} if key else set()
    new: list[dict[str, Any]] = []
    for part in parts:
        for rec in read_jsonl(part):
            k = key(rec) if key else None
            if key is not None:
                if k in seen:
                    continue
                seen.add(k)
            new.append(rec)
    n = append_records(main, new) if new else 0
    for part in parts:
        part.unlink()
        partial = part.with_name(part.name + ".partial")
        if partial.exists():
            partial.unlink()
    return n


def dedupe(records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any] = row_key) -> list[dict]:
    """First record per key, in order."""
    seen: set[Any] = set()
    out = []
    for rec in records:
        k = key(rec)
        if k not in seen:
            seen.add(k)
            out.append(rec)
    return out


class AsyncRowWriter:
    """A background thread that saves each row's output image, then appends and fsyncs the row.

    The timed edit loop only hands a row over (a queue put), so PNG encoding and fsync overlap the next edit instead
    of adding to the harness time. A row reaches the file only after its image is on disk; rows still queued when
    the process is killed are simply redone on resume. An error in the thread is re-raised by the next
    ``put``/``drain``/``close``.
    """

    def __init__(self, appender: JsonlAppender, max_queue: int = 64, png_compress_level: int = 1):
        self.appender = appender
        self.png_compress_level = png_compress_level
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="benchmark-row-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                row, image, image_path = item
                if self._error is None:
                    if image is not None and image_path is not None:
                        image_path.parent.mkdir(parents=True, exist_ok=True)
                        image.save(image_path, compress_level=self.png_compress_level)
                    self.appender.write(row)
            except BaseException as exc:  # surfaced in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing benchmark results failed: {err}") from err

    def put(self, row: dict[str, Any], image: PIL.Image.Image | None = None, image_path: Path | None = None) -> None:
        self._raise()
        self._queue.put((row, image, image_path))

    def drain(self) -> None:
        """Block until every queued row is on disk."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.appender.close()
        self._raise()
