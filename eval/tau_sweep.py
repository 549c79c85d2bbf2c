"""Tokens per round of every method of an eval recipe, one untimed greedy pass: for choosing drafter settings.

    python eval/tau_sweep.py --config recipes/smollm2-135m-cpu/eval/config_tree_sweep.yaml \
        --output-dir runs/smollm2_tree_sweep

At T = 0 tau is deterministic, so one pass over the prompts gives what three timed repeats would, at a third of
the cost and with no clock to keep quiet (other jobs may share the CPU). The recipe's first method is the baseline:
every other method's tokens must equal its tokens (a mismatch is reported and the exit code is 1). tau counts
the verifier's bonus token; 'nodes' is the mean number of draft tokens verified per round (a tree's nodes, a
chain's path); 'coverage', for drafters with a draft vocabulary, is the share of the baseline's tokens inside it
(the tokens such a drafter can propose at all). Writes tau.json and tau.md in the recipe's output_dir. No speedups:
use ``diffuspec eval``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffuspec.evaluation import config_from_args
from diffuspec.evaluation.config import add_arguments
from diffuspec.evaluation.harness import prepare
from diffuspec.evaluation.methods import DecoderRunner
from diffuspec.evaluation.timing import run_once
from diffuspec.files import write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    config = config_from_args(parser.parse_args())
    if config.temperature != 0:
        raise SystemExit(f"a tau sweep is deterministic only at temperature 0, got {config.temperature}")
    prompts, runners = prepare(config)
    rows: dict[str, dict[str, float | int]] = {}
    mismatches = 0
    reference: dict[int, list[int]] = {}
    for runner in runners:
        tokens = rounds = nodes = 0
        drafter = runner.decoder.drafter if isinstance(runner, DecoderRunner) else None
        vocabulary = getattr(drafter, "vocabulary", None)
        for prompt in prompts:
            record = run_once(runner, prompt, 0, config.max_new_tokens, 0.0, config.seed)
            if record.error is not None:
                raise SystemExit(f"{runner.name} failed on prompt {prompt.qid}: {record.error}")
            expected = reference.setdefault(prompt.index, record.tokens)
            mismatches += record.tokens != expected
            tokens += record.new_tokens
            rounds += len(record.accepted) if record.accepted is not None else record.new_tokens
            nodes += sum(record.path_lengths or [])
        row = {"tau": tokens / rounds, "nodes": nodes / rounds, "rounds": rounds, "tokens": tokens, "coverage": None}
        if vocabulary is not None:
            row["coverage"] = vocabulary.coverage([t for p in prompts for t in reference[p.index]])
        rows[runner.name] = row
        print(f"{runner.name}: tau {row['tau']:.3f}, nodes {row['nodes']:.1f}", flush=True)
    out = Path(config.output_dir)
    write_json(out / "tau.json", {"methods": rows, "prompts": len(prompts), "mismatches": mismatches,
                                  "config": config.to_dict()})  # fmt: skip
    lines = ["| method | tau | nodes per round | draft vocabulary coverage |", "|---|---|---|---|"]
    for name, row in rows.items():
        coverage = "—" if row["coverage"] is None else f"{row['coverage']:.1%}"
        lines.append(f"| {name} | {row['tau']:.2f} | {row['nodes']:.1f} | {coverage} |")
    (out / "tau.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if mismatches:
        print(f"{mismatches} generations differ from {runners[0].name}'s", file=sys.stderr)
    return int(mismatches > 0)


if __name__ == "__main__":
    raise SystemExit(main())
