"""Align a diffusion drafter to its verifier.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml train/train_drafter.py \
        --config recipes/dream-7b_qwen2.5-7b-instruct/train/config_lora.yaml

Every recipe key can be overridden on the command line, e.g. ``--learning_rate 5e-5 --output_dir runs/x``.
On a CPU: ``python train/train_drafter.py --config recipes/tiny-cpu/train/config_aligned.yaml`` (the quickstart's
recipe; ``--drafter_name_or_path``, ``--dataset_path`` and the other folders come from your run).
Data: JSONL / datasets folders with prompt_ids, completion_ids and optionally teacher_topk_ids /
teacher_topk_logprobs, as ``train/generate_data.py`` writes them. Logic: ``diffuspec.training.run``.
"""

import logging

from diffuspec.launch import end_launched_process
from diffuspec.training.config import configure_logging, parse_config
from diffuspec.training.run import run_drafter_training

logger = logging.getLogger(__name__)


def main(model_args, data_args, training_args):
    configure_logging(logger, training_args, model_args, data_args)
    return run_drafter_training(model_args, data_args, training_args)


if __name__ == "__main__":
    main(*parse_config())
    end_launched_process()
