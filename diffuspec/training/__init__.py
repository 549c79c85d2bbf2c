"""Drafter training: objectives, configuration, collator, trainer and callbacks (issue 3).

Needs the ``train`` extra (accelerate, peft, datasets, tensorboard). Entry point: ``train/train_drafter.py``.
"""

from .callbacks import AcceptanceCallback, CollatorEpochCallback
from .collator import DrafterCollator
from .config import DataArguments, DrafterTrainingConfig, ModelArguments, parse_config
from .losses import IGNORE_INDEX
from .teacher import OfflineTeacher, OnlineTeacher, TeacherTargets
from .trainer import DrafterTrainer, NonFiniteLossError, drafter_objectives, write_drafter_marker

__all__ = [
    "IGNORE_INDEX",
    "AcceptanceCallback",
    "CollatorEpochCallback",
    "DataArguments",
    "DrafterCollator",
    "DrafterTrainer",
    "DrafterTrainingConfig",
    "ModelArguments",
    "NonFiniteLossError",
    "OfflineTeacher",
    "OnlineTeacher",
    "TeacherTargets",
    "drafter_objectives",
    "parse_config",
    "write_drafter_marker",
]
