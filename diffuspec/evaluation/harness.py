"""The measurement loop and its statistics (Spec-Bench's harness, with its known problems fixed).

- Warm-up generations run first and are not timed.
- Each repeat runs every prompt through every method, the method order rotating from prompt to prompt, so
  that thermal or frequency drift hits all methods alike; speedup is the median over repeats of
  ``sum of ar times / sum of method times`` on the prompts both finished, with the min and max beside it.
- One clock for all methods (device-synchronised ``perf_counter`` around the whole call) and one token count
  (the new token ids each call returned).
- At temperature 0 every method's tokens are compared with ``ar``'s, token for token; a mismatch is reported
  with the prompt and the first differing position and makes the run fail after the results are written.
- An exception in one call is recorded as a failure of that (method, prompt, repeat); the run goes on and
  its times are left out of the speedup of that method, never replaced by a stale value.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .benchmarks import Prompt, build_prompts, load_questions
from .config import BASELINE, EvalConfig
from .costmodel import measured_profile, speedup_bound
from .methods import (
    DecoderRunner,
    HFRunner,
    check_inputs,
    load_causal_lm,
    load_runners,
    neutral_generation_config,
    resolve_device,
    stop_tokens,
)

Runner = DecoderRunner | HFRunner
TAU_DEFINITION = "new tokens per verifier round; the verifier's own (correction or bonus) token is counted, so ar = 1"


@dataclass
class Record:
    """One generate call. ``repeat`` is -1 for a warm-up call (kept only when it failed)."""

    method: str
    repeat: int
    prompt: int
    task: str
    qid: str
    turn: int
    new_tokens: int = 0
    time_s: float | None = None
    accepted: list[int] | None = None
    path_lengths: list[int] | None = None
    draft_lengths: list[int] | None = None
    split: dict[str, float] | None = None
    peak_memory_bytes: int | None = None
    note: str | None = None
    error: str | None = None
    tokens: list[int] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.repeat >= 0 and self.error is None

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        del row["tokens"]
        return row


# ---------------------------------------------------------------- measuring


def run_once(runner: Runner, prompt: Prompt, repeat: int, max_new_tokens: int, temperature: float, seed: int) -> Record:
    record = Record(runner.name, repeat, prompt.index, prompt.task, prompt.qid, prompt.turn)
    device = runner.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        out = runner(torch.tensor(prompt.ids, dtype=torch.long), max_new_tokens, temperature, seed)
    except Exception as error:  # one failing prompt is recorded and reported; the run goes on
        record.error = f"{type(error).__name__}: {error}"
        return record
    record.tokens, record.new_tokens, record.time_s, record.note = out.tokens, len(out.tokens), out.time_s, out.note
    record.split = out.split
    if out.rounds is not None:
        record.accepted, record.path_lengths = out.rounds.accepted, out.rounds.path_lengths
        record.draft_lengths = out.rounds.draft_lengths
    if device.type == "cuda":
        record.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    return record


def measure(
    prompts: Sequence[Prompt],
    runners: Sequence[Runner],
    *,
    repeats: int,
    warmup: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> list[Record]:
    """Warm up every method, then time ``repeats`` interleaved passes over all prompts and methods."""
    from tqdm.auto import tqdm

    if not prompts or not runners:
        raise ValueError(f"nothing to measure: {len(prompts)} prompts, {len(runners)} methods")
    records = []
    for runner in runners:
        for i in range(warmup):
            record = run_once(runner, prompts[i % len(prompts)], -1, max_new_tokens, temperature, seed)
            if record.error is not None:
                records.append(record)
    bar = tqdm(total=repeats * len(prompts) * len(runners), desc="eval", disable=not progress, unit="gen")
    for repeat in range(repeats):
        for prompt in prompts:
            shift = (repeat + prompt.index) % len(runners)
            call_seed = seed + repeat * len(prompts) + prompt.index  # same seed for every method on this call
            for runner in [*runners[shift:], *runners[:shift]]:
                record = run_once(runner, prompt, repeat, max_new_tokens, temperature, call_seed)
                if record.error is not None:
                    bar.write(f"{runner.name}: prompt {prompt.index} ({prompt.task}) failed: {record.error}")
                records.append(record)
                bar.update()
    bar.close()
    return records


# ---------------------------------------------------------------- statistics


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
        "acceptance_by_position": measured_profile(accepted, paths) if tau else None,
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


# ---------------------------------------------------------------- environment


def environment(device: torch.device) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: versions, threads, device, commit, command."""
    import transformers

    from .. import __version__

    commit = None
    try:
        repo = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    env = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffuspec": __version__,
        "git_commit": commit,
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "steady_cpu_allocator": device.type == "cpu" and steady_cpu_allocator(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "command": " ".join(sys.argv),
    }
    return env


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {
            "kind": "cuda_max_memory_allocated",
            "bytes": int(torch.cuda.max_memory_allocated(device)),
            "note": "per method in methods.<name>.peak_memory_bytes (reset before each call); this is the last call's",
        }
    return {
        "kind": "process_rss_peak",
        "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "note": "peak resident set size of the whole process (all models loaded, every method), from "
        "resource.getrusage; CPU memory cannot be attributed per method",
    }


# ---------------------------------------------------------------- the whole run


@functools.cache
def steady_cpu_allocator() -> bool:
    """Stop glibc's malloc from handing freed memory back to the system between calls (Linux/glibc only; returns
    whether it applied; applied once per process, later calls only report).

    With glibc's defaults, large tensors are mmap-ed and freed memory is trimmed, so a method timed right after
    another one (interleaving) pays page faults to fault its buffers back in. On the quickstart's CPU models this
    slowed plain decoding by a third (256 vs 376 tok/s) and speculative methods less, inflating every speedup.
    A fixed mmap threshold (its largest value) and no trimming keep each method's memory warm."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(m_trim_threshold, 2**30))


def evaluate(config: EvalConfig) -> int:
    """Run a recipe end to end; returns the exit code (1 on a lossless mismatch or a failed call)."""
    if resolve_device(config.device).type == "cpu":  # before any model loads or any timing
        steady_cpu_allocator()
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _evaluate(config)
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate(config: EvalConfig) -> int:
    from transformers import AutoTokenizer

    from ..hub import resolve_local

    # ---- inputs that can fail before any model loads
    tokenizer = None
    if config.benchmark == "text_dir":
        tokenizer = AutoTokenizer.from_pretrained(resolve_local(config.verifier))
    questions = load_questions(
        config.benchmark, config.benchmark_path, tokenizer, config.tasks, config.prompts_per_task, config.window_tokens
    )
    check_inputs(config)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(resolve_local(config.verifier))

    # ---- models
    device = resolve_device(config.device)
    verifier = load_causal_lm(config.verifier, config.dtype, device)
    eos, pad_token_id = stop_tokens(verifier, tokenizer)
    verifier.generation_config = neutral_generation_config(eos, pad_token_id)
    runners = load_runners(config, verifier, eos, pad_token_id, device)
    baseline = runners[0]

    # ---- prompts (a later turn follows the verifier's greedy answer to the previous one)
    def answer(ids: list[int]) -> list[int]:
        return baseline(torch.tensor(ids), config.max_new_tokens, 0.0, config.seed).tokens

    prompts = build_prompts(
        questions,
        tokenizer,
        chat_template=config.chat_template,
        turns=config.turns,
        max_prompt_tokens=config.max_prompt_tokens,
        answer=answer,
    )

    # ---- measure
    records = measure(
        prompts,
        runners,
        repeats=config.repeats,
        warmup=config.warmup,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
        progress=config.progress,
    )

    # ---- report
    benchmark = {
        "kind": config.benchmark,
        "path": config.benchmark_path,
        "turns": config.turns,
        "chat_template": config.chat_template,
        "max_prompt_tokens": config.max_prompt_tokens,
    }
    return report_run(
        records,
        prompts,
        runners,
        repeats=config.repeats,
        warmup=config.warmup,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        verifier=config.verifier,
        benchmark=benchmark,
        output_dir=config.output_dir,
        model_card=config.model_card,
        config=config.to_dict(),
    )


def report_run(
    records: Sequence[Record],
    prompts: Sequence[Prompt],
    runners: Sequence[Runner],
    *,
    repeats: int,
    warmup: int,
    max_new_tokens: int,
    temperature: float,
    verifier: str,
    benchmark: dict[str, Any],
    output_dir: str | Path,
    model_card: str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> int:
    """Summarise ``measure``'s records, write every output and print the summary; returns the exit code (1 on a
    lossless mismatch or a failed call). Callers that build their own runners (the quickstart) end here too."""
    from .report import print_summary, write_reports

    device = runners[0].device
    results = summarise(records, prompts, runners, repeats, temperature)
    results.update(
        {
            "repeats": repeats,
            "warmup": warmup,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "device": str(device),
            "dtype": str(runners[0].dtype),
            "verifier": verifier,
            "eos_token_ids": list(runners[0].eos),
            "tau_definition": TAU_DEFINITION,
            "benchmark": {**benchmark, "prompts": len(prompts)},
            "peak_memory": peak_memory(device),
            "env": environment(device),
            "config": config,
        }
    )
    paths = write_reports(results, records, output_dir, model_card=model_card)
    print_summary(results, paths)
    return 1 if results["mismatches"] or results["failures"] else 0
