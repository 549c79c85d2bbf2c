"""Dtype names: the one table that every command, recipe and loader reads.

``"auto"`` (or ``None``) always means *as stored*: the checkpoint's own dtype when loading, nothing changed
otherwise.
"""

from __future__ import annotations

import torch

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16", "float64")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype for a name of ``DTYPE_NAMES`` (``"torch.bfloat16"`` too) or a dtype; None for auto / None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name == "auto":
        return None
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(DTYPE_NAMES)}")
    return _DTYPES[name]


def load_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """The ``dtype=`` argument of transformers' ``from_pretrained``: the dtype, or ``"auto"`` to keep the stored one."""
    return resolve_dtype(dtype) or "auto"


def check_dtype_name(name: str, what: str = "dtype", allowed: tuple[str, ...] = DTYPE_NAMES) -> None:
    """Refuse a dtype name outside ``allowed``, naming the setting."""
    if name not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {name!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
