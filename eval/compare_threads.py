"""Plain decoding and the aligned diffusion drafter of a quickstart run at 1 and 2 torch threads, interleaved.

    python eval/compare_threads.py --run-dir runs/quickstart

``diffuspec eval`` times every method at one thread setting, so comparing two settings takes two runs, minutes
apart, and this VM's speed drifts more between runs than the effect being measured. Here every prompt is decoded
by each (method, threads) pair in turn, the order of the two settings alternating between repeats, so drift hits
all four alike. Prints tokens per second (median of the repeats) and each setting's speedup over plain decoding
at the same setting, and over plain decoding at its best setting.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from diffuspec.evaluation.config import MethodSpec
from diffuspec.evaluation.environment import steady_cpu_allocator
from diffuspec.evaluation.methods import DecoderRunner, build_runner
from diffuspec.jsonl import read_jsonl
from diffuspec.loading import load_diffusion_model
from diffuspec.quickstart import STAGES
from diffuspec.quickstart.config import load_preset
from diffuspec.quickstart.stages import eval_methods

THREADS = (1, 2)


def runners(run_dir: Path) -> dict[str, DecoderRunner]:
    """``ar`` and ``dlm_aligned`` exactly as the full preset's evaluation builds them (its method specs)."""
    stages = {stage.name: run_dir / stage.name for stage in STAGES}
    specs = [
        MethodSpec.from_dict(raw, "the quickstart's evaluation", ar_drafter=None)
        for raw in eval_methods(load_preset("full"), stages)
        if raw.get("name", raw["kind"]) in ("ar", "dlm_aligned")
    ]
    verifier = AutoModelForCausalLM.from_pretrained(run_dir / "verifier").eval()
    eos = (int(verifier.config.eos_token_id),)
    return {
        spec.name: build_runner(
            spec,
            verifier,
            eos,
            verifier.config.pad_token_id,
            diffusion=load_diffusion_model(spec.drafter) if spec.kind == "diffusion" else None,
        )
        for spec in specs
    }


def measure(
    methods: dict[str, DecoderRunner], prompts: list[torch.Tensor], max_new_tokens: int, repeats: int
) -> dict[tuple[str, int], list[float]]:
    """Tokens per second of each (method, threads) pair, one value per repeat; the first prompt warms each up."""
    for threads in THREADS:
        torch.set_num_threads(threads)
        for runner in methods.values():
            runner(prompts[0], max_new_tokens, temperature=0.0, seed=0)
    rates: dict[tuple[str, int], list[float]] = {(m, t): [] for m in methods for t in THREADS}
    for repeat in range(repeats):
        seconds = dict.fromkeys(rates, 0.0)
        tokens = dict.fromkeys(rates, 0)
        for prompt in prompts:
            for threads in THREADS if repeat % 2 == 0 else THREADS[::-1]:
                torch.set_num_threads(threads)
                for name, runner in methods.items():
                    out = runner(prompt, max_new_tokens, temperature=0.0, seed=0)
                    seconds[(name, threads)] += out.time_s
                    tokens[(name, threads)] += len(out.tokens)
        for key in rates:
            rates[key].append(tokens[key] / seconds[key])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.run_dir / "drafter_aligned" / "model").is_dir():
        raise SystemExit(
            f"{args.run_dir} has no drafter_aligned/model: run `diffuspec quickstart --run-dir {args.run_dir}`"
        )
    prompts = [
        torch.tensor(record["prompt_ids"])
        for _, record in read_jsonl(args.run_dir / "data" / "heldout_prompts.jsonl", "held-out prompts")
    ]
    steady_cpu_allocator()  # as diffuspec eval does
    before = torch.get_num_threads()
    try:
        rates = measure(runners(args.run_dir), prompts, args.max_new_tokens, args.repeats)
    finally:
        torch.set_num_threads(before)
    median = {key: statistics.median(values) for key, values in rates.items()}
    best_plain = max(median[("ar", t)] for t in THREADS)
    print(f"{len(prompts)} prompts x {args.max_new_tokens} new tokens, {args.repeats} interleaved repeats")
    print("| method | threads | tok/s (median) | per repeat | speedup at same threads | speedup over best plain |")
    print("|---|---|---|---|---|---|")
    for (name, threads), values in rates.items():
        same = median[(name, threads)] / median[("ar", threads)]
        best = median[(name, threads)] / best_plain
        per_repeat = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {threads} | {median[(name, threads)]:.1f} | {per_repeat} | {same:.2f}x | {best:.2f}x |")


if __name__ == "__main__":
    main()
