"""Generate drafter training data: the verifier's own continuations of a prompt set, optionally with its top-K.

    accelerate launch --num_processes 8 train/generate_data.py \
        --verifier Qwen/Qwen2.5-7B-Instruct --prompts data/prompts.jsonl --out data/qwen2.5-7b-greedy \
        --max_new_tokens 512 --temperature 0 --teacher_topk 16 --dtype bfloat16

Each process writes OUT.shards/rank-R-of-W.jsonl; rerun the same command after a crash and it resumes where the
shards stop (any process count). Rank 0 then writes OUT (datasets save_to_disk + metadata.json).
On a CPU: ``python train/generate_data.py --verifier runs/tiny/verifier --prompt_token_ids prompts.jsonl
--out runs/tiny/data --max_new_tokens 64``. Every flag: ``--help``; the schema: ``diffuspec.datagen``.
"""

import logging
import sys

from transformers import HfArgumentParser

from diffuspec.datagen import DataGenerationConfig, generate_dataset
from diffuspec.launch import end_launched_process


def main(config: DataGenerationConfig) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
        level=logging.INFO,
    )
    generate_dataset(config)


if __name__ == "__main__":
    parser = HfArgumentParser(DataGenerationConfig)
    (config,) = parser.parse_args_into_dataclasses()
    main(config)
    end_launched_process()
