"""``diffuspec quickstart``: the whole pipeline on a laptop CPU, from nothing to a speed table.

Two recipes share the stage machinery (``pipeline.py``): the presets ``full`` and ``fast`` of
``recipes/tiny-cpu/quickstart.yaml`` train every model themselves (below), and ``smollm2`` / ``smollm2-smoke`` of
``recipes/smollm2-135m-cpu/quickstart.yaml`` run against a real pretrained verifier (``smollm2.py``).

corpus -> verifier -> ar_drafter -> drafter_unaligned -> data -> proxy -> drafter_aligned -> drafter_conditioned
-> eval
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import stages as s
from .conditioned import build_drafter_conditioned
from .config import RECIPE, load_preset
from .pipeline import Stage, run_stages

SHAPE = ("block_size", "batch_size", "lr", "seed")

STAGES = [
    Stage("corpus", (), s.build_corpus, ("corpus_bytes", "heldout_fraction", "vocab_size")),
    Stage(
        "verifier",
        ("corpus",),
        s.build_verifier,
        ("verifier", "verifier_steps", "verifier_lr", "block_size", "batch_size", "seed"),
    ),
    Stage("ar_drafter", ("corpus",), s.build_ar_drafter, ("ar_drafter", "ar_drafter_steps", *SHAPE)),
    Stage(
        "drafter_unaligned",
        ("corpus", "verifier", "ar_drafter"),
        s.build_drafter_unaligned,
        ("drafter_init", "drafter_layers", "drafter_steps", *SHAPE),
    ),
    Stage(
        "data",
        ("corpus", "verifier"),
        s.build_data,
        (
            "data_prompts",
            "prompt_tokens",
            "completion_tokens",
            "teacher_topk",
            "eval_prompts",
            "eval_prompt_tokens",
            "eval_prompts_from",
            "seed",
        ),
    ),
    Stage("proxy", ("corpus", "data"), s.build_proxy, ("block_size",)),
    Stage(
        "drafter_aligned",
        ("verifier", "drafter_unaligned", "data"),
        s.build_drafter_aligned,
        ("align_steps", "prompt_tokens", "completion_tokens", "batch_size", "seed"),
    ),
    Stage(
        "drafter_conditioned",
        ("verifier", "data"),
        build_drafter_conditioned,
        ("conditioned_layers", "conditioned_steps", "batch_size", "seed"),
    ),
    Stage(
        "eval",
        (
            "corpus",
            "verifier",
            "ar_drafter",
            "drafter_unaligned",
            "data",
            "proxy",
            "drafter_aligned",
            "drafter_conditioned",
        ),
        s.build_eval,
        ("eval_prompt_tokens", "max_new_tokens", "repeats", "draft_window", "eval_threads"),
    ),
]


def load_pipeline(preset: str, overrides: dict[str, object] | None = None) -> tuple[object, list[Stage], str]:
    """(settings, stages, default run folder) of a preset of either recipe; unknown names are refused."""
    import yaml

    from . import smollm2

    overrides = overrides or {}
    recipes = {
        RECIPE: (load_preset, STAGES, "runs/quickstart"),
        smollm2.RECIPE: (smollm2.load_preset, smollm2.STAGES, "runs/smollm2"),
    }
    known = []
    for path, (load, stages, run_dir) in recipes.items():
        names = list(yaml.safe_load(path.read_text()))
        if preset in names:
            return load(preset, **overrides), stages, run_dir
        known += names
    raise ValueError(f"unknown quickstart preset {preset!r}; presets are {known}")


def run_quickstart(
    preset: str = "full",
    run_dir: str | Path | None = None,
    force: bool = False,
    only: str | None = None,
    overrides: dict[str, object] | None = None,
) -> Path:
    """Build every stage (cached), print the results table and return the run folder (default: runs/quickstart for
    the tiny presets, runs/smollm2 for the real-verifier ones).

    ``overrides`` replace preset settings (unknown names are refused); only the stages whose settings or inputs
    change are rebuilt, so a variant can start from a copy of another run's folders."""
    config, stages, default_dir = load_pipeline(preset, overrides)
    run_dir = Path(run_dir if run_dir is not None else default_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    try:
        folders = run_stages(stages, config, run_dir, force=force, only=only)
    finally:
        torch.set_num_threads(previous_threads)  # callers (and test sessions) keep their own setting
    results = folders["eval"] / "results.md"
    if results.exists() and only in (None, "eval"):
        print(results.read_text())
    summary = {
        "preset": preset,
        "overrides": overrides or {},
        "seconds": round(time.perf_counter() - start, 1),
        "run_dir": str(run_dir),
    }
    print(json.dumps(summary))
    if only in (None, "eval"):
        print(f"Results in {folders['eval']} (results.json, results.md, plots)")
    return run_dir
