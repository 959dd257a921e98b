"""Reading JSON Lines files (manifests, instruction sets, benchmark rows) with one rule for a bad line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def jsonl_records(lines: Iterable[str | bytes], where: str | Path, *, error: type[Exception] = ValueError,
                  hint: str = "") -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for every non-blank line (numbered from 1). A line that is not valid JSON raises
    ``error`` with ``"<where>:<n>: not valid JSON (<why>)"`` plus ``hint``: a file we read is never half-trusted."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}:{lineno}: not valid JSON ({exc.msg}){hint}") from exc
        yield lineno, record
