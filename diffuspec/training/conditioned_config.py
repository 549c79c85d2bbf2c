"""Configuration of conditioned-drafter training: the model, data and training argument classes and their parser.

``ConditionedTrainingConfig`` extends ``transformers.TrainingArguments`` with the conditioned objective; the
parser is ``parse_config``'s (YAML defaults, command-line overrides, unknown keys refused). (No ``from __future__
import annotations`` here: HfArgumentParser reads the types.)
"""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from ..models.conditioned import MAX_DRAFT_LAYERS
from .config import AcceptanceArguments, DataArguments, LoraArguments, parse_config
from .losses import position_decay_weights


@dataclass
class ConditionedModelArguments(LoraArguments):
    """The verifier to condition on and the drafter's shape (or a saved drafter to continue from), and the LoRA
    setup (``LoraArguments``) for adapting a saved drafter with its weights frozen."""

    verifier_name_or_path: str = field(metadata={"help": "Verifier folder or Hub id (also gives the tokenizer)."})
    drafter_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A conditioned drafter to continue from or adapt to this verifier: a diffuspec drafter or a DFlash "
            "checkpoint (null: a new one)."
        },
    )
    num_hidden_layers: int = field(default=1, metadata={"help": f"Drafter layers (1-{MAX_DRAFT_LAYERS})."})
    block_size: int = field(default=8, metadata={"help": "Mask slots per block: the largest draft length k."})
    feature_layers: list[int] | None = field(
        default=None, metadata={"help": "Verifier hidden-state indices to fuse (null: three spread low/mid/high)."}
    )
    stem_size: int = field(
        default=0,
        metadata={
            "help": "Width of the anchor stem (0: none, DFlash's architecture, exportable): each mask slot starts "
            "from the features of the row before the anchor and the anchor token (ConditionedDrafterConfig)."
        },
    )
    mask_token: str | None = field(
        default=None,
        metadata={
            "help": "A token of the verifier's vocabulary that fills the block's draft slots (null: the tokenizer's "
            "mask token); for verifiers whose tokenizer has none, pick one a chat never uses."
        },
    )

    def __post_init__(self) -> None:
        if not 1 <= self.num_hidden_layers <= MAX_DRAFT_LAYERS:
            raise ValueError(f"num_hidden_layers must be in 1..{MAX_DRAFT_LAYERS}, got {self.num_hidden_layers}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.stem_size < 0:
            raise ValueError(f"stem_size must be >= 0 (0: no stem), got {self.stem_size}")
        super().__post_init__()
        if self.use_lora and self.drafter_name_or_path is None:
            raise ValueError(
                "use_lora needs drafter_name_or_path: LoRA adapts a trained drafter (a diffuspec one or a DFlash "
                "checkpoint) and would freeze a new drafter's random weights; train a new one in full"
            )


@dataclass
class ConditionedTrainingConfig(AcceptanceArguments, TrainingArguments):
    """``TrainingArguments`` plus the conditioned objective: block CE with position decay, forward KL to the
    verifier and the expected accepted streak, each weighted; optionally over a draft vocabulary only, and with
    held-out tau measured as training goes (``AcceptanceArguments``; ADL within the block)."""

    anchors_per_sequence: int = field(default=8, metadata={"help": "Blocks drafted per training sequence."})
    draft_vocab: str | None = field(
        default=None,
        metadata={
            "help": "A DraftVocabulary JSON (diffuspec draft-vocab): the losses score only its ids, as the drafter "
            "will at inference with it (targets outside it are skipped); null: the whole vocabulary."
        },
    )
    decay_gamma: float | None = field(default=None, metadata={"help": "Slot i weighs exp(-(i-1)/gamma); null: 1."})
    kl_weight: float = field(default=0.0, metadata={"help": "Forward KL to the verifier's next-token distributions."})
    streak_weight: float = field(default=0.0, metadata={"help": "Expected accepted streak under greedy checking."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.remove_unused_columns = False  # the collator reads prompt_ids / completion_ids itself
        if self.anchors_per_sequence < 1:
            raise ValueError(f"anchors_per_sequence must be >= 1, got {self.anchors_per_sequence}")
        for name in ("kl_weight", "streak_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        position_decay_weights(1, self.decay_gamma)  # refuses gamma <= 0 before any model loads
        self.check_acceptance_arguments()
        if self.draft_vocab is not None and not Path(self.draft_vocab).is_file():
            raise FileNotFoundError(f"draft_vocab {self.draft_vocab} does not exist (or is not a file)")


@dataclass
class ConditionedDataArguments(DataArguments):
    """The alignment data, plus optional precomputed verifier features (``train/precompute_features.py``)."""

    features_path: str | None = field(
        default=None,
        metadata={"help": "Folder of precomputed verifier features for dataset_path (null: the verifier runs online)."},
    )


CONDITIONED_CONFIG_CLASSES = (ConditionedModelArguments, ConditionedDataArguments, ConditionedTrainingConfig)


def parse_conditioned_config(
    argv: list[str] | None = None,
) -> tuple[ConditionedModelArguments, ConditionedDataArguments, ConditionedTrainingConfig]:
    """``--config file.yaml`` plus ``--key value`` overrides, unknown keys refused (as ``parse_config``)."""
    return parse_config(argv, CONDITIONED_CONFIG_CLASSES)
