"""The evaluation pipeline: check the recipe's inputs, load the models once, build the prompts, time every method
(``timing``), summarise (``statistics``) and write every output (``report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device
from ..loading import load_causal_lm, resolve_local
from .benchmarks import Prompt, build_prompts, load_questions
from .config import EvalConfig
from .environment import environment, peak_memory, steady_cpu_allocator
from .journal import JOURNAL_FILE, Journal, recipe_fingerprint
from .methods import check_inputs, load_runners, neutral_generation_config, stop_tokens
from .records import Record
from .report import print_summary, write_reports
from .statistics import TAU_DEFINITION, summarise
from .timing import Runner, measure


def evaluate(config: EvalConfig, journal: str | Path | None = None) -> int:
    """Run a recipe end to end; returns the exit code (1 on a lossless mismatch or a failed call). With
    ``config.resume`` the finished calls are journalled (``journal``, default ``output_dir/journal.jsonl``), so a
    killed run picks up where it stopped; the journal is removed once the reports are written."""
    if resolve_device(config.device).type == "cpu":  # before any model loads or any timing
        steady_cpu_allocator()
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _evaluate(config, Path(journal or Path(config.output_dir) / JOURNAL_FILE))
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate(config: EvalConfig, journal_path: Path) -> int:
    prompts, runners = prepare(config)
    journal = None
    if config.resume:
        models = [config.verifier, config.ar_drafter, *(p for m in config.methods for p in (m.drafter, m.proxy))]
        journal = Journal(journal_path, recipe_fingerprint(config.to_dict(), [m for m in models if m]))
    records = measure(
        prompts,
        runners,
        repeats=config.repeats,
        warmup=config.warmup,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
        progress=config.progress,
        journal=journal,
    )
    benchmark = {
        "kind": config.benchmark,
        "path": config.benchmark_path,
        "turns": config.turns,
        "chat_template": config.chat_template,
        "max_prompt_tokens": config.max_prompt_tokens,
    }
    code = report_run(
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
    if journal is not None:
        journal.remove()
    return code


def prepare(config: EvalConfig) -> tuple[list[Prompt], list[Runner]]:
    """Check the recipe's inputs, load the models once and build the prompts and runners (the baseline first).
    A later turn follows the baseline's greedy answer to the previous one. Shared by ``evaluate`` and by the
    untimed tau sweeps of ``eval/tau_sweep.py``."""
    from transformers import AutoTokenizer

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

    # ---- prompts
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
    return prompts, runners


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
