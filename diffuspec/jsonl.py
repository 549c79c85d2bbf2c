"""JSONL files: written atomically, read with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .files import atomic_write_text


def read_jsonl(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every non-blank line; a missing file or a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (or is not a file)")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """One JSON object per line, atomically (``diffuspec.files``)."""
    return atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
