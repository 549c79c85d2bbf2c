"""Reading training data and held-out prompts, with the checks that must fail before any model loads.

The data schema is the one ``diffuspec.datagen`` writes: ``prompt_ids`` and ``completion_ids`` (list[int]),
optionally ``teacher_topk_ids`` / ``teacher_topk_logprobs`` (list[list[int | float]], [completion_len, K]).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from .collator import REQUIRED_COLUMNS, TEACHER_COLUMNS


def _load_one(path: str | os.PathLike) -> datasets.Dataset:
    path = Path(path)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"{path}: a DatasetDict needs a 'train' split, found {sorted(loaded)}")
            loaded = loaded["train"]
        return loaded
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    if path.suffix in (".jsonl", ".json"):
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise ValueError(f"{path}: expected a .jsonl / .json / .parquet file or a datasets folder (save_to_disk)")


def load_examples(paths: Sequence[str | os.PathLike]) -> datasets.Dataset:
    """Concatenate the prompt / completion datasets at ``paths`` (JSONL, parquet or save_to_disk folders)."""
    parts = [_load_one(p) for p in paths]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def check_examples(dataset: datasets.Dataset, source: str = "the training data") -> bool:
    """Raise ``ValueError`` if ``dataset`` is empty or lacks columns; returns whether it has teacher top-k."""
    columns = set(dataset.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{source} lacks columns {missing} (has {sorted(columns)}); expected {list(REQUIRED_COLUMNS)}")
    teacher = [c for c in TEACHER_COLUMNS if c in columns]
    if len(teacher) == 1:
        raise ValueError(
            f"{source} has {teacher[0]} without its pair; teacher top-k needs both {list(TEACHER_COLUMNS)}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{source} is empty")
    return len(teacher) == 2


def load_prompts(path: str | os.PathLike, limit: int) -> list[list[int]]:
    """The first ``limit`` ``prompt_ids`` of a held-out file or folder (other columns are ignored)."""
    dataset = _load_one(path)
    if "prompt_ids" not in dataset.column_names:
        raise ValueError(f"{path} has no prompt_ids column (has {dataset.column_names})")
    prompts = [list(p) for p in dataset.select(range(min(limit, len(dataset))))["prompt_ids"]]
    if not prompts or not all(prompts):
        raise ValueError(f"{path}: held-out prompts must be non-empty")
    return prompts
