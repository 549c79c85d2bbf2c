"""Offline verifier features for the conditioned drafter: computed once, stored in shards, read by the collator.

Online training runs the frozen verifier on every batch. Offline, ``precompute_features`` runs it once per row of
the alignment dataset and writes ``features-NNNNN.safetensors`` shards (one flat ``[tokens, F]`` tensor and the
row offsets each), plus ``features.json`` with what they were computed from. Every shard is written to a
temporary name and renamed when complete, so a killed run leaves only whole shards, and a rerun computes just the
missing ones. The disk size is printed before anything is written (``F = len(feature_layers) x hidden``: 3 x 4096
x 2 bytes is 24.6 KB per token for an 8B verifier). Sharded across processes under ``accelerate launch``.

The rows are cut exactly as the collator cuts them (``max_prompt_length`` / ``max_completion_length``): a feature
depends on the whole prefix, so the stored rows must be the rows trained on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..dtypes import DTYPE_NAMES, check_dtype_name, resolve_dtype
from ..files import atomic_path, atomic_write_text
from ..models.conditioned import spread_feature_layers, verifier_features
from .collator import cut_row

META_FILE = "features.json"
STORED_DTYPES = ("float32", "bfloat16", "float16")  # what a feature shard may hold


@dataclass
class FeatureArguments:
    """The flags of ``train/precompute_features.py``."""

    verifier: str = field(metadata={"help": "Verifier folder or Hub id (the name training checks)."})
    dataset_path: list[str] = field(metadata={"help": "prompt_ids / completion_ids data (files or folders)."})
    out: str = field(metadata={"help": "Feature folder (created; resumed when it exists)."})
    feature_layers: list[int] | None = field(default=None, metadata={"help": "hidden_states indices (null: spread)."})
    dtype: str = field(default="bfloat16", metadata={"help": "Stored feature dtype.", "choices": STORED_DTYPES})
    shard_rows: int = field(default=256, metadata={"help": "Rows per shard (a kill loses at most one)."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "As in the training recipe."})
    max_completion_length: int | None = field(default=None, metadata={"help": "As in the training recipe."})
    model_dtype: str = field(default="bfloat16", metadata={"help": "Verifier weights.", "choices": DTYPE_NAMES})

    def __post_init__(self) -> None:
        if isinstance(self.dataset_path, str):
            self.dataset_path = [self.dataset_path]
        check_dtype_name(self.dtype, "dtype", STORED_DTYPES)
        check_dtype_name(self.model_dtype, "model_dtype")


@dataclass
class FeatureSpec:
    """What a feature folder holds; a rerun or a training run with other settings is refused."""

    verifier: str
    feature_layers: list[int]
    hidden_size: int
    dtype: str
    rows: int
    shard_rows: int
    max_prompt_length: int | None
    max_completion_length: int | None

    @property
    def shards(self) -> int:
        return math.ceil(self.rows / self.shard_rows)

    def bytes_per_token(self) -> int:
        return len(self.feature_layers) * self.hidden_size * resolve_dtype(self.dtype).itemsize


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"features-{index:05d}.safetensors"


def precompute_features(
    verifier: torch.nn.Module,
    verifier_name: str,
    dataset: datasets.Dataset,
    out_dir: str | Path,
    *,
    feature_layers: list[int] | None = None,
    dtype: str = "bfloat16",
    shard_rows: int = 256,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    log=print,
) -> FeatureSpec:
    """Write the missing shards of this process (shard i belongs to rank ``i % world_size``); returns the spec."""
    check_dtype_name(dtype, "dtype", STORED_DTYPES)
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    text = verifier.config.get_text_config()
    layers = list(feature_layers or spread_feature_layers(text.num_hidden_layers))
    spec = FeatureSpec(
        verifier_name, layers, text.hidden_size, dtype, len(dataset), shard_rows, max_prompt_length,
        max_completion_length,
    )  # fmt: skip
    out = Path(out_dir)
    meta = out / META_FILE
    if meta.is_file():
        stored = json.loads(meta.read_text())
        if stored != asdict(spec):
            raise ValueError(f"{out} holds features computed with other settings: {stored} (now {asdict(spec)})")
    tokens = sum(sum(map(len, cut_row(r, max_prompt_length, max_completion_length))) for r in dataset)
    log(
        f"verifier features: {tokens:,} tokens x {spec.bytes_per_token():,} B = "
        f"{tokens * spec.bytes_per_token() / 1e9:.3f} GB in {spec.shards} shards under {out}"
    )
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not meta.is_file():
        atomic_write_text(meta, json.dumps(asdict(spec), indent=1))
    for index in range(rank, spec.shards, world_size):
        path = shard_path(out, index)
        if path.is_file():
            continue  # written by an earlier run: whole, since shards are renamed into place
        rows = dataset.select(range(index * shard_rows, min((index + 1) * shard_rows, len(dataset))))
        pieces = []
        for row in rows:
            prompt, completion = cut_row(row, max_prompt_length, max_completion_length)
            ids = torch.tensor([prompt + completion], device=verifier.device)
            pieces.append(verifier_features(verifier, ids, layers)[0].to(device="cpu", dtype=resolve_dtype(dtype)))
        offsets = torch.tensor([0] + [p.shape[0] for p in pieces]).cumsum(0)
        with atomic_path(path) as tmp:
            save_file({"features": torch.cat(pieces).contiguous(), "offsets": offsets}, str(tmp))
    return spec


class FeatureStore:
    """Reads row ``i``'s ``[tokens, F]`` features from the shards. Shards are opened lazily (memory-mapped) and
    only the row's slice is read, so shuffled batches do not reload whole shards."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta = self.folder / META_FILE
        if not meta.is_file():
            raise FileNotFoundError(f"{self.folder} has no {META_FILE}: not a feature folder (precompute_features)")
        self.spec = FeatureSpec(**json.loads(meta.read_text()))
        missing = [i for i in range(self.spec.shards) if not shard_path(self.folder, i).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.folder} lacks {len(missing)} of {self.spec.shards} shards (first: {missing[0]}); rerun the "
                "precompute command to finish them"
            )
        self._shards: dict[int, tuple[Any, torch.Tensor]] = {}  # index -> (open file, row offsets)

    def check(self, verifier_name: str, feature_layers: list[int], dataset_rows: int, cuts: tuple) -> None:
        """Refuse features that were not computed for this verifier, these layers, this dataset and these cuts."""
        s = self.spec
        expected = (verifier_name, list(feature_layers), dataset_rows, cuts)
        found = (s.verifier, s.feature_layers, s.rows, (s.max_prompt_length, s.max_completion_length))
        if found != expected:
            raise ValueError(
                f"features in {self.folder} were computed for (verifier, layers, rows, cuts) = {found}, "
                f"but training uses {expected}"
            )

    def __getitem__(self, row: int) -> torch.Tensor:
        index = row // self.spec.shard_rows
        if index not in self._shards:
            handle = safe_open(str(shard_path(self.folder, index)), framework="pt")
            self._shards[index] = handle, handle.get_tensor("offsets")
        handle, offsets = self._shards[index]
        start = row % self.spec.shard_rows
        return handle.get_slice("features")[int(offsets[start]) : int(offsets[start + 1])]
