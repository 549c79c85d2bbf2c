"""``diffuspec export``: a trained drafter folder in a format other engines load.

One format so far, ``dflash``: a conditioned drafter becomes a DFlash checkpoint (``models/dflash.py``) that vLLM
(``method: dflash``) and SGLang (``--speculative-algorithm DFLASH``) serve next to its verifier.
"""

from __future__ import annotations

import os
from pathlib import Path

from .drafter_config import has_diffuspec_config, read_diffuspec_config
from .loading import is_conditioned_drafter, load_conditioned_model, resolve_local
from .models.dflash import export_dflash

FORMATS = ("dflash",)


def export_drafter(
    drafter: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    format: str = "dflash",
    verifier: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the drafter folder (or Hub id) ``drafter`` to ``output_dir`` in ``format``; checked before any write.

    ``verifier`` (the model it serves with, named in the card and the serving commands) defaults to the one
    recorded in the drafter's ``diffuspec_config.json`` or config."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; formats are {list(FORMATS)}")
    folder = resolve_local(drafter)
    if not is_conditioned_drafter(folder):
        raise ValueError(
            f"{folder} is not a feature-conditioned drafter: the DFlash format holds drafters that read the "
            "verifier's hidden states (train one with train/train_conditioned.py)"
        )
    if Path(output_dir).exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) to replace it")
    if verifier is None and has_diffuspec_config(folder):
        recorded = read_diffuspec_config(folder).verifier
        verifier = recorded["name"] if recorded else None
    model = load_conditioned_model(folder)
    return export_dflash(model, output_dir, verifier=verifier, repo_id=repo_id, overwrite=overwrite)
