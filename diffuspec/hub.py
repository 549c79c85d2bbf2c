"""Resolving model names: a local folder is used as is, anything else is fetched from the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_local(name_or_path: str | os.PathLike) -> str:
    """Return a local folder for ``name_or_path``, downloading a Hub id; fail at once, clearly, when offline."""
    path = Path(name_or_path)
    if path.exists():
        return str(path)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(name_or_path))
    except Exception as error:  # the hub raises several types for 'offline' and 'unreachable'
        raise OSError(
            f"{name_or_path!r} is not a local folder and the Hugging Face Hub is unreachable or does not have it "
            f"({type(error).__name__}: {error}). Download it on a machine with network access and pass the folder."
        ) from error
