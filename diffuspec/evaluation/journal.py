"""A run's resume journal: every finished (repeat, prompt) group of generate calls, appended as it ends.

A real-model evaluation runs for hours; a kill must not lose what was measured. ``measure`` appends the records
of one prompt's interleaved calls (every method, one repeat) as one fsynced write, so a group is either fully in
the journal or redone, and the interleaving of methods within a prompt is kept. The first line fingerprints what
the numbers depend on (the recipe, less where it is written, and each local model folder's files); a journal of
another recipe or of rebuilt models is started over, never mixed in. The harness removes it once the reports are
written, so running the command again measures again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .records import Record

JOURNAL_FILE = "journal.jsonl"
VOLATILE = ("output_dir", "progress", "model_card", "resume")  # settings that do not change a number


def folder_stamp(name: str) -> Any:
    """Names, sizes and modification times of a local model folder's files (a rebuilt model changes them); a Hub
    id or a missing path stands for itself."""
    path = Path(name)
    if not path.is_dir():
        return [name, path.stat().st_mtime_ns] if path.is_file() else name
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir()) if f.is_file()]


def recipe_fingerprint(settings: dict[str, Any], model_paths: Iterable[str]) -> str:
    """What a journal must match to be resumed: the settings (less ``VOLATILE``) and the models' files."""
    kept = {k: v for k, v in settings.items() if k not in VOLATILE}
    blob = json.dumps({"settings": kept, "models": {p: folder_stamp(p) for p in sorted(set(model_paths))}},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Journal:
    """``done[(repeat, prompt)]``: the journal's records of that group; ``add`` appends a finished group."""

    def __init__(self, path: str | os.PathLike, fingerprint: str, log=print) -> None:
        self.path = Path(path)
        self.done: dict[tuple[int, int], list[Record]] = {}
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        if lines and _header(lines[0]) == fingerprint:
            for line in lines[1:]:
                try:
                    rows = json.loads(line)
                except json.JSONDecodeError:  # the write a kill cut short: that group is redone
                    break
                records = [Record(**row) for row in rows]
                self.done[(records[0].repeat, records[0].prompt)] = records
            log(f"resuming from {self.path}: {len(self.done)} prompt groups already measured")
        elif lines:
            log(f"{self.path} belongs to another recipe or to rebuilt models; starting over")
        header = json.dumps({"fingerprint": fingerprint}) + "\n"  # rewritten without a cut-short tail
        atomic_write_text(self.path, header + "".join(_line(group) for group in self.done.values()))

    def add(self, records: Sequence[Record]) -> None:
        with self.path.open("a") as f:
            f.write(_line(records))
            f.flush()
            os.fsync(f.fileno())
        self.done[(records[0].repeat, records[0].prompt)] = list(records)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _header(line: str) -> str | None:
    try:
        return json.loads(line).get("fingerprint")
    except (json.JSONDecodeError, AttributeError):
        return None


def _line(records: Iterable[Record]) -> str:
    return json.dumps([{**r.to_json(), "tokens": r.tokens} for r in records]) + "\n"
