"""Precompute the verifier features a conditioned drafter trains on (offline training).

    accelerate launch --num_processes 8 train/precompute_features.py --verifier Qwen/Qwen3-8B \
        --dataset_path data/qwen3-8b/train --out data/qwen3-8b/features --feature_layers 1 19 36 --dtype bfloat16
    accelerate launch ... train/train_conditioned.py --config ... --features_path data/qwen3-8b/features --kl_weight 0

Prints the disk size before writing; each process writes its own shards; a killed run resumes by running the same
command (finished shards are kept, the others recomputed). Use the same --max_prompt_length /
--max_completion_length as the training recipe: features depend on the whole (cut) prefix.
Logic: ``diffuspec.training.run.run_feature_precompute``.
"""

from transformers import HfArgumentParser

from diffuspec.launch import end_launched_process
from diffuspec.training.features import FeatureArguments
from diffuspec.training.run import run_feature_precompute


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(FeatureArguments).parse_args_into_dataclasses(args=argv)
    return run_feature_precompute(args)


if __name__ == "__main__":
    main()
    end_launched_process()
