"""Speedup of speculative decoding methods over plain greedy decoding, per task, with a lossless check.

    python eval/speedup.py --config recipes/tiny-cpu/eval/config_methods.yaml --output-dir runs/eval/tiny

Every key of the YAML recipe is also a flag (``--max-new-tokens 64 --tasks qa,rag``) and the flag wins. Writes
results.json, records.jsonl, results.md and three PNG plots to --output-dir; exits 1 if any method's tokens
differ from ``ar``'s at temperature 0 or any call failed (after writing the results).
"""

import argparse

from diffuspec.evaluation import EvalConfig, add_arguments, config_from_args, evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(config: EvalConfig) -> int:
    return evaluate(config)


if __name__ == "__main__":
    parser = build_parser()
    config = config_from_args(parser.parse_args())
    raise SystemExit(main(config))
