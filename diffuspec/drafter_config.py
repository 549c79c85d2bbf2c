"""The drafter marker file, ``diffuspec_config.json``: what a drafter folder needs beyond its weights.

Written next to every drafter diffuspec trains or converts, read back by every loader: the mask token id and the
logit shift (needed to load), and a record of the verifier it was aligned to, the decoding settings the evaluation
recommends and the training objectives (read by model cards and ``diffuspec push``). One writer (atomic,
validated first) and one reader (unknown keys are errors, not ignored).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .decoding.config import DecodeConfig
from .files import write_json
from .version import __version__

CONFIG_FILE = "diffuspec_config.json"


@dataclass
class DiffuspecConfig:
    """The contents of ``diffuspec_config.json``. Only ``mask_token_id`` and ``shifted`` are needed to load."""

    mask_token_id: int
    shifted: bool  # slot s is read from output row s - 1 (Dream) rather than row s (LLaDA)
    # {"name": str, "vocab_size": int, "fingerprint": str}: the model it was aligned to (fingerprint: see
    # diffuspec.models.conditioned.model_fingerprint; absent in folders written before it existed)
    verifier: dict[str, Any] | None = None
    recommended_decode: dict[str, Any] | None = None  # DecodeConfig.to_dict() of the settings the evaluation chose
    objectives: dict[str, float] = field(default_factory=dict)  # objective name -> loss weight
    diffuspec_version: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.mask_token_id, bool) or not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
            raise ValueError(f"mask_token_id must be an int >= 0, got {self.mask_token_id!r}")
        if not isinstance(self.shifted, bool):
            raise ValueError(f"shifted must be true or false, got {self.shifted!r}")
        if self.verifier is not None:
            unknown = set(self.verifier) - {"name", "vocab_size", "fingerprint"}
            fingerprint = self.verifier.get("fingerprint")
            if unknown or not isinstance(self.verifier.get("name"), str) or not isinstance(fingerprint, str | None):
                raise ValueError(
                    f'verifier must be {{"name": str, "vocab_size": int, "fingerprint": str}}, got {self.verifier!r}'
                )
            vocab = self.verifier.get("vocab_size")
            if vocab is not None and not (isinstance(vocab, int) and self.mask_token_id < vocab):
                raise ValueError(
                    f"verifier vocab_size must be an int > mask_token_id ({self.mask_token_id}), got {vocab}"
                )
        for name, weight in self.objectives.items():
            if not isinstance(weight, int | float) or weight < 0:
                raise ValueError(f"objective {name!r} needs a weight >= 0, got {weight!r}")
        if self.recommended_decode is not None:
            self.decode_config()  # CPSConfig / ADLConfig reject unknown keys and bad values

    def decode_config(self, proxy: Any = None, block: int | None = None) -> DecodeConfig:
        """The recommended ``DecodeConfig``; when none is recorded, the defaults with ADL within the drafter's
        ``block`` slots (``DecodeConfig.for_block``). ``proxy`` goes to CPS."""
        if self.recommended_decode is None:
            return DecodeConfig.for_block(block)
        return DecodeConfig.from_dict(self.recommended_decode, "recommended_decode", proxy=proxy)


def write_diffuspec_config(
    folder: str | os.PathLike,
    *,
    mask_token_id: int,
    shifted: bool,
    verifier: str | None = None,
    verifier_vocab_size: int | None = None,
    verifier_fingerprint: str | None = None,
    recommended_decode: DecodeConfig | None = None,
    objectives: Mapping[str, float] | None = None,
) -> Path:
    """Write ``folder/diffuspec_config.json`` (validated first, atomically); returns its path."""
    config = DiffuspecConfig(
        mask_token_id=int(mask_token_id),
        shifted=bool(shifted),
        verifier=None if verifier is None else _verifier_record(verifier, verifier_vocab_size, verifier_fingerprint),
        recommended_decode=None if recommended_decode is None else recommended_decode.to_dict(),
        objectives={str(k): float(v) for k, v in (objectives or {}).items()},
        diffuspec_version=__version__,
    )
    return _write(folder, config)


def _write(folder: str | os.PathLike, config: DiffuspecConfig) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"drafter folder {folder} does not exist")
    return write_json(folder / CONFIG_FILE, dataclasses.asdict(config))


def _verifier_record(name: str, vocab_size: int | None, fingerprint: str | None) -> dict[str, Any]:
    record = {"name": str(name), "vocab_size": vocab_size}
    return record if fingerprint is None else {**record, "fingerprint": fingerprint}


def record_recommended_decode(folder: str | os.PathLike, decode: DecodeConfig) -> Path:
    """Add ``decode`` as the recommended decoding to an existing ``folder/diffuspec_config.json`` (the rest kept)."""
    return _write(folder, dataclasses.replace(read_diffuspec_config(folder), recommended_decode=decode.to_dict()))


def has_diffuspec_config(folder: str | os.PathLike) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def read_diffuspec_config(folder: str | os.PathLike) -> DiffuspecConfig:
    """Read and validate ``folder/diffuspec_config.json``; unknown keys are an error, not ignored."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a diffuspec drafter folder (see write_diffuspec_config)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(DiffuspecConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    missing = sorted({"mask_token_id", "shifted"} - set(raw))
    if missing:
        raise ValueError(f"{path} lacks {missing}: every drafter folder records its mask token id and logit shift")
    try:
        return DiffuspecConfig(**raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
