"""Lazy loading and least-recently-used unloading of editors under a memory budget, safe across request threads.

    manager = ModelManager(budget_bytes=20e9)
    manager.add("ipnet", get_editor("ipnet", device="cuda"))
    with manager.use("ipnet") as lease:          # loads on first use, evicting idle models if needed
        images = lease.editor.edit([image], ["wearing a hat"], seed=0)

Rules:

* a model is loaded on its first ``use`` (never at start-up) and its size is then measured (parameter and buffer bytes
  of the modules the editor runs);
* before a load, idle models are unloaded least-recently-used first until the estimate fits the budget; after it,
  again until the measured size fits;
* a model that is in use — being edited with, or waited for by another request — is never unloaded. If the budget
  cannot be met without unloading one, the load goes ahead over budget (a single model larger than the budget must
  still run) and the excess is trimmed as soon as those models become idle;
* edits on one editor run one at a time (diffusers pipelines keep per-call state on their scheduler); edits on
  different editors run in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from instantportrait.methods import Editor

logger = logging.getLogger(__name__)


def editor_nbytes(editor: Editor) -> int:
    """Bytes of the parameters and buffers of every module a loaded editor runs (0 when not loaded; shared tensors
    once): :meth:`Editor.weight_bytes`, the same count the benchmark reports as ``weights_mb``."""
    return editor.weight_bytes()


@dataclass
class _Entry:
    editor: Editor
    estimate: int = 0  # bytes expected before the first load
    nbytes: int = 0  # measured after loading; 0 while unloaded
    users: int = 0  # requests holding or waiting for this editor
    run_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Lease:
    """What ``ModelManager.use`` yields: the loaded editor and how long loading it took in this call (0 if it was
    already loaded)."""

    editor: Editor
    load_seconds: float = 0.0


class ModelManager:
    """Thread-safe LRU cache of loaded editors under ``budget_bytes`` (``None``: no limit)."""

    def __init__(self, budget_bytes: float | None = None, size_of: Callable[[Editor], int] = editor_nbytes) -> None:
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"the memory budget must be positive, got {budget_bytes} bytes")
        self.budget = int(budget_bytes) if budget_bytes is not None else None
        self.size_of = size_of
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _entries and the byte counts
        self._load_lock = threading.Lock()  # one load at a time: peak memory is one model above the budget at most
        self.evictions: list[str] = []  # names in the order they were unloaded (for logs and tests)

    # ------------------------------------------------------------------ registry
    def add(self, name: str, editor: Editor, estimate_bytes: int = 0) -> None:
        """Register an (unloaded) editor under ``name``; ``estimate_bytes`` is its expected size before loading."""
        with self._lock:
            if name in self._entries:
                raise ValueError(f"an editor named {name!r} is already managed")
            self._entries[name] = _Entry(editor, estimate=int(estimate_bytes))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def editor(self, name: str) -> Editor:
        """The managed editor (loaded or not)."""
        return self._entry(name).editor

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no editor named {name!r} is managed; managed: {', '.join(self._entries)}") from None

    # ------------------------------------------------------------------ state
    def loaded(self) -> list[str]:
        """Names of loaded editors, least recently used first."""
        with self._lock:
            return [n for n, e in self._entries.items() if e.editor.is_loaded]

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if e.editor.is_loaded)

    def in_use(self) -> list[str]:
        with self._lock:
            return [n for n, e in self._entries.items() if e.users > 0]

    # ------------------------------------------------------------------ eviction
    def _evict_until(self, needed: int, keep: str | None) -> None:
        """Unload idle models, least recently used first, until ``used + needed <= budget``. Holds ``_lock``."""
        if self.budget is None:
            return
        used = sum(e.nbytes for e in self._entries.values() if e.editor.is_loaded)
        for name, entry in list(self._entries.items()):
            if used + needed <= self.budget:
                break
            if name == keep or entry.users > 0 or not entry.editor.is_loaded:
                continue
            entry.editor.unload()
            used -= entry.nbytes
            entry.nbytes = 0
            self.evictions.append(name)
            logger.info("unloaded %s (least recently used) to stay within the memory budget", name)
        if used + needed > self.budget:
            logger.warning("memory budget exceeded: %.2f GB needed, %.2f GB budget; the models in use stay loaded",
                           (used + needed) / 1e9, self.budget / 1e9)

    def evict_idle(self) -> list[str]:
        """Unload every idle model (e.g. after an out-of-memory error); returns their names."""
        with self._lock:
            names = []
            for name, entry in self._entries.items():
                if entry.users == 0 and entry.editor.is_loaded:
                    entry.editor.unload()
                    entry.nbytes = 0
                    names.append(name)
            self.evictions.extend(names)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return names

    # ------------------------------------------------------------------ use
    @contextmanager
    def use(self, name: str) -> Iterator[Lease]:
        """Hold ``name`` for one edit: wait for the editor's previous edit, load it if needed, mark it used."""
        with self._lock:
            entry = self._entry(name)
            entry.users += 1
            self._entries.move_to_end(name)  # most recently used
        try:
            with entry.run_lock:
                load_s = 0.0
                if not entry.editor.is_loaded:
                    load_s = self._load(name, entry)
                yield Lease(entry.editor, load_s)
        finally:
            with self._lock:
                entry.users -= 1
                self._entries.move_to_end(name)
                self._evict_until(0, keep=None)  # trim an over-budget state once models become idle

    def _load(self, name: str, entry: _Entry) -> float:
        with self._load_lock:
            with self._lock:
                self._evict_until(entry.nbytes or entry.estimate, keep=name)
            t0 = time.perf_counter()
            entry.editor.load()
            seconds = time.perf_counter() - t0
            size = self.size_of(entry.editor)
            with self._lock:
                entry.nbytes = entry.estimate = size
                self._evict_until(0, keep=name)
        logger.info("loaded %s in %.1f s (%.2f GB)", name, seconds, size / 1e9)
        return seconds
