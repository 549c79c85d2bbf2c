"""Train a feature-conditioned block drafter against its frozen verifier.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml train/train_conditioned.py \
        --config recipes/conditioned-qwen3-8b/train/config_l3_b16.yaml

On a CPU: ``python train/train_conditioned.py --config recipes/conditioned-tiny-cpu/train/config.yaml``.
Every recipe key can be overridden on the command line (``--max_steps 50 --output_dir runs/x``); unknown keys are
refused. The verifier reads each batch once (online features and, with ``kl_weight``, its logits); a rerun with
the same ``output_dir`` resumes from the last checkpoint. ``drafter_name_or_path`` (a diffuspec drafter or a DFlash
checkpoint) adapts an existing drafter, in full or, with ``use_lora: true``, through LoRA adapters merged into its
weights at the end (``recipes/conditioned-tiny-cpu/train/config_lora.yaml``). Data: prompt_ids / completion_ids
rows, as ``train/generate_data.py`` writes them. Logic: ``diffuspec.training.run``.
"""

import logging

from diffuspec.launch import end_launched_process
from diffuspec.training.conditioned_config import parse_conditioned_config
from diffuspec.training.config import configure_logging
from diffuspec.training.run import run_conditioned_training

logger = logging.getLogger(__name__)


def main(model_args, data_args, training_args):
    configure_logging(logger, training_args, model_args, data_args)
    trainer = run_conditioned_training(model_args, data_args, training_args)
    logger.info(f"Conditioned drafter saved to {training_args.output_dir}")
    return trainer


if __name__ == "__main__":
    main(*parse_conditioned_config())
    end_launched_process()
