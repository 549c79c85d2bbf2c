"""Align a diffusion drafter to its verifier (issue 3).

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml train/train_drafter.py \
        --config recipes/dream-7b_qwen2.5-7b-instruct/train/config_lora.yaml

Every recipe key can be overridden on the command line, e.g. ``--learning_rate 5e-5 --output_dir runs/x``.
On a CPU: ``python train/train_drafter.py --config recipes/tiny-cpu/train/config_aligned.yaml``.
Data: JSONL / datasets folders with prompt_ids, completion_ids and optionally teacher_topk_ids /
teacher_topk_logprobs, as ``diffuspec.training.data`` writes them.
"""

import logging
import os

from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from diffuspec.training import AcceptanceCallback, DrafterTrainer, parse_config
from diffuspec.training.config import configure_logging
from diffuspec.training.inputs import check_examples, load_examples, load_prompts
from diffuspec.training.modeling import (
    apply_lora,
    check_drafter_tokenizer,
    check_precision,
    load_drafter,
    load_tokenizer,
    load_verifier,
    save_merged,
)

logger = logging.getLogger(__name__)


def main(model_args, data_args, training_args) -> DrafterTrainer:
    ###############
    # Setup
    ###############
    configure_logging(logger, training_args, model_args, data_args)
    check_precision(model_args, training_args)
    set_seed(training_args.seed)

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is not None:
            logger.info(f"Checkpoint detected, resuming training at {checkpoint}")

    ###############
    # Data (checked before any model loads)
    ###############
    dataset = load_examples(data_args.dataset_path)
    has_teacher = check_examples(dataset, f"dataset_path {data_args.dataset_path}")
    evaluate_acceptance = training_args.eval_acceptance_steps > 0 and training_args.process_index == 0
    if training_args.eval_acceptance_steps > 0 and data_args.eval_prompts_path is None:
        raise ValueError("eval_acceptance_steps > 0 needs eval_prompts_path (held-out prompts with prompt_ids)")
    prompts = (
        load_prompts(data_args.eval_prompts_path, training_args.eval_acceptance_prompts)
        if evaluate_acceptance
        else None
    )

    ###############
    # Drafter, verifier, tokenizer
    ###############
    model, mask_token_id, shifted = load_drafter(model_args, training_args)
    tokenizer = load_tokenizer(model_args.drafter_name_or_path)
    check_drafter_tokenizer(tokenizer, mask_token_id)
    online_teacher = training_args.needs_teacher and not has_teacher
    verifier = load_verifier(model_args, model, tokenizer) if online_teacher or evaluate_acceptance else None
    logger.info(f"Drafter: mask_token_id={mask_token_id} shifted={shifted}; online teacher: {online_teacher}")

    if model_args.use_lora:
        model = apply_lora(model, model_args, training_args.activation_checkpointing)

    ###############
    # Train
    ###############
    callbacks = []
    if evaluate_acceptance:
        callbacks.append(
            AcceptanceCallback(
                verifier,
                prompts,
                every_n_steps=training_args.eval_acceptance_steps,
                max_new_tokens=training_args.eval_max_new_tokens,
                decode_config=training_args.eval_decode_config(),
            )
        )
    trainer = DrafterTrainer(
        model,
        training_args,
        dataset,
        mask_token_id=mask_token_id,
        shifted=shifted,
        verifier_model=verifier if online_teacher else None,
        max_prompt_length=data_args.max_prompt_length,
        max_completion_length=data_args.max_completion_length,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    ###############
    # Save (model folders carry the diffuspec marker: they load with DiffusionDrafter.from_pretrained)
    ###############
    trainer.save_model(training_args.output_dir)
    logger.info(f"Drafter saved to {training_args.output_dir}")
    if model_args.use_lora and model_args.merge_and_save and trainer.args.should_save:
        merged_dir = os.path.join(training_args.output_dir, "merged")
        save_merged(trainer.accelerator.unwrap_model(trainer.model), merged_dir, mask_token_id, shifted, tokenizer)
        logger.info(f"Merged LoRA drafter saved to {merged_dir}")
    trainer.accelerator.wait_for_everyone()
    return trainer


if __name__ == "__main__":
    model_args, data_args, training_args = parse_config()
    # end_training destroys the process group: a gloo/NCCL group left to interpreter exit can abort the process
    # ("terminate called without an active exception") after the run has finished and saved.
    accelerator = main(model_args, data_args, training_args).accelerator
    accelerator.wait_for_everyone()
    accelerator.end_training()
