"""Writing a run's results: results.json, records.jsonl, results.md, three PNG plots, and a model-card section.

``results.json`` (schema ``diffuspec-eval-v1``)::

    {"schema", "baseline": "ar", "repeats", "warmup", "max_new_tokens", "temperature", "device", "dtype",
     "tau_definition", "lossless", "tasks": {task: prompts}, "benchmark": {...}, "env": {...},
     "peak_memory": {...}, "mismatches": [...], "failures": [...], "config": {...},
     "methods": {name: {"kind", "tau", "tau_source", "tau_note", "mean_accepted", "tokens_per_s",
                        "speedup", "speedup_min", "speedup_max", "speedup_per_repeat", "speedup_pooled", "lossless",
                        "lossless_note", "accepted_histogram", "acceptance_by_position", "mean_draft_length",
                        "mean_path_length", "time_split_s", "time_split_fraction", "peak_memory_bytes", "cost_model",
                        "per_task": {task: {"tau", "speedup", "speedup_min", "speedup_max", "tokens_per_s",
                                            "prompts"}}, ...}}}

Every file is written to a temporary name in the same folder and renamed into place, so a crash never leaves
half a file behind.
"""

from __future__ import annotations

import io
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cards import CARD_BEGIN, CARD_END, update_model_card
from ..files import atomic_write_bytes, atomic_write_text, write_json
from ..jsonl import write_jsonl
from .statistics import mismatch_message

SCHEMA = "diffuspec-eval-v1"
PLOTS = ("speedup_per_task.png", "accepted_histogram.png", "draft_length.png")


# ---------------------------------------------------------------- markdown


def _num(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _speedup(entry: dict[str, Any]) -> str:
    if entry.get("speedup") is None:
        return "—"
    return f"{entry['speedup']:.2f}x ({entry['speedup_min']:.2f}–{entry['speedup_max']:.2f})"


def _lossless(value: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "not checked"}[value]


# What a per-task table can show: a cell's text from a per-task (or overall) entry of a method.
PER_TASK_CELLS = {"speedup": _speedup, "tau": lambda entry: _num(entry.get("tau"))}


def per_task_table(results: dict[str, Any], value: str = "speedup") -> str:
    """One row per method, one column per task: the median speedup (min–max), or τ with ``value="tau"``."""
    if value not in PER_TASK_CELLS:
        raise ValueError(f"value must be one of {list(PER_TASK_CELLS)}, got {value!r}")
    cell = PER_TASK_CELLS[value]
    tasks = list(results["tasks"])
    lines = [
        "| Method | " + " | ".join(f"{t} ({results['tasks'][t]})" for t in tasks) + " | Overall |",
        "|---" * (len(tasks) + 2) + "|",
    ]
    for name, m in results["methods"].items():
        cells = [cell(m["per_task"].get(t, {})) for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cell(m)} |")
    return "\n".join(lines)


def summary_table(results: dict[str, Any]) -> str:
    lines = [
        "| Method | τ | accepted/round | tok/s | speedup (min–max) | draft | search | verify | other | lossless "
        "| bound | of bound |",
        "|---" * 12 + "|",
    ]
    for name, m in results["methods"].items():
        split = m["time_split_fraction"] or {}
        cost = m["cost_model"] or {}
        fraction = cost.get("fraction_of_bound")
        cells = [
            _num(m["tau"]),
            _num(m["mean_accepted"]),
            _num(m["tokens_per_s"], ".1f"),
            _speedup(m),
            *(
                _num(split.get(part) and 100 * split[part], ".0f", "%")
                for part in ("draft", "search", "verify", "other")
            ),
            _lossless(m["lossless"]),
            _num(cost.get("speedup_bound"), ".2f", "x"),
            _num(fraction and 100 * fraction, ".0f", "%"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def round_cost_table(results: dict[str, Any]) -> str:
    """Each block method's mean round in baseline steps: a round pays off when τ exceeds its total."""
    step_s = (results["methods"][results["baseline"]]["cost_model"] or {}).get("ar_step_s")
    lines = [
        "| Method | τ | tokens verified | draft | search | verify | other | round = break-even τ |",
        "|---" * 8 + "|",
    ]
    for name, m in results["methods"].items():
        split = m["time_split_s"]
        if not step_s or not split or not m["rounds"] or name == results["baseline"]:
            continue
        steps = {part: seconds / m["rounds"] / step_s for part, seconds in split.items()}
        cells = [
            _num(m["tau"]),
            _num(m["mean_path_length"], ".1f"),
            *(_num(steps[part]) for part in ("draft", "search", "verify", "other")),
            _num(sum(steps.values())),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setup_line(results: dict[str, Any]) -> str:
    env, bench = results["env"], results["benchmark"]
    return (
        f"{env['date_utc']}; verifier `{results['verifier']}` ({results['dtype']}) on {env['device']}"
        f" ({env['device_name'] or 'unknown device'}, {env['torch_num_threads']} torch threads), torch {env['torch']},"
        f" transformers {env['transformers']}; {bench['kind']} benchmark, {bench['prompts']} prompts"
        f" (turns: {bench['turns']}, chat template: {bench['chat_template']}); max_new_tokens {results['max_new_tokens']},"
        f" temperature {results['temperature']}, batch size 1; {results['repeats']} interleaved repeats after"
        f" {results['warmup']} warm-up generations per method."
    )


def markdown_report(results: dict[str, Any]) -> str:
    out = io.StringIO()
    out.write(f"# Speculative decoding evaluation\n\n{setup_line(results)}\n\n")
    out.write(
        f"τ: {results['tau_definition']}. Speedup: median over repeats of (total {results['baseline']} time / total "
        "method time) on the same prompts, min–max in brackets. Time split: share of the method's wall time. "
        "Bound: cost-model speedup τ × (baseline time per token) / (the method's mean draft + search + verify time "
        "per round), i.e. with the method's loop overhead left out; 'of bound' is the measured speedup (all repeats "
        "pooled) as a share of it."
        " transformers methods have no split; their τ is counted from verifier forward passes.\n\n"
    )
    out.write(f"## Speedup per task\n\n{per_task_table(results)}\n\n")
    out.write(f"## τ per task\n\n{per_task_table(results, value='tau')}\n\n## Summary\n\n{summary_table(results)}\n\n")
    out.write(
        f"## Cost of a round\n\nMean time per round in {results['baseline']} steps (its time per token), so a method "
        "gains only when τ exceeds the round's total. Tokens verified: the mean path length sent to the verifier; other: "
        "the rest of the call (prefill, cache commits, ADL, bookkeeping).\n\n"
        f"{round_cost_table(results)}\n\n"
    )
    memory = results["peak_memory"]
    out.write(f"Peak memory ({memory['kind']}): {memory['bytes'] / 2**20:.0f} MiB. {memory['note']}.\n\n")
    out.write("## Lossless check\n\n")
    if results["temperature"] > 0:
        out.write("Not checked: token identity is only defined at temperature 0.\n\n")
    elif results["mismatches"]:
        out.write(f"**{len(results['mismatches'])} mismatch(es) with {results['baseline']}:**\n\n")
        for m in results["mismatches"]:
            out.write(
                f"- {m['method']}: prompt {m['prompt']} (task {m['task']}, question {m['qid']}, turn {m['turn']}, "
                f"repeat {m['repeat']}), first difference at new token {m['position']}\n"
            )
        out.write("\n")
    else:
        out.write(f"Every method's tokens were compared with {results['baseline']}'s on every prompt and repeat.\n\n")
    if results["failures"]:
        out.write(f"## Failures\n\n{len(results['failures'])} call(s) raised and were left out:\n\n")
        for f in results["failures"]:
            out.write(f"- {f['method']}: prompt {f['prompt']} (task {f['task']}), repeat {f['repeat']}: {f['error']}\n")
        out.write("\n")
    return out.getvalue()


# ---------------------------------------------------------------- plots


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def _save_line_plot(fig: Any, ax: Any, path: Path) -> Path:
    """Legend (or a note that no method drafted), save, and close the figure whatever happens."""
    import matplotlib.pyplot as plt

    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no drafting method", ha="center", transform=ax.transAxes)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_speedup_per_task(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [*results["tasks"], "overall"]
    names = [n for n in results["methods"] if n != results["baseline"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) * max(1, len(names)) / 3), 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        m = results["methods"][name]
        entries = [m["per_task"].get(t, {}) for t in tasks[:-1]] + [m]
        x = [j + (i - (len(names) - 1) / 2) * width for j in range(len(tasks))]
        mid = [e.get("speedup") or 0.0 for e in entries]
        low = [max(0.0, mid[j] - (e.get("speedup_min") or mid[j])) for j, e in enumerate(entries)]
        high = [max(0.0, (e.get("speedup_max") or mid[j]) - mid[j]) for j, e in enumerate(entries)]
        ax.bar(x, mid, width, yerr=[low, high], capsize=2, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8, label=f"{results['baseline']} (1.0)")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylabel(f"speedup over {results['baseline']} (median, min–max)")
    ax.legend(fontsize=7)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_accepted_histogram(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in results["methods"].items():
        hist = m.get("accepted_histogram")
        if hist and len(hist) > 1:
            total = sum(hist)
            ax.plot(range(len(hist)), [c / total for c in hist], marker="o", markersize=3, label=name)
    ax.set_xlabel("draft tokens accepted in a round")
    ax.set_ylabel("share of rounds")
    return _save_line_plot(fig, ax, path)


def plot_draft_lengths(records: Sequence[Any], path: Path) -> Path:
    """Draft tokens sent to the verifier at each round index, mean over the first repeat's prompts: ADL's
    trajectory for diffusion drafters, the match length for prompt lookup, the candidates for transformers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[list[int]]] = defaultdict(list)
    for r in records:
        if r.ok and r.repeat == 0 and r.path_lengths and any(r.path_lengths):
            by_method[r.method].append(r.path_lengths)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in by_method.items():
        longest = max(len(run) for run in runs)
        means = [
            sum(run[i] for run in runs if i < len(run)) / sum(1 for run in runs if i < len(run)) for i in range(longest)
        ]
        ax.plot(range(1, longest + 1), means, label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("draft tokens verified (mean over prompts, repeat 0)")
    return _save_line_plot(fig, ax, path)


# ---------------------------------------------------------------- model card


def card_section(results: dict[str, Any]) -> str:
    return (
        f"{CARD_BEGIN}\n## Speculative decoding results\n\n{setup_line(results)}\n\n"
        f"{summary_table(results)}\n\n{per_task_table(results)}\n\n"
        f"τ: {results['tau_definition']}. Written by `diffuspec eval`.\n{CARD_END}\n"
    )


# ---------------------------------------------------------------- all outputs


def write_reports(
    results: dict[str, Any], records: Sequence[Any], out_dir: str | Path, model_card: str | Path | None = None
) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {
        "results.json": write_json(out / "results.json", {"schema": SCHEMA, **results}),
        "records.jsonl": write_jsonl(out / "records.jsonl", [r.to_json() for r in records]),
        "results.md": atomic_write_text(out / "results.md", markdown_report(results)),
        PLOTS[0]: plot_speedup_per_task(results, out / PLOTS[0]),
        PLOTS[1]: plot_accepted_histogram(results, out / PLOTS[1]),
        PLOTS[2]: plot_draft_lengths(records, out / PLOTS[2]),
    }
    if model_card is not None:
        paths["model_card"] = update_model_card(model_card, card_section(results))
    return paths


def print_summary(results: dict[str, Any], paths: dict[str, Path]) -> None:
    print(summary_table(results))
    for m in results["mismatches"]:
        print(f"LOSSLESS FAILURE: {mismatch_message(m, results['baseline'])}", file=sys.stderr)
    for f in results["failures"]:
        print(f"FAILED CALL: {f['method']} on prompt {f['prompt']} (task {f['task']}): {f['error']}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
