"""Optional dependencies: a command that needs an extra checks for it first and names the one to install."""

from __future__ import annotations

import importlib.util

#: extra -> the top-level modules it installs (pyproject.toml's [project.optional-dependencies]).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("accelerate", "peft", "datasets", "tensorboard"),
    "eval": ("matplotlib",),
    "kenlm": ("kenlm",),
    "vllm": ("vllm",),
    "deepspeed": ("deepspeed",),
    "quant": ("bitsandbytes",),
    "gguf": ("gguf",),
}


class MissingExtraError(ImportError):
    """An optional dependency group is not installed; the message says which and how to install it."""


def missing_modules(extra: str) -> list[str]:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras are {sorted(EXTRAS)}")
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(*extras: str, what: str = "this command") -> None:
    """Raise ``MissingExtraError`` naming every missing extra before any work starts."""
    missing = {extra: names for extra in extras if (names := missing_modules(extra))}
    if missing:
        spec = ",".join(missing)
        modules = ", ".join(name for names in missing.values() for name in names)
        raise MissingExtraError(
            f"{what} needs the optional dependencies {sorted(missing)} ({modules} not installed): "
            f"pip install 'diffuspec[{spec}]'"
        )
