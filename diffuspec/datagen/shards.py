"""Step 4 of data generation: per-rank shard files that a kill cannot corrupt, and resumption from them.

Rows are appended in chunks to ``OUT.shards/rank-R-of-W.jsonl``, one write and fsync per chunk. A kill can only tear
the last line, which the owner drops on restart; ids already in any shard are skipped. Each rank marks its shard
done; rank 0 waits for every marker (a file, not a collective barrier: ranks may finish hours apart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import write_json
from .prompts import PromptRow

logger = logging.getLogger(__name__)

PARAMS_FILE = "params.json"  # in the shards folder: what a resumed run must match


@dataclass(frozen=True)
class ShardEntry:
    """Where one finished row sits in the shards (read back by offset at merge time)."""

    path: Path
    offset: int
    length: int
    prompt_digest: str
    skip: str | None


def shard_path(shards: Path, rank: int, world_size: int) -> Path:
    return shards / f"rank-{rank:05d}-of-{world_size:05d}.jsonl"


def done_marker(shards: Path, rank: int, world_size: int) -> Path:
    """Written by a rank when its shard is complete; rank 0 waits for all of them before merging."""
    return shard_path(shards, rank, world_size).with_suffix(".done")


def wait_for_shards(shards: Path, world_size: int, poll_s: float = 1.0) -> None:
    """Wait on the file system rather than a collective barrier: ranks may finish hours apart, far beyond a
    process group's timeout. A crashed rank ends the whole launch (torchrun / accelerate), so this cannot hang."""
    logged = False
    while missing := [r for r in range(world_size) if not done_marker(shards, r, world_size).exists()]:
        if not logged:
            logger.info("waiting for ranks %s to finish their shards", missing)
            logged = True
        time.sleep(poll_s)


def prompt_digest(prompt_ids: Sequence[int]) -> str:
    return hashlib.blake2b(json.dumps(list(prompt_ids)).encode(), digest_size=8).hexdigest()


def repair_shard(path: Path) -> int:
    """Cut a torn last line (no trailing newline: a write killed midway) off the owner's shard; bytes dropped."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    with path.open("rb+") as handle:
        end = size
        while end > 0:  # scan back to the last newline
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            cut = block.rfind(b"\n")
            if cut != -1:
                end = start + cut + 1
                break
            end = start
        if end < size:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return size - end


def append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append a chunk as one write followed by fsync: after a kill the file ends in whole lines or one torn line."""
    if not records:
        return
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    with path.open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def scan_shards(shards: Path) -> dict[str, ShardEntry]:
    """Index every complete row of every shard (any world size). An unterminated last line is ignored; a
    complete line that is not a record is corruption and an error. The first copy of a repeated id wins."""
    index: dict[str, ShardEntry] = {}
    for path in sorted(shards.glob("rank-*.jsonl")):
        offset = 0
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    break  # torn tail of a killed write
                try:
                    record = json.loads(line)
                    row_id, prompt = record["id"], record["prompt_ids"]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{path}:{number}: corrupt shard line ({error}); delete the file to redo it"
                    ) from error
                if row_id not in index:
                    index[row_id] = ShardEntry(path, offset, len(line), prompt_digest(prompt), record.get("skip"))
                offset += len(line)
    return index


def check_params(shards: Path, params: dict[str, Any]) -> None:
    """A resumed run must generate exactly as the first one did; otherwise the rows would mix settings."""
    stored = json.loads((shards / PARAMS_FILE).read_text(encoding="utf-8"))
    differ = sorted(k for k in set(stored) | set(params) if stored.get(k) != params.get(k))
    if differ:
        changes = ", ".join(f"{k}: {stored.get(k)!r} -> {params.get(k)!r}" for k in differ)
        raise ValueError(f"{shards} was generated with other settings ({changes}); use another --out or delete it")


def write_params(shards: Path, params: dict[str, Any]) -> None:
    shards.mkdir(parents=True, exist_ok=True)
    path = shards / PARAMS_FILE
    if not path.exists():
        write_json(path, params)


def check_resumed_rows(rows: Sequence[PromptRow], done: dict[str, ShardEntry]) -> None:
    """A row already in the shards must have been generated from the same prompt tokens."""
    for row in rows:
        entry = done.get(row.id)
        if entry is not None and entry.prompt_digest != prompt_digest(row.prompt_ids):
            raise ValueError(
                f"row {row.id!r} in {entry.path} was generated from a different prompt (the prompts or the "
                "tokenizer changed); use another --out or delete the shards"
            )


def run_shard(
    rows: Sequence[PromptRow],
    backend: Any,
    path: Path,
    done: dict[str, ShardEntry],
    chunk_size: int,
    progress: bool = True,
) -> int:
    """Generate this rank's rows that no shard holds yet, appending a chunk at a time; returns rows written."""
    from tqdm.auto import tqdm

    todo = [row for row in rows if row.id not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=path.stem, disable=not progress)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        records = [{"id": r.id, "prompt_ids": r.prompt_ids, "skip": r.skip} for r in chunk if r.skip]
        records += backend([r for r in chunk if r.skip is None]) if any(r.skip is None for r in chunk) else []
        append_records(path, records)
        bar.update(len(chunk))
    bar.close()
    return len(todo)
