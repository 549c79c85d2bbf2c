"""Quickstart settings: one dataclass, two presets (``full`` and ``fast``) in recipes/tiny-cpu/quickstart.yaml.

The recipes ship inside the package (``diffuspec/recipes``, package data), so an installed diffuspec runs the
quickstart from any folder; a checkout's top-level ``recipes/`` is a link to the same files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DRAFTER_INITS = ("ar_drafter", "verifier")
EVAL_PROMPT_SOURCES = ("windows", "file_starts")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE = RECIPES / "tiny-cpu" / "quickstart.yaml"


@dataclass
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int = 8
    num_kv_heads: int = 2
    intermediate_size: int | None = None


@dataclass
class QuickstartConfig:
    seed: int = 0
    threads: int = field(default=2, metadata={"help": "torch threads for training and data generation."})
    eval_threads: int = field(
        default=1,
        metadata={"help": "torch threads while timing (1 is safe on a shared machine; see the tiny-cpu README)."},
    )
    corpus_bytes: int = field(default=3_000_000, metadata={"help": "Standard-library source bytes to use."})
    heldout_fraction: float = 0.1
    vocab_size: int = 2048
    block_size: int = field(default=128, metadata={"help": "Training sequence length."})
    verifier: ModelShape = field(default_factory=lambda: ModelShape(256, 4, intermediate_size=768))
    verifier_steps: int = 500
    verifier_lr: float = field(
        default=1e-3, metadata={"help": "The verifier's peak learning rate (the deeper model trains worse at lr)."}
    )
    ar_drafter: ModelShape = field(default_factory=lambda: ModelShape(128, 1, 4, 2, 384))
    ar_drafter_steps: int = 300
    drafter_init: str = field(
        default="ar_drafter",
        metadata={"help": "Causal LM the diffusion drafter is adapted from: 'ar_drafter' or 'verifier'."},
    )
    drafter_layers: int = field(default=1, metadata={"help": "Layers of drafter_init the diffusion drafter keeps."})
    drafter_steps: int = 300
    batch_size: int = 16
    lr: float = field(default=3e-3, metadata={"help": "Peak learning rate of the small models' pretraining."})
    # alignment data: verifier continuations of training-split prompts
    data_prompts: int = 400
    prompt_tokens: int = 64
    completion_tokens: int = 64
    teacher_topk: int = field(
        default=32, metadata={"help": "Verifier top-k log-probs stored with the data (0: the trainer runs it online)."}
    )
    align_steps: int = 400
    conditioned_layers: int = field(default=1, metadata={"help": "Layers of the feature-conditioned drafter."})
    conditioned_steps: int = 400
    # evaluation
    eval_prompts: int = 20
    eval_prompt_tokens: int = 128
    eval_prompts_from: str = field(
        default="windows", metadata={"help": "Held-out prompts: 'windows' (seeded offsets) or 'file_starts'."}
    )
    max_new_tokens: int = 64
    repeats: int = 3
    draft_window: int | None = field(default=64, metadata={"help": "Diffusion drafter context window (tokens)."})

    def __post_init__(self) -> None:
        for name in ("verifier", "ar_drafter"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, ModelShape(**value))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"quickstart setting {f.name} must be >= 0, got {value}")
        for name, allowed in (("drafter_init", DRAFTER_INITS), ("eval_prompts_from", EVAL_PROMPT_SOURCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"quickstart setting {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.repeats < 3:
            raise ValueError(f"repeats must be >= 3 (speedup is a median of interleaved repeats), got {self.repeats}")

    def to_dict(self) -> dict:
        return asdict(self)


def load_preset(name: str, path: Path = RECIPE, **overrides) -> QuickstartConfig:
    """Read preset ``name`` from the recipe; unknown keys are an error naming them."""
    return read_preset(QuickstartConfig, name, path, overrides)


def read_preset(config_class: type, name: str, path: Path, overrides: dict) -> Any:
    """``config_class`` from preset ``name`` of the YAML file ``path``, ``overrides`` on top; unknown keys are
    refused by name."""
    presets = yaml.safe_load(path.read_text())
    if name not in presets:
        raise ValueError(f"unknown quickstart preset {name!r}; {path} has {sorted(presets)}")
    values = {**(presets[name] or {}), **overrides}
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown quickstart setting(s) {unknown} in preset {name!r} of {path}")
    return config_class(**values)
