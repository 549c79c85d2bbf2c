"""The training runs behind ``train/*.py``: each takes the parsed argument groups, trains and saves a drafter.

``run_drafter_training`` aligns a diffusion drafter (``train/train_drafter.py``), ``run_conditioned_training``
trains a feature-conditioned one (``train/train_conditioned.py``); both resume from the last checkpoint in
``output_dir`` and write folders that load with ``diffuspec.drafters.load_drafter`` and push with
``diffuspec push``. ``train_conditioned_drafter`` is the conditioned run with a fixed small recipe (the quickstart's
and the tests').
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..decoding.config import DecodeConfig
from ..drafter_config import record_recommended_decode, write_diffuspec_config
from ..files import write_json
from ..loading import load_causal_lm, load_conditioned_model, load_tokenizer, resolve_local
from ..models.conditioned import (
    ConditionedDrafterConfig,
    ConditionedDrafterModel,
    model_fingerprint,
    verifier_features,
)
from .callbacks import AcceptanceCallback
from .conditioned_collator import ConditionedCollator
from .conditioned_config import ConditionedDataArguments, ConditionedModelArguments, ConditionedTrainingConfig
from .conditioned_trainer import ConditionedDrafterTrainer, verifier_dtype
from .config import AcceptanceArguments, DataArguments, DrafterTrainingConfig, ModelArguments
from .features import FeatureArguments, FeatureSpec, FeatureStore, precompute_features
from .inputs import check_examples, load_examples, load_prompts
from .modeling import (
    apply_lora,
    check_drafter_tokenizer,
    check_precision,
    freeze_embeddings,
    load_drafter_model,
    load_saved_lora,
    load_verifier,
    save_merged,
)
from .sharding import weights_sharded, whole_weights
from .trainer import DrafterTrainer

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.json"  # the Trainer's log history (losses, held-out tau), written next to a saved drafter


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """``resume_from_checkpoint``, else the last ``checkpoint-N`` in ``output_dir`` (logged), else None."""
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is not None:
            logger.info(f"Checkpoint detected, resuming training at {checkpoint}")
    return checkpoint


def slot_mask_id(tokenizer, mask_token: str | None, verifier_name: str) -> int:
    """The id that fills a conditioned drafter's slots: ``mask_token``'s, else the tokenizer's mask token's."""
    if mask_token is not None:
        vocab = tokenizer.get_vocab()
        if mask_token not in vocab:
            raise ValueError(f"mask_token {mask_token!r} is not in the vocabulary of {verifier_name}'s tokenizer")
        return int(vocab[mask_token])
    if tokenizer.mask_token_id is None:
        raise ValueError(
            f"the tokenizer of {verifier_name} has no mask token; the drafter's slots need one: set mask_token to a "
            "token of its vocabulary a chat never uses, or add one within the embedding rows"
        )
    return int(tokenizer.mask_token_id)


def run_drafter_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: DrafterTrainingConfig
) -> DrafterTrainer:
    """Align a diffusion drafter: data checked first, then the drafter, verifier and tokenizer, LoRA if asked,
    training with the acceptance callback, and the saved drafter (plus merged weights with LoRA)."""
    ###############
    # Setup
    ###############
    check_precision(model_args, training_args)
    set_seed(training_args.seed)
    checkpoint = resume_checkpoint(training_args)

    ###############
    # Data (checked before any model loads)
    ###############
    dataset = load_examples(data_args.dataset_path)
    has_teacher = check_examples(dataset, f"dataset_path {data_args.dataset_path}")
    prompts = held_out_prompts(data_args, training_args)
    evaluate_acceptance = prompts is not None

    ###############
    # Drafter, verifier, tokenizer
    ###############
    model, mask_token_id, shifted = load_drafter_model(model_args, training_args)
    tokenizer = load_tokenizer(model_args.drafter_name_or_path)
    check_drafter_tokenizer(tokenizer, mask_token_id)
    online_teacher = training_args.needs_teacher and not has_teacher
    verifier = load_verifier(model_args, model, tokenizer) if online_teacher or evaluate_acceptance else None
    logger.info(f"Drafter: mask_token_id={mask_token_id} shifted={shifted}; online teacher: {online_teacher}")

    if model_args.use_lora:
        model = apply_lora(model, model_args, training_args.activation_checkpointing)
    elif model_args.freeze_embeddings:
        model = freeze_embeddings(model)

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
    # Save (model folders carry diffuspec_config.json: they load with DiffusionDrafter.from_pretrained)
    ###############
    # The recommended decoding is the acceptance evaluation's (run or not): from_pretrained decodes with it.
    trainer.save_model(training_args.output_dir)
    if trainer.args.should_save:
        record_recommended_decode(training_args.output_dir, training_args.eval_decode_config())
        write_json(Path(training_args.output_dir) / LOG_FILE, trainer.state.log_history, indent=1)
    logger.info(f"Drafter saved to {training_args.output_dir}")
    if model_args.use_lora and model_args.merge_and_save and trainer.args.should_save:
        merged_dir = os.path.join(training_args.output_dir, "merged")
        adapted = trainer.accelerator.unwrap_model(trainer.model)
        if weights_sharded(trainer):  # the weights in memory are shards: merge the saved adapters into the base
            adapted = load_saved_lora(model_args, training_args, training_args.output_dir)
        save_merged(adapted, merged_dir, mask_token_id, shifted, tokenizer)
        record_recommended_decode(merged_dir, training_args.eval_decode_config())
        logger.info(f"Merged LoRA drafter saved to {merged_dir}")
    trainer.accelerator.wait_for_everyone()
    return trainer


def held_out_prompts(data_args: DataArguments, training_args: AcceptanceArguments) -> list[list[int]] | None:
    """The held-out prompts ``AcceptanceCallback`` decodes on the main process (None elsewhere, or when off);
    checked before any model loads."""
    if training_args.eval_acceptance_steps > 0 and data_args.eval_prompts_path is None:
        raise ValueError("eval_acceptance_steps > 0 needs eval_prompts_path (held-out prompts with prompt_ids)")
    if training_args.eval_acceptance_steps == 0 or training_args.process_index != 0:
        return None
    return load_prompts(data_args.eval_prompts_path, training_args.eval_acceptance_prompts)


def run_conditioned_training(
    model_args: ConditionedModelArguments,
    data_args: ConditionedDataArguments,
    training_args: ConditionedTrainingConfig,
) -> ConditionedDrafterTrainer:
    """Check the data and tokenizer, build (or load) the drafter, wrap it in LoRA adapters if asked, train (resuming
    from the last checkpoint in ``output_dir``), and save the drafter (with LoRA: merged into its base weights), the
    verifier's tokenizer, ``diffuspec_config.json`` and ``train_log.json`` in ``output_dir``; the folder loads with
    ``ConditionedDrafter.from_pretrained`` and pushes with ``diffuspec push`` either way."""
    set_seed(training_args.seed)
    dataset = load_examples(data_args.dataset_path)
    check_examples(dataset, f"dataset_path {data_args.dataset_path}")
    prompts = held_out_prompts(data_args, training_args)
    verifier_path = resolve_local(model_args.verifier_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(verifier_path)
    with whole_weights():  # frozen beside the trained drafter, never partitioned by ZeRO-3
        verifier = load_causal_lm(verifier_path, dtype=verifier_dtype(training_args))
    if model_args.drafter_name_or_path is not None:
        # a diffuspec drafter or a DFlash checkpoint, adapted to this verifier: shapes must fit, the name may differ;
        # its slots keep the mask id it was trained with (a fine-tuned verifier's tokenizer may name no mask token)
        model = load_conditioned_model(model_args.drafter_name_or_path)
        if model_args.mask_token is not None:
            wanted = slot_mask_id(tokenizer, model_args.mask_token, model_args.verifier_name_or_path)
            if wanted != model.config.mask_token_id:
                raise ValueError(
                    f"mask_token {model_args.mask_token!r} is id {wanted}, but {model_args.drafter_name_or_path} "
                    f"was trained with mask id {model.config.mask_token_id}; leave mask_token unset to keep it"
                )
        model.attach_verifier(verifier, check_name=False)
        model.config.verifier_name = model_args.verifier_name_or_path
    else:
        mask_token_id = slot_mask_id(tokenizer, model_args.mask_token, model_args.verifier_name_or_path)
        config = ConditionedDrafterConfig.for_verifier(
            verifier.config,
            mask_token_id=mask_token_id,
            num_hidden_layers=model_args.num_hidden_layers,
            block_size=model_args.block_size,
            feature_layers=model_args.feature_layers,
            verifier_name=model_args.verifier_name_or_path,
            stem_size=model_args.stem_size,
        )
        torch.manual_seed(training_args.seed)
        model = ConditionedDrafterModel(config, verifier=verifier)
    # the verifier is recognised by its weights wherever it is loaded from later (its name stays for messages)
    model.config.verifier_fingerprint = model_fingerprint(verifier)
    if model_args.use_lora:
        # No input-gradient hook: the drafter embeds through the verifier's matrix without gradient, and
        # transformers checkpoints activations non-reentrantly, so adapters get their gradients either way.
        model = apply_lora(model, model_args, activation_checkpointing=False, task_type=None)
    checkpoint = resume_checkpoint(training_args)
    store = None
    if data_args.features_path is not None:
        if training_args.kl_weight > 0:
            raise ValueError(
                "kl_weight > 0 needs the verifier's distributions, which offline features do not carry: set "
                "kl_weight 0 or train online (features_path null)"
            )
        store = FeatureStore(data_args.features_path)
        cuts = (data_args.max_prompt_length, data_args.max_completion_length)
        store.check(model_args.verifier_name_or_path, model.config.feature_layers, len(dataset), cuts)
        dataset = dataset.add_column("row", list(range(len(dataset))))
    if model_args.drafter_name_or_path is None and model.config.stem_size:
        model.stem.set_feature_scale(stem_scale_rows(verifier, dataset, store, model.config.feature_layers))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    callbacks = []
    if prompts is not None:  # tau with ADL within the block, and the draft vocabulary the loss scores, if any
        block = model.config.block_size
        callbacks.append(
            AcceptanceCallback(
                verifier, prompts, every_n_steps=training_args.eval_acceptance_steps,
                max_new_tokens=training_args.eval_max_new_tokens, decode_config=DecodeConfig.for_block(block),
            )
        )  # fmt: skip
    trainer = ConditionedDrafterTrainer(
        model,
        training_args,
        verifier,
        callbacks=callbacks,
        train_dataset=dataset,
        data_collator=ConditionedCollator(
            pad_token_id=int(pad),
            max_prompt_length=data_args.max_prompt_length,
            max_completion_length=data_args.max_completion_length,
            features=store,
        ),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=checkpoint)  # LoRA checkpoints hold the adapters: a rerun resumes them
    if model_args.use_lora:
        # Merged into the base weights, the drafter is saved as full training saves it (it loads and exports alike).
        trainer.model = model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    trainer.save_model(training_args.output_dir)  # weights, config and the tokenizer (processing_class)
    if trainer.args.should_save:
        out = Path(training_args.output_dir)
        objectives = {"block_ce": 1.0, "kl": training_args.kl_weight, "streak": training_args.streak_weight}
        write_diffuspec_config(
            out,
            mask_token_id=model.config.mask_token_id,
            shifted=False,  # slot i is read from its own row: it predicts the token at anchor + 1 + i
            verifier=model_args.verifier_name_or_path,
            verifier_vocab_size=int(model.config.vocab_size),
            verifier_fingerprint=model.config.verifier_fingerprint,
            # no evaluation runs here: ADL within the block, the SmolLM2 preset's 4..12 by 4 for 12 slots
            recommended_decode=DecodeConfig.for_block(model.config.block_size),
            objectives={name: weight for name, weight in objectives.items() if weight > 0},
        )
        write_json(out / LOG_FILE, trainer.state.log_history, indent=1)
    trainer.accelerator.wait_for_everyone()
    return trainer


STEM_SCALE_ROWS = 64  # rows whose features set a new stem's channel scales: enough for a stable RMS, cheap


@torch.no_grad()
def stem_scale_rows(verifier, dataset, store, feature_layers: list[int]) -> torch.Tensor:
    """Features ``[tokens, F]`` of the first ``STEM_SCALE_ROWS`` training rows (from the feature store, else one
    verifier pass each), whose channel RMS a new drafter's anchor stem divides by."""
    rows = range(min(STEM_SCALE_ROWS, len(dataset)))
    if store is not None:
        return torch.cat([store[i].float() for i in rows])
    parts = []
    for i in rows:
        ids = torch.tensor([dataset[i]["prompt_ids"] + dataset[i]["completion_ids"]], device=verifier.device)
        parts.append(verifier_features(verifier, ids, feature_layers)[0].float().cpu())
    return torch.cat(parts)


def train_conditioned_drafter(
    verifier_path: str | Path,
    dataset_path: str | Path,
    output_dir: str | Path,
    *,
    num_layers: int = 1,
    block_size: int = 8,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    anchors_per_sequence: int = 8,
    decay_gamma: float | None = None,
    kl_weight: float = 0.0,
    streak_weight: float = 0.0,
    seed: int = 0,
    feature_layers: list[int] | None = None,
    stem_size: int = 0,
    mask_token: str | None = None,
    features_path: str | Path | None = None,
    drafter: str | Path | None = None,
    draft_vocab: str | Path | None = None,
    eval_prompts_path: str | Path | None = None,
    eval_acceptance_steps: int = 0,
    eval_max_new_tokens: int = 64,
    save_steps: int = 0,
) -> Path:
    """:func:`run_conditioned_training` with a fixed small recipe (cosine schedule with 5% warmup, a log every ~10%
    of the steps): the quickstart's and the tests' entry point. ``drafter`` (a diffuspec drafter or a DFlash
    checkpoint) is adapted instead of a new one trained; its shape wins over the shape arguments. ``save_steps`` > 0
    keeps a checkpoint every that many steps in ``output_dir`` (the last two), from which a rerun resumes;
    ``eval_acceptance_steps`` > 0 logs held-out tau on ``eval_prompts_path`` that often."""
    output_dir = Path(output_dir)
    training_args = ConditionedTrainingConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.05 * max_steps),
        logging_steps=max(1, max_steps // 10),
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        anchors_per_sequence=anchors_per_sequence,
        decay_gamma=decay_gamma,
        kl_weight=kl_weight,
        streak_weight=streak_weight,
        draft_vocab=None if draft_vocab is None else str(draft_vocab),
        eval_acceptance_steps=eval_acceptance_steps,
        eval_acceptance_prompts=64,
        eval_max_new_tokens=eval_max_new_tokens,
    )
    model_args = ConditionedModelArguments(
        verifier_name_or_path=str(verifier_path),
        drafter_name_or_path=None if drafter is None else str(drafter),
        num_hidden_layers=num_layers,
        block_size=block_size,
        feature_layers=feature_layers,
        mask_token=mask_token,
        stem_size=stem_size,
    )
    data_args = ConditionedDataArguments(
        dataset_path=[str(dataset_path)],
        eval_prompts_path=None if eval_prompts_path is None else str(eval_prompts_path),
        max_prompt_length=None,
        max_completion_length=None,
        features_path=None if features_path is None else str(features_path),
    )
    run_conditioned_training(model_args, data_args, training_args)
    return output_dir


def run_feature_precompute(args: FeatureArguments) -> FeatureSpec:
    """Check the data, load the verifier on this process's device and write its missing feature shards."""
    from accelerate import PartialState

    dataset = load_examples(args.dataset_path)  # checked before the verifier loads
    check_examples(dataset, f"dataset_path {args.dataset_path}")
    state = PartialState(cpu=not torch.accelerator.is_available())  # CPU processes: gloo, one shard set each
    verifier = load_causal_lm(args.verifier, dtype=args.model_dtype, device_map={"": state.device})
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
