"""Statistics of a run's records: the lossless check, speedups, tau, time splits and the cost-model bound.

Speedup is the median over repeats of ``sum of baseline times / sum of method times`` on the prompts both finished,
with the min and max beside it. At temperature 0 every method's tokens are compared with the baseline's, token for
token; a mismatch names the prompt and the first differing position (``mismatch_message``).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .benchmarks import Prompt
from .config import BASELINE
from .costmodel import measured_profile, speedup_bound
from .records import Record
from .timing import Runner

TAU_DEFINITION = "new tokens per verifier round; the verifier's own (correction or bonus) token is counted, so ar = 1"


def first_difference(expected: Sequence[int], actual: Sequence[int]) -> int | None:
    """Index of the first differing new token (the shorter length if one is a prefix of the other), or None."""
    for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return i
    return None if len(expected) == len(actual) else min(len(expected), len(actual))


def find_mismatches(records: Sequence[Record], baseline: str = BASELINE) -> list[dict[str, Any]]:
    base = {(r.repeat, r.prompt): r for r in records if r.ok and r.method == baseline}
    mismatches = []
    for r in records:
        b = base.get((r.repeat, r.prompt))
        if not r.ok or r.method == baseline or b is None:
            continue
        position = first_difference(b.tokens, r.tokens)
        if position is not None:
            mismatches.append(
                {
                    "method": r.method,
                    "repeat": r.repeat,
                    "prompt": r.prompt,
                    "task": r.task,
                    "qid": r.qid,
                    "turn": r.turn,
                    "position": position,
                    "baseline_token": b.tokens[position] if position < len(b.tokens) else None,
                    "method_token": r.tokens[position] if position < len(r.tokens) else None,
                    "baseline_new_tokens": len(b.tokens),
                    "method_new_tokens": len(r.tokens),
                }
            )
    return mismatches


def mismatch_message(m: dict[str, Any], baseline: str = BASELINE) -> str:
    return (
        f"method {m['method']!r} differs from {baseline!r} on prompt {m['prompt']} (task {m['task']}, question "
        f"{m['qid']}, turn {m['turn']}, repeat {m['repeat']}) at new-token position {m['position']}: "
        f"{baseline} {m['baseline_token']}, {m['method']} {m['method_token']}"
    )


def repeat_speedups(records: Sequence[Record], method: str, baseline: str, task: str | None = None) -> list[float]:
    """Per repeat: baseline time / method time, summed over the prompts both finished in that repeat."""

    def times(name: str) -> dict[tuple[int, int], float]:
        return {(r.repeat, r.prompt): r.time_s for r in records if r.ok and r.method == name and task in (None, r.task)}

    base, mine = times(baseline), times(method)
    ratios = []
    for repeat in sorted({key[0] for key in mine}):
        keys = [key for key in mine if key[0] == repeat and key in base]
        if keys:
            ratios.append(sum(base[k] for k in keys) / sum(mine[k] for k in keys))
    return ratios


def pooled_speedup(records: Sequence[Record], method: str, baseline: str) -> float | None:
    """Baseline time / method time summed over every call both finished (all repeats pooled)."""
    base = {(r.repeat, r.prompt): r.time_s for r in records if r.ok and r.method == baseline}
    mine = {(r.repeat, r.prompt): r.time_s for r in records if r.ok and r.method == method}
    keys = [key for key in mine if key in base]
    return sum(base[k] for k in keys) / sum(mine[k] for k in keys) if keys else None


def _tau(rows: Sequence[Record]) -> tuple[float | None, str | None]:
    missing = [r for r in rows if r.accepted is None]
    if missing:
        return None, missing[0].note or "rounds were not observable"
    rounds = sum(len(r.accepted) for r in rows)
    return (sum(r.new_tokens for r in rows) / rounds if rounds else None), None


def _speedup_fields(ratios: list[float]) -> dict[str, float | None]:
    if not ratios:
        return {"speedup": None, "speedup_min": None, "speedup_max": None}
    return {"speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios)}


def _time_split(rows: Sequence[Record]) -> dict[str, float] | None:
    if not rows or any(r.split is None for r in rows):
        return None
    split = {part: sum(r.split[part] for r in rows) for part in ("draft", "search", "verify")}
    split["other"] = max(0.0, sum(r.time_s for r in rows) - sum(split.values()))
    return split


def summarise_method(
    records: Sequence[Record],
    name: str,
    kind: str,
    tau_source: str,
    temperature: float,
    expected_calls: int,
    mismatches: Sequence[dict[str, Any]],
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """Every per-method number of results.json (see report.py for the schema)."""
    rows = [r for r in records if r.ok and r.method == name]
    failures = sum(1 for r in records if r.method == name and r.error is not None)
    tau, tau_note = _tau(rows)
    total_time = sum(r.time_s for r in rows)
    new_tokens = sum(r.new_tokens for r in rows)
    accepted = [a for r in rows if r.accepted is not None for a in r.accepted]
    paths = [m for r in rows if r.path_lengths is not None for m in r.path_lengths]
    drafts = [k for r in rows if r.draft_lengths is not None for k in r.draft_lengths]
    depths = [d for r in rows if r.path_lengths is not None for d in (r.depths or r.path_lengths)]
    histogram = Counter(accepted)
    own_mismatches = [m for m in mismatches if m["method"] == name]
    baseline_calls = {(b.repeat, b.prompt) for b in records if b.ok and b.method == baseline}
    compared = sum(1 for r in rows if (r.repeat, r.prompt) in baseline_calls)
    if temperature > 0:
        lossless, lossless_note = None, "token identity is only defined at temperature 0"
    elif own_mismatches:
        lossless, lossless_note = False, f"{len(own_mismatches)} of {compared} prompt runs differ from {baseline}"
    elif compared == expected_calls:
        lossless, lossless_note = True, f"all {compared} prompt runs equal {baseline} token for token"
    else:
        lossless, lossless_note = None, f"only {compared} of {expected_calls} prompt runs could be compared (failures)"
    split = _time_split(rows)
    peaks = [r.peak_memory_bytes for r in rows if r.peak_memory_bytes is not None]
    summary = {
        "kind": kind,
        "tau": tau,
        "tau_source": tau_source if tau is not None else None,
        "tau_note": tau_note,
        "mean_accepted": (sum(accepted) / len(accepted)) if accepted and tau is not None else None,
        "rounds": len(accepted) if tau is not None else None,
        "new_tokens": new_tokens,
        "time_s": total_time,
        "tokens_per_s": new_tokens / total_time if total_time > 0 else None,
        **_speedup_fields(repeat_speedups(records, name, baseline)),
        "speedup_per_repeat": repeat_speedups(records, name, baseline),
        "speedup_pooled": pooled_speedup(records, name, baseline),
        "lossless": lossless,
        "lossless_note": lossless_note,
        "mismatches": len(own_mismatches),
        "failures": failures,
        "accepted_histogram": [histogram.get(i, 0) for i in range(max(accepted, default=-1) + 1)] if tau else None,
        "acceptance_by_position": measured_profile(accepted, depths) if tau else None,
        "mean_draft_length": sum(drafts) / len(drafts) if drafts else None,  # k asked of the drafter
        "mean_path_length": sum(paths) / len(paths) if paths else None,  # tokens the verifier checked
        "time_split_s": split,
        "time_split_fraction": {k: v / total_time for k, v in split.items()} if split and total_time > 0 else None,
        "peak_memory_bytes": max(peaks) if peaks else None,
        "per_task": {},
    }
    for task in dict.fromkeys(r.task for r in records if r.method == name):
        task_rows = [r for r in rows if r.task == task]
        task_time = sum(r.time_s for r in task_rows)
        summary["per_task"][task] = {
            "tau": _tau(task_rows)[0] if task_rows else None,
            **_speedup_fields(repeat_speedups(records, name, baseline, task)),
            "tokens_per_s": sum(r.new_tokens for r in task_rows) / task_time if task_time > 0 else None,
            "prompts": len({r.prompt for r in task_rows}),
        }
    return summary


def add_cost_model(methods: dict[str, dict[str, Any]], baseline: str = BASELINE) -> None:
    """Measured speedup as a fraction of the cost-model bound ``tau * T_ar_step / T_round``.

    ``T_round`` is the method's measured mean draft + search + verify time per round (its loop overhead left out)
    and ``T_ar_step`` the baseline's wall time per token (everything plain decoding really costs). With the same
    tokens on both sides (lossless) the bound is never below the pooled measured speedup; the fraction (pooled
    speedup / bound) is what the method's own loop overhead leaves of it. Methods without a time split
    (transformers') get None."""
    base = methods[baseline]
    for summary in methods.values():
        split, tau, rounds = summary["time_split_s"], summary["tau"], summary["rounds"]
        if not (split and tau and rounds and base["new_tokens"] and summary["speedup_pooled"]):
            summary["cost_model"] = None
            continue
        ar_step = base["time_s"] / base["new_tokens"]
        round_s = (split["draft"] + split["search"] + split["verify"]) / rounds
        bound = speedup_bound(tau, ar_step, round_s)
        summary["cost_model"] = {
            "ar_step_s": ar_step,
            "round_s": round_s,
            "predicted_tokens_per_s": tau / round_s,
            "speedup_bound": bound,
            "fraction_of_bound": summary["speedup_pooled"] / bound,
        }


def summarise(
    records: Sequence[Record],
    prompts: Sequence[Prompt],
    runners: Sequence[Runner],
    repeats: int,
    temperature: float,
    baseline: str = BASELINE,
) -> dict[str, Any]:
    mismatches = find_mismatches(records, baseline) if temperature == 0 else []
    expected = repeats * len(prompts)
    methods = {
        r.name: summarise_method(records, r.name, r.kind, r.tau_source, temperature, expected, mismatches, baseline)
        for r in runners
    }
    add_cost_model(methods, baseline)
    return {
        "baseline": baseline,
        "methods": methods,
        "tasks": dict(Counter(p.task for p in prompts)),
        "mismatches": mismatches,
        "failures": [r.to_json() for r in records if r.error is not None],
        "lossless": _overall_lossless(methods, mismatches, temperature),
    }


def _overall_lossless(methods: dict[str, dict[str, Any]], mismatches: list, temperature: float) -> bool | None:
    """False on any mismatch, True when every method was compared on every call, else None (not checked)."""
    if temperature > 0:
        return None
    if mismatches:
        return False
    return True if all(m["lossless"] is True for m in methods.values()) else None
