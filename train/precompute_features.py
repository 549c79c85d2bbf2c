"""Precompute the verifier features a conditioned drafter trains on (offline training, issue 8).

    accelerate launch --num_processes 8 train/precompute_features.py --verifier Qwen/Qwen3-8B \
        --dataset_path data/qwen3-8b/train --out data/qwen3-8b/features --feature_layers 1 19 36 --dtype bfloat16
    accelerate launch ... train/train_conditioned.py --config ... --features_path data/qwen3-8b/features --kl_weight 0

Prints the disk size before writing; each process writes its own shards; a killed run resumes by running the same
command (finished shards are kept, the others recomputed). Use the same --max_prompt_length /
--max_completion_length as the training recipe: features depend on the whole (cut) prefix.
"""

import argparse

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM

from diffuspec.hub import resolve_local
from diffuspec.training.features import DTYPES, precompute_features
from diffuspec.training.inputs import check_examples, load_examples


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifier", required=True, help="Verifier folder or Hub id (the name training checks).")
    parser.add_argument("--dataset_path", nargs="+", required=True, help="prompt_ids / completion_ids data.")
    parser.add_argument("--out", required=True, help="Feature folder (created; resumed when it exists).")
    parser.add_argument("--feature_layers", type=int, nargs="+", default=None, help="hidden_states indices.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="Stored feature dtype.")
    parser.add_argument("--shard_rows", type=int, default=256, help="Rows per shard (a kill loses at most one).")
    parser.add_argument("--max_prompt_length", type=int, default=None, help="As in the training recipe.")
    parser.add_argument("--max_completion_length", type=int, default=None, help="As in the training recipe.")
    parser.add_argument("--model_dtype", choices=sorted(DTYPES), default="bfloat16", help="Verifier weights.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dataset = load_examples(args.dataset_path)  # checked before the verifier loads
    check_examples(dataset, f"dataset_path {args.dataset_path}")
    state = PartialState()
    verifier = AutoModelForCausalLM.from_pretrained(
        resolve_local(args.verifier), dtype=DTYPES[args.model_dtype], device_map={"": state.device}
    ).eval()
    with torch.inference_mode():
        spec = precompute_features(
            verifier,
            args.verifier,
            dataset,
            args.out,
            feature_layers=args.feature_layers,
            dtype=args.dtype,
            shard_rows=args.shard_rows,
            max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length,
            rank=state.process_index,
            world_size=state.num_processes,
            log=print if state.is_main_process else (lambda *_: None),
        )
    state.wait_for_everyone()
    return spec


if __name__ == "__main__":
    main()
