"""``diffuspec quickstart``: the whole pipeline on a laptop CPU, from nothing to a speed table.

One module per recipe: ``tiny.py`` (the presets ``full`` and ``fast`` of ``recipes/tiny-cpu/quickstart.yaml``)
trains every model itself, ``smollm2.py`` (``smollm2`` / ``smollm2-smoke`` of
``recipes/smollm2-135m-cpu/quickstart.yaml``) runs against a real pretrained verifier. Both build on ``stages.py``
(cached stages, presets, shared helpers); ``corpus.py`` and ``prose.py`` are their text sources.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .stages import Stage, run_stages


def load_pipeline(preset: str, overrides: dict[str, object] | None = None) -> tuple[object, list[Stage], str]:
    """(settings, stages, default run folder) of a preset of either recipe; unknown names are refused."""
    import yaml

    from . import smollm2, tiny

    overrides = overrides or {}
    recipes = {
        tiny.RECIPE: (tiny.load_preset, tiny.STAGES, "runs/quickstart"),
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
