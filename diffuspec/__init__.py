"""diffuspec: diffusion-LM drafters for lossless speculative decoding."""

from .decoding.config import ADLConfig, CPSConfig, DecodeConfig, TreeConfig
from .decoding.drafter import Drafter, DraftRequest
from .decoding.lattice import Lattice
from .decoding.loop import DecodeStats, GenerateOutput, SpeculativeDecoder
from .drafters.autoregressive import AutoregressiveDrafter
from .drafters.conditioned import ConditionedDrafter
from .drafters.diffusion import DiffusionDrafter
from .drafters.hybrid import HybridDrafter
from .drafters.prompt_lookup import PromptLookupDrafter
from .drafters.vocabulary import DraftVocabulary
from .version import __version__

__all__ = [
    "__version__",
    "ADLConfig",
    "AutoregressiveDrafter",
    "CPSConfig",
    "ConditionedDrafter",
    "DecodeConfig",
    "DecodeStats",
    "DiffusionDrafter",
    "DraftRequest",
    "DraftVocabulary",
    "Drafter",
    "GenerateOutput",
    "HybridDrafter",
    "Lattice",
    "PromptLookupDrafter",
    "SpeculativeDecoder",
    "TreeConfig",
]
