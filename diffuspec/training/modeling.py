"""Model setup for drafter training: load the drafter and verifier with their checks, LoRA, merged export."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from ..drafter_config import write_diffuspec_config
from ..files import replace_folder_atomically
from ..loading import load_causal_lm, load_diffusion_model, load_tokenizer
from ..models.tokenizers import check_tokenizers_compatible
from .config import ALL_LINEAR, DrafterTrainingConfig, LoraArguments, ModelArguments
from .sharding import whole_weights

logger = logging.getLogger(__name__)


def check_precision(model_args: ModelArguments, training_args: DrafterTrainingConfig) -> None:
    """bf16 / fp16 (weights or mixed precision) only on a GPU: CPU half precision is slow and lossy."""
    half = model_args.dtype in ("bfloat16", "float16") or training_args.bf16 or training_args.fp16
    if half and not torch.cuda.is_available():
        raise ValueError(
            "bf16/fp16 needs a GPU and none is visible; on CPU use dtype: float32 with bf16: false and fp16: false"
        )


def load_drafter_model(
    model_args: ModelArguments, training_args: DrafterTrainingConfig
) -> tuple[PreTrainedModel, int, bool]:
    """The drafter's model to train with its mask id and shift convention, from the checkpoint; config values must
    agree. (``diffuspec.drafters.load_drafter`` builds a ``Drafter`` to decode with.)"""
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    model, mask_token_id, shifted = load_diffusion_model(
        model_args.drafter_name_or_path, dtype=model_args.dtype, **kwargs
    )
    for name, stored in (("mask_token_id", mask_token_id), ("shifted", shifted)):
        wanted = getattr(training_args, name)
        if wanted is not None and wanted != stored:
            raise ValueError(
                f"{name}: the config says {wanted} but the checkpoint {model_args.drafter_name_or_path} says "
                f"{stored}; a wrong value silently ruins acceptance, so remove it from the config"
            )
    vocab = model.config.get_text_config().vocab_size
    if not 0 <= mask_token_id < vocab:
        raise ValueError(f"the drafter's mask token id {mask_token_id} is outside its vocabulary [0, {vocab})")
    return model, mask_token_id, shifted


def check_drafter_tokenizer(tokenizer, mask_token_id: int) -> None:
    """A tokenizer that names a mask token must name the checkpoint's one."""
    if tokenizer is None or tokenizer.mask_token_id is None:
        return
    if tokenizer.mask_token_id != mask_token_id:
        raise ValueError(
            f"the drafter tokenizer's mask token {tokenizer.mask_token!r} has id {tokenizer.mask_token_id}, but the "
            f"checkpoint's mask_token_id is {mask_token_id}"
        )


def load_verifier(model_args: ModelArguments, drafter: PreTrainedModel, drafter_tokenizer=None) -> PreTrainedModel:
    """The frozen verifier; its vocabulary (and tokenizer, when both have one) must match the drafter's."""
    if model_args.verifier_name_or_path is None:
        raise ValueError(
            "verifier_name_or_path is needed: acceptance evaluation is on or the data has no teacher top-k"
        )
    with whole_weights():  # frozen beside the trained drafter, never partitioned by ZeRO-3
        verifier = load_causal_lm(model_args.verifier_name_or_path, dtype=model_args.dtype)
    verifier_vocab = verifier.config.get_text_config().vocab_size
    drafter_vocab = drafter.config.get_text_config().vocab_size
    if verifier_vocab != drafter_vocab:
        raise ValueError(
            f"drafter vocabulary ({drafter_vocab}) differs from the verifier's ({verifier_vocab}); they must share "
            "one tokenizer and embedding size"
        )
    verifier_tokenizer = load_tokenizer(model_args.verifier_name_or_path)
    if drafter_tokenizer is not None and verifier_tokenizer is not None:
        check_tokenizers_compatible(drafter_tokenizer, verifier_tokenizer)
    return verifier.eval().requires_grad_(False)


def freeze_embeddings(model: PreTrainedModel) -> PreTrainedModel:
    """Stop gradients to the input embedding and the LM head (one matrix when they are tied)."""
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            module.weight.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "embeddings frozen: %d of %d parameters trainable", trainable, sum(p.numel() for p in model.parameters())
    )
    return model


def check_lora_targets(model: nn.Module, lora_args: LoraArguments) -> None:
    """Every module ``lora_args`` names must exist in ``model`` (ValueError naming the others). peft refuses only
    targets that match nothing at all, so one misspelt name beside good ones would silently train fewer layers."""
    names = [name for name, _ in model.named_modules() if name]

    def absent(entries: list[str]) -> list[str]:
        return [e for e in entries if not any(name == e or name.endswith("." + e) for name in names)]

    kind = type(model).__name__
    targets = lora_args.lora_target_modules
    if targets == ALL_LINEAR:
        problem = None
    elif isinstance(targets, str):  # one regex, which peft matches against full module names
        problem = None if any(re.fullmatch(targets, name) for name in names) else f"the regex {targets} matches"
    else:
        missing = absent(targets)
        problem = f"{', '.join(missing)} match" if missing else None
    if problem is not None:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"lora_target_modules: {problem} no module of the {kind} (its linear layers: {', '.join(linear)})"
        )
    unsaved = absent(lora_args.lora_modules_to_save or [])
    if unsaved:
        raise ValueError(f"lora_modules_to_save: {', '.join(unsaved)} match no module of the {kind}")


def apply_lora(
    model: PreTrainedModel,
    lora_args: LoraArguments,
    activation_checkpointing: bool,
    task_type: str | None = "CAUSAL_LM",
) -> PreTrainedModel:
    """Wrap ``model`` with peft LoRA adapters (target modules: suffix list, one regex, or all-linear), every named
    module checked to exist first. ``task_type``: peft's (a diffusion drafter is a causal-LM architecture); None
    for a model that is no peft task, such as the conditioned drafter, which gets a plain ``PeftModel``."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, lora_args)
    if activation_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    config = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=lora_args.lora_target_modules,
        modules_to_save=lora_args.lora_modules_to_save,
        task_type=task_type,
    )
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: %d of %d parameters trainable (%.3f%%)", trainable, total, 100 * trainable / total)
    return model


def load_saved_lora(
    model_args: ModelArguments, training_args: DrafterTrainingConfig, adapter_dir: str | os.PathLike
) -> nn.Module:
    """The drafter with the LoRA adapters saved in ``adapter_dir``: what to merge after sharded (FSDP) training,
    whose in-memory weights are each process's shards (the base weights were frozen, so they are the loaded ones)."""
    from peft import PeftModel

    with whole_weights():
        base, _, _ = load_drafter_model(model_args, training_args)
    return PeftModel.from_pretrained(base, adapter_dir)


def save_merged(peft_model, out_dir: str | os.PathLike, mask_token_id: int, shifted: bool, tokenizer=None) -> Path:
    """Merge the adapters into the base weights (``merge_and_unload``) and save a loadable drafter, atomically."""
    merged = peft_model.merge_and_unload()

    def fill(folder: Path) -> None:
        merged.save_pretrained(folder)
        write_diffuspec_config(folder, mask_token_id=mask_token_id, shifted=shifted)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return replace_folder_atomically(fill, Path(out_dir), overwrite=True)
