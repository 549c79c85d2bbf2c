"""Drafter training: objectives, configurations, collators, trainers, callbacks and the runs behind ``train/*.py``.

Needs the ``train`` extra (accelerate, peft, datasets, tensorboard): importing this package without it stops at
once, naming the extra. Entry points: ``train/train_drafter.py`` and ``train/train_conditioned.py``
(``diffuspec.training.run``).
"""

from ..extras import require

require("train", what="diffuspec.training")

from .callbacks import AcceptanceCallback, CollatorEpochCallback  # noqa: E402
from .collator import DrafterCollator  # noqa: E402
from .config import DataArguments, DrafterTrainingConfig, ModelArguments, parse_config  # noqa: E402
from .losses import IGNORE_INDEX  # noqa: E402
from .teacher import OfflineTeacher, OnlineTeacher, TeacherTargets  # noqa: E402
from .trainer import DrafterTrainer, NonFiniteLossError, drafter_objectives  # noqa: E402

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
]
