"""Pushing a drafter folder to the Hugging Face Hub: checked completely before anything is uploaded.

A drafter folder holds its weights (or a LoRA adapter), the verifier's tokenizer, ``diffuspec_config.json``
(``diffuspec.drafter_config``) and a ``README.md`` model card (``diffuspec.cards``); a DFlash export
(``diffuspec export --format dflash``) holds its config, weights and card. Resolving Hub ids to local
folders is ``diffuspec.loading.resolve_local``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .cards import CARD_FILE, write_model_card
from .drafter_config import CONFIG_FILE, DiffuspecConfig, read_diffuspec_config
from .loading import TOKENIZER_FILES
from .models.dflash import config_from_dflash, is_dflash_checkpoint

logger = logging.getLogger(__name__)

# Trainer leftovers that are not part of a drafter: resumable checkpoints, logs, optimizer state, staging dirs.
PUSH_IGNORE = ["checkpoint-*/", "runs/", ".partial-*/", "*.tmp", "training_args.bin", "optimizer.pt", "scheduler.pt"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_drafter_folder(folder: str | os.PathLike) -> DiffuspecConfig | None:
    """Fail before any upload if ``folder`` is not a complete drafter (or adapter) folder; returns its config
    (None for a DFlash checkpoint, whose config.json says everything: it must translate and have weights)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"drafter folder {folder} does not exist")
    weights = [p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if is_dflash_checkpoint(folder):
        config_from_dflash(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        if not weights:
            raise FileNotFoundError(f"{folder} has no weights (*.safetensors)")
        return None
    config = read_diffuspec_config(folder)
    if not weights:
        raise FileNotFoundError(f"{folder} has no weights (*.safetensors or *.bin)")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} has neither config.json (a model) nor adapter_config.json (an adapter)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} has no tokenizer ({' / '.join(TOKENIZER_FILES)}); save the verifier's")
    model_config = folder / "config.json"
    vocab = config.verifier.get("vocab_size") if config.verifier else None
    if vocab is not None and model_config.is_file():
        raw = json.loads(model_config.read_text(encoding="utf-8"))
        drafter_vocab = raw.get("vocab_size", (raw.get("text_config") or {}).get("vocab_size"))
        if drafter_vocab is not None and drafter_vocab != vocab:
            raise ValueError(
                f"{folder}: the drafter's vocabulary ({drafter_vocab}) differs from its verifier's ({vocab}); "
                "speculative decoding needs one embedding size"
            )
    return config


def push_drafter(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    api: Any = None,
    commit_message: str = "Upload diffuspec drafter",
) -> str:
    """Check ``folder``, create ``repo_id`` (kept if it exists) and upload the folder; returns the repo URL.

    ``api`` is an ``huggingface_hub.HfApi`` (or anything with its ``create_repo`` / ``upload_folder``); tests pass
    a fake. A folder without a README.md gets a card from ``diffuspec_config.json`` first (logged).
    """
    folder = Path(folder)
    check_drafter_folder(folder)
    if not (folder / CARD_FILE).is_file():
        logger.warning("%s has no %s; writing a model card from %s", folder, CARD_FILE, CONFIG_FILE)
        write_model_card(folder, repo_id=repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        token=token,
        commit_message=commit_message,
        ignore_patterns=PUSH_IGNORE,
    )
    return str(url)
