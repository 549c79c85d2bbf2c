"""Learning curves: held-out tau against the answer tokens a drafter has been trained on.

Both trainers log ``eval_tau`` through ``AcceptanceCallback`` (the real decoding loop on held-out prompts, step 0
included) into ``train_log.json``. ``learning_curve`` turns that log into points ``(step, answer_tokens, tau)``,
where ``answer_tokens = step x batch x the dataset's mean answer length`` (tokens of verifier answers read, whatever
the objective makes of them), so drafters trained with other batch sizes or data share one axis;
``plot_learning_curves`` draws several on one figure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CURVE_FILE = "learning_curve.json"


def learning_curve(log_history: Sequence[Mapping[str, Any]], answer_tokens_per_step: float) -> list[dict[str, float]]:
    """``[{"step", "answer_tokens", "tau"}]`` for every logged ``eval_tau``, in step order."""
    if answer_tokens_per_step <= 0:
        raise ValueError(f"answer_tokens_per_step must be > 0, got {answer_tokens_per_step}")
    points = [
        {"step": int(row["step"]), "answer_tokens": row["step"] * answer_tokens_per_step, "tau": float(row["eval_tau"])}
        for row in log_history
        if "eval_tau" in row
    ]
    return sorted(points, key=lambda p: p["step"])


def write_learning_curve(
    train_log: str | os.PathLike, answer_tokens_per_step: float, out: str | os.PathLike
) -> list[dict[str, float]]:
    """Read a ``train_log.json``, write its curve as ``out`` (JSON) and return it."""
    from ..files import write_json

    points = learning_curve(json.loads(Path(train_log).read_text()), answer_tokens_per_step)
    if not points:
        raise ValueError(f"{train_log} logs no eval_tau (train with eval_acceptance_steps > 0 and held-out prompts)")
    write_json(out, points)
    return points


def plot_learning_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike) -> Path:
    """One line per drafter: held-out tau against answer tokens trained on (log scale past the first point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        axis.plot([p["answer_tokens"] for p in points], [p["tau"] for p in points], marker="o", label=name)
    positive = [p["answer_tokens"] for points in curves.values() for p in points if p["answer_tokens"] > 0]
    axis.set_xscale("symlog", linthresh=min(positive, default=1.0))  # step 0 sits at 0, the rest on a log scale
    axis.set_xlabel("answer tokens trained on")
    axis.set_ylabel("held-out tau (tokens per round)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
