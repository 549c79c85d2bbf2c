"""One generate call's record: what the timing loop measures, the journal keeps and the statistics read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Record:
    """One generate call. ``repeat`` is -1 for a warm-up call (kept only when it failed)."""

    method: str
    repeat: int
    prompt: int
    task: str
    qid: str
    turn: int
    new_tokens: int = 0
    time_s: float | None = None
    accepted: list[int] | None = None
    path_lengths: list[int] | None = None
    draft_lengths: list[int] | None = None
    depths: list[int] | None = None
    split: dict[str, float] | None = None
    peak_memory_bytes: int | None = None
    note: str | None = None
    error: str | None = None
    tokens: list[int] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.repeat >= 0 and self.error is None

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        del row["tokens"]
        return row
