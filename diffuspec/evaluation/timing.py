"""Timing generate calls: warm-up first, then interleaved repeats, one clock and one token count for all methods.

- Warm-up generations run first and are not timed.
- Each repeat runs every prompt through every method, the method order rotating from prompt to prompt, so that
  thermal or frequency drift hits all methods alike.
- One clock for all methods (device-synchronised ``perf_counter`` around the whole call, inside each runner) and one
  token count (the new token ids each call returned).
- An exception in one call is recorded as a failure of that (method, prompt, repeat); the run goes on and its times
  are left out of that method's statistics, never replaced by a stale value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .benchmarks import Prompt
from .journal import Journal
from .methods import DecoderRunner, HFRunner
from .records import Record

Runner = DecoderRunner | HFRunner


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
        record.draft_lengths, record.depths = out.rounds.draft_lengths, out.rounds.depths
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
    journal: Journal | None = None,
) -> list[Record]:
    """Warm up every method, then time ``repeats`` interleaved passes over all prompts and methods. With a
    ``journal``, each prompt's group of calls is appended to it as it ends, and groups it holds are not rerun."""
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
            if journal is not None and (repeat, prompt.index) in journal.done:
                records.extend(journal.done[(repeat, prompt.index)])
                bar.update(len(runners))
                continue
            shift = (repeat + prompt.index) % len(runners)
            call_seed = seed + repeat * len(prompts) + prompt.index  # same seed for every method on this call
            group = []
            for runner in [*runners[shift:], *runners[:shift]]:
                record = run_once(runner, prompt, repeat, max_new_tokens, temperature, call_seed)
                if record.error is not None:
                    bar.write(f"{runner.name}: prompt {prompt.index} ({prompt.task}) failed: {record.error}")
                group.append(record)
                bar.update()
            if journal is not None:
                journal.add(group)
            records.extend(group)
    bar.close()
    return records
