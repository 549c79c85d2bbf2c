"""Drafter models: Dream/LLaDA/native loading, Dream-format export, AR-to-diffusion adaptation."""

from .adapt import adapt_and_save, adapt_ar_to_diffusion
from .loading import load_diffusion_model, save_dream_format
from .tokenizers import check_tokenizers_compatible

__all__ = [
    "adapt_and_save",
    "adapt_ar_to_diffusion",
    "check_tokenizers_compatible",
    "load_diffusion_model",
    "save_dream_format",
]
