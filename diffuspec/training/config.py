"""Configuration of drafter training: the argument dataclasses and a YAML + CLI parser.

``DrafterTrainingConfig`` extends ``transformers.TrainingArguments`` with the objective mix, the draft-time block
shape and the acceptance evaluation; ``ModelArguments`` names the drafter, the verifier and the LoRA setup (its
``LoraArguments`` base, shared with the conditioned trainer); ``DataArguments`` the data. ``parse_config(argv)``:
``--config file.yaml`` sets defaults, ``--key value`` flags override them, and keys the dataclasses do not know are
errors (``ValueError`` naming them).

Every field is checked in ``__post_init__`` so a bad value fails before any model loads, with the field and its
legal range in the message. (No ``from __future__ import annotations`` here: HfArgumentParser reads the types.)
"""

import argparse
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import transformers
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..decoding.config import ADLConfig, CPSConfig, DecodeConfig
from ..dtypes import DTYPE_NAMES, check_dtype_name

KL_KINDS = ("forward", "reverse", "jsd", "tv")
STREAK_KINDS = ("likelihood", "acceptance", "greedy")
ALL_LINEAR = "all-linear"
_REGEX_CHARS = re.compile(r"[.*+?^$()\[\]{}|\\]")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class AcceptanceArguments:
    """How often and on how many held-out prompts training measures tau with the real decoding loop
    (``AcceptanceCallback``); shared by both drafter trainers' configs."""

    eval_acceptance_steps: int = field(
        default=0,
        metadata={"help": "Every N steps run the real speculative loop on held-out prompts and log tau (0: off)."},
    )
    eval_acceptance_prompts: int = field(default=8, metadata={"help": "Held-out prompts per acceptance evaluation."})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated per held-out prompt."})

    def check_acceptance_arguments(self) -> None:
        _check(self.eval_acceptance_steps >= 0, f"eval_acceptance_steps must be >= 0, got {self.eval_acceptance_steps}")
        _check(
            self.eval_acceptance_prompts >= 1,
            f"eval_acceptance_prompts must be >= 1, got {self.eval_acceptance_prompts}",
        )
        _check(self.eval_max_new_tokens >= 1, f"eval_max_new_tokens must be >= 1, got {self.eval_max_new_tokens}")


@dataclass
class DrafterTrainingConfig(AcceptanceArguments, TrainingArguments):
    """Trainer arguments plus the drafter objectives (the losses are in ``diffuspec.training.losses``)."""

    # -- objective mix ----------------------------------------------------------------------------------------
    ce_weight: float = field(
        default=1.0,
        metadata={"help": "Masked-diffusion cross-entropy (LLaDA: t ~ U(eps, 1), prompt kept, weighted 1/t)."},
    )
    block_ce_weight: float = field(
        default=0.0, metadata={"help": "Cross-entropy on draft-time blocks (prefix + k masks, as at inference)."}
    )
    kl_weight: float = field(
        default=0.0, metadata={"help": "Divergence to the verifier's distribution on the block slots (kl_kind)."}
    )
    kl_kind: Literal["forward", "reverse", "jsd", "tv"] = field(
        default="forward",
        metadata={"help": "forward KL(p||q), reverse KL(q||p), generalised jsd (jsd_beta) or total variation."},
    )
    jsd_beta: float = field(
        default=0.5, metadata={"help": "JSD interpolation in [0, 1]: 0 is forward KL, 1 is reverse KL (as TRL)."}
    )
    streak_weight: float = field(
        default=0.0, metadata={"help": "Expected accepted streak sum_j prod_{i<=j} a_i on the block slots."}
    )
    streak_kind: Literal["likelihood", "acceptance", "greedy"] = field(
        default="likelihood",
        metadata={
            "help": "Per-slot success a_i of the streak: q_i(y_i), sampling acceptance 1 - TV(p_i, q_i) (needs "
            "the teacher), or greedy: sigmoid(margin of y_i over the runner-up / greedy_temperature)."
        },
    )
    greedy_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of the greedy streak's margin sigmoid (> 0; smaller: sharper)."}
    )
    decay_gamma: float | None = field(
        default=None,
        metadata={"help": "Block slot i weighs exp(-(i-1)/gamma) in block CE and KL (DFlash); null: uniform."},
    )

    # -- draft-time blocks and masking ------------------------------------------------------------------------
    block_size: int = field(default=8, metadata={"help": "Masked slots per draft-time block (the draft length k)."})
    block_size_min: int | None = field(
        default=None,
        metadata={"help": "Draw each block's k uniformly in [block_size_min, block_size] (ADL varies k); null: fixed."},
    )
    anchors_per_sequence: int = field(
        default=4, metadata={"help": "Draft-time blocks (anchor positions in the completion) per example."}
    )
    context_window: int | None = field(
        default=None,
        metadata={
            "help": "Block rows keep only the last N prefix tokens, as DiffusionDrafter(context_window=N) reads at "
            "inference (the acceptance evaluation uses it too); null: the whole prefix."
        },
    )
    mask_eps: float = field(
        default=1e-3, metadata={"help": "Smallest mask ratio: t = eps + (1 - eps) u, u ~ U(0, 1) (LLaDA's 1e-3)."}
    )

    # -- drafter conventions ----------------------------------------------------------------------------------
    shifted: bool | None = field(
        default=None,
        metadata={"help": "Slot s reads logits row s-1 (Dream) or s (LLaDA); null: from the checkpoint."},
    )
    mask_token_id: int | None = field(
        default=None, metadata={"help": "The drafter's mask token id; null: from the checkpoint."}
    )
    teacher_topk: int = field(
        default=0,
        metadata={"help": "Online teacher only: keep the verifier's top-k per slot (0: full vocabulary, exact)."},
    )

    # -- acceptance evaluation during training (AcceptanceArguments: how often, how many prompts) ---------------
    eval_cps: bool = field(default=True, metadata={"help": "Acceptance evaluation drafts through CPS (else argmax)."})
    eval_adl: bool = field(default=True, metadata={"help": "Adaptive draft length in [eval_k_min, eval_k_max]."})
    eval_k_min: int = field(default=ADLConfig.k_min, metadata={"help": "Smallest ADL draft length."})
    eval_k_max: int = field(
        default=ADLConfig.k_max, metadata={"help": "Largest ADL draft length; the fixed length when eval_adl is off."}
    )

    # -- defaults changed from TrainingArguments --------------------------------------------------------------
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads prompt_ids / completion_ids."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        weights = {
            "ce_weight": self.ce_weight,
            "block_ce_weight": self.block_ce_weight,
            "kl_weight": self.kl_weight,
            "streak_weight": self.streak_weight,
        }
        for name, value in weights.items():
            _check(value >= 0, f"{name} must be >= 0, got {value}")
        _check(any(w > 0 for w in weights.values()), f"at least one objective weight must be > 0, got {weights}")
        _check(self.kl_kind in KL_KINDS, f"kl_kind must be one of {KL_KINDS}, got {self.kl_kind!r}")
        _check(self.streak_kind in STREAK_KINDS, f"streak_kind must be one of {STREAK_KINDS}, got {self.streak_kind!r}")
        _check(0.0 <= self.jsd_beta <= 1.0, f"jsd_beta must be in [0, 1], got {self.jsd_beta}")
        _check(self.greedy_temperature > 0, f"greedy_temperature must be > 0, got {self.greedy_temperature}")
        _check(
            self.decay_gamma is None or self.decay_gamma > 0, f"decay_gamma must be > 0 or null, got {self.decay_gamma}"
        )
        _check(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        _check(
            self.block_size_min is None or 1 <= self.block_size_min <= self.block_size,
            f"block_size_min must be in [1, block_size={self.block_size}] or null, got {self.block_size_min}",
        )
        _check(self.anchors_per_sequence >= 1, f"anchors_per_sequence must be >= 1, got {self.anchors_per_sequence}")
        _check(
            self.context_window is None or self.context_window >= 1,
            f"context_window must be >= 1 or null, got {self.context_window}",
        )
        _check(0.0 < self.mask_eps < 1.0, f"mask_eps must be in (0, 1), got {self.mask_eps}")
        _check(
            self.mask_token_id is None or self.mask_token_id >= 0,
            f"mask_token_id must be >= 0 or null, got {self.mask_token_id}",
        )
        _check(self.teacher_topk >= 0, f"teacher_topk must be >= 0 (0: full vocabulary), got {self.teacher_topk}")
        self.check_acceptance_arguments()
        _check(
            1 <= self.eval_k_min <= self.eval_k_max,
            f"eval_k_min ({self.eval_k_min}) must be in [1, eval_k_max={self.eval_k_max}]",
        )
        _check(
            not self.remove_unused_columns,
            "remove_unused_columns must be False: the Trainer would drop prompt_ids / completion_ids before the "
            "collator sees them",
        )
        _check(
            not self.dataloader_persistent_workers,
            "dataloader_persistent_workers must be False: workers must see the collator's epoch (its masks are "
            "seeded by seed, epoch and example)",
        )

    @property
    def uses_blocks(self) -> bool:
        """Some objective reads draft-time blocks."""
        return self.block_ce_weight > 0 or self.kl_weight > 0 or self.streak_weight > 0

    @property
    def needs_teacher(self) -> bool:
        """Some objective reads the verifier's distributions (KL, or the acceptance streak)."""
        return self.kl_weight > 0 or (self.streak_weight > 0 and self.streak_kind == "acceptance")

    def eval_decode_config(self) -> DecodeConfig:
        """The decoding setup of the acceptance evaluation (CPS defaults; ADL in [eval_k_min, eval_k_max])."""
        adl = ADLConfig(k_min=self.eval_k_min, k_max=self.eval_k_max) if self.eval_adl else None
        return DecodeConfig(cps=CPSConfig() if self.eval_cps else None, adl=adl, draft_length=self.eval_k_max)


@dataclass(kw_only=True)
class LoraArguments:
    """The LoRA setup, shared by both trainers' model arguments (``ModelArguments``, ``ConditionedModelArguments``)
    so the fields, their defaults and their checks have one owner. Keyword-only: the subclasses' required fields
    may follow these defaults."""

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_target_modules: list[str] | str = field(
        default_factory=lambda: [ALL_LINEAR],
        metadata={
            "help": "Module name suffixes (a list), one regex matched against full module names (a string with "
            "regex characters), or all-linear."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full next to LoRA, e.g. a diffusion drafter's embed_tokens when its mask "
            "token is new, or a conditioned drafter's hidden_norm."
        },
    )

    def __post_init__(self) -> None:
        _check(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
        _check(self.lora_alpha >= 1, f"lora_alpha must be >= 1, got {self.lora_alpha}")
        _check(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        self.lora_target_modules = normalize_target_modules(self.lora_target_modules)


@dataclass
class ModelArguments(LoraArguments):
    """The drafter to train, the verifier it serves, and the LoRA setup (``LoraArguments``)."""

    drafter_name_or_path: str = field(
        metadata={"help": "Diffusion drafter folder (Dream, LLaDA or a diffuspec folder; see diffuspec.loading)."}
    )
    verifier_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Verifier folder: needed for acceptance evaluation and when the data has no teacher top-k."},
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Weight dtype at load. float32 with --bf16 is mixed precision; bfloat16 needs a GPU.",
            "choices": DTYPE_NAMES,
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel, e.g. sdpa or flash_attention_2; null: transformers' choice."}
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={
            "help": "Keep the input embedding and the LM head as loaded: a drafter cut from its verifier keeps the "
            "verifier's own (and the optimizer skips the largest matrices)."
        },
    )
    merge_and_save: bool = field(
        default=True, metadata={"help": "With LoRA, also save merged weights (merge_and_unload) to output_dir/merged."}
    )

    def __post_init__(self) -> None:
        check_dtype_name(self.dtype)
        super().__post_init__()
        _check(
            not (self.freeze_embeddings and self.use_lora),
            "freeze_embeddings applies to full training; with use_lora only the adapters train already",
        )


def normalize_target_modules(value: list[str] | str) -> list[str] | str:
    """A one-entry list holding all-linear or a regex becomes that string (peft matches a string as a regex)."""
    if isinstance(value, str):
        value = [value]
    value = [str(v) for v in value]
    _check(len(value) >= 1 and all(value), f"lora_target_modules must name at least one module, got {value}")
    if len(value) == 1 and (value[0] == ALL_LINEAR or _REGEX_CHARS.search(value[0])):
        return value[0]
    _check(
        ALL_LINEAR not in value and not any(_REGEX_CHARS.search(v) for v in value),
        f"lora_target_modules: all-linear or a regex must stand alone, got {value}",
    )
    return value


@dataclass
class DataArguments:
    """Prompt / completion data (``diffuspec.datagen`` writes it) and held-out prompts."""

    dataset_path: list[str] = field(
        metadata={
            "help": "JSONL files or datasets folders (save_to_disk) with prompt_ids and completion_ids, optionally "
            "teacher_topk_ids / teacher_topk_logprobs [completion_len, K]."
        }
    )
    eval_prompts_path: str | None = field(
        default=None, metadata={"help": "Held-out prompts (JSONL or datasets folder with prompt_ids) for tau."}
    )
    max_prompt_length: int | None = field(default=512, metadata={"help": "Keep the last N prompt tokens (null: all)."})
    max_completion_length: int | None = field(
        default=512, metadata={"help": "Keep the first N completion tokens (null: all)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.dataset_path, str):
            self.dataset_path = [self.dataset_path]
        _check(len(self.dataset_path) >= 1, "dataset_path must name at least one file or folder")
        for name in ("max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name} must be >= 1 or null, got {value}")


CONFIG_CLASSES = (ModelArguments, DataArguments, DrafterTrainingConfig)


def _read_yaml(path: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    _check(isinstance(data, dict), f"{path}: a config file must be a mapping of field names to values")
    return data


def parse_config(argv: list[str] | None = None, classes: tuple[type, ...] = CONFIG_CLASSES) -> tuple[Any, ...]:
    """``--config file.yaml`` sets defaults, CLI ``--key value`` flags override; unknown keys raise ValueError.
    Returns one instance of each of ``classes`` (by default: model, data and training arguments). Ours, not TRL's
    ``TrlParser``: that keeps the same rule (YAML defaults, flags win, unknown keys refused) but would add ``trl`` and
    its dependencies for it, and cannot read a quickstart file's several presets."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)

    parser = HfArgumentParser(classes)
    if known.config is not None:
        values = _read_yaml(known.config)
        destinations = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - destinations)
        _check(
            not unknown,
            f"{known.config}: unknown keys {unknown} (not fields of {[c.__name__ for c in classes]})",
        )
        for action in parser._actions:
            if action.dest in values:
                action.default = values[action.dest]
                action.required = False
    return tuple(parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False))


def configure_logging(logger: logging.Logger, training_args: TrainingArguments, *arg_groups: Any) -> None:
    """The training scripts' logging: timestamps on stdout, INFO on the main process only (transformers' own
    verbosity follows ``training_args``), then the parsed argument groups, so a log records its run."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    for group in arg_groups:
        logger.info(f"{type(group).__name__} {group}")
