"""Step 5 of data generation: the shards merged, in prompt order, into one ``datasets`` folder with its metadata.

The folder is built in a temporary sibling and renamed into place (``save_to_disk`` plus ``metadata.json``), so a
reader never sees half a dataset; only a folder this module wrote may be replaced.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from ..files import replace_folder_atomically, write_json
from .shards import ShardEntry, scan_shards

SCHEMA = "diffuspec-data-v1"
METADATA_FILE = "metadata.json"


def dataset_features(teacher_topk: int) -> datasets.Features:
    """The exact schema of a generated dataset (see the module docstring)."""
    columns = {
        "id": datasets.Value("string"),
        "prompt_ids": datasets.List(datasets.Value("int32")),
        "completion_ids": datasets.List(datasets.Value("int32")),
    }
    if teacher_topk > 0:
        columns["teacher_topk_ids"] = datasets.List(datasets.List(datasets.Value("int32")))
        columns["teacher_topk_logprobs"] = datasets.List(datasets.List(datasets.Value("float32")))
    return datasets.Features(columns)


def _checked_row(record: dict[str, Any], teacher_k: int, where: str) -> dict[str, Any]:
    row = {"id": record["id"], "prompt_ids": record["prompt_ids"], "completion_ids": record["completion_ids"]}
    if not row["prompt_ids"] or not row["completion_ids"]:
        raise ValueError(f"{where}: empty prompt or completion")
    if teacher_k:
        n = len(row["completion_ids"])
        ids, logprobs = record["teacher_topk_ids"], record["teacher_topk_logprobs"]
        if (
            len(ids) != n
            or len(logprobs) != n
            or any(len(a) != teacher_k or len(b) != teacher_k for a, b in zip(ids, logprobs, strict=True))
        ):
            raise ValueError(f"{where}: teacher top-k must be [{n} completion tokens, {teacher_k}]")
        row["teacher_topk_ids"], row["teacher_topk_logprobs"] = ids, logprobs
    return row


def _read_rows(entries: list[ShardEntry], teacher_k: int) -> Iterator[dict[str, Any]]:
    handles: dict[Path, Any] = {}
    try:
        for entry in entries:
            if entry.path not in handles:
                handles[entry.path] = entry.path.open("rb")
            handle = handles[entry.path]
            handle.seek(entry.offset)
            record = json.loads(handle.read(entry.length))
            yield _checked_row(record, teacher_k, f"{entry.path}@{entry.offset}")
    finally:
        for handle in handles.values():
            handle.close()


def check_out_dir(out: Path) -> None:
    """Only a folder this module wrote (or an empty one) may be replaced; refuse anything else up front."""
    if out.exists() and any(out.iterdir()) and not (out / METADATA_FILE).is_file():
        raise FileExistsError(
            f"{out} exists and is not a diffuspec dataset (no {METADATA_FILE}); refusing to replace it"
        )


def merge_shards(shards: Path, ids: Sequence[str], out: Path, metadata: dict[str, Any]) -> datasets.Dataset:
    """Write the rows ``ids`` (prompt order) from the shards to ``out`` with ``metadata.json``; atomic."""
    teacher_k = int(metadata["teacher_topk"])
    index = scan_shards(shards)
    missing = [i for i in ids if i not in index]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(ids)} rows have no record in {shards} (first: {missing[:5]}); a process "
            "stopped early: rerun the same command to finish them"
        )
    skipped = {i: index[i].skip for i in ids if index[i].skip is not None}
    kept = [index[i] for i in ids if index[i].skip is None]
    if not kept:
        raise ValueError(f"every prompt was skipped ({next(iter(skipped.values()))}); nothing to save")
    check_out_dir(out)
    features = dataset_features(teacher_k)

    def fill(folder: Path) -> None:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.cache-") as cache:
            dataset = datasets.Dataset.from_generator(
                _read_rows,
                gen_kwargs={"entries": kept, "teacher_k": teacher_k},
                features=features,
                cache_dir=cache,
                fingerprint=uuid.uuid4().hex,  # never reuse a cached build: the shards may have changed
            )
            if dataset.features != features or len(dataset) != len(kept):
                raise RuntimeError(f"merged dataset has {len(dataset)} rows / {dataset.features}, expected {len(kept)}")
            dataset.save_to_disk(str(folder))
        write_json(
            folder / METADATA_FILE, {**metadata, "rows": len(kept), "skipped": skipped, "columns": list(features)}
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    replace_folder_atomically(fill, out, overwrite=True)
    return datasets.load_from_disk(str(out))


def read_metadata(out: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out) / METADATA_FILE).read_text(encoding="utf-8"))
