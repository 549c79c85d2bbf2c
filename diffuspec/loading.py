"""Loading from folders and the Hub: every path or Hub id becomes a local folder, a tokenizer or a model here.

- ``resolve_local``: a local folder for a path or a Hub id (downloaded; offline, a clear error at once).
- ``load_causal_lm``: a verifier or AR drafter, any transformers causal LM.
- ``load_diffusion_model(path) -> (model, mask_token_id, shifted)``, dispatched on ``config.json``'s ``model_type``,
  never on the path:

  - ``"Dream"``: Dream-v0 checkpoints and our Dream-format exports -> bidirectional ``Qwen2ForCausalLM``, shifted
    logits (``models/dream.py``);
  - ``"llada"``: LLaDA-8B checkpoints -> bidirectional ``LlamaForCausalLM``, unshifted logits (``models/llada.py``);
  - a diffuspec-native folder: any transformers causal-LM folder with ``"is_causal": false`` and a
    ``diffuspec_config.json`` giving ``mask_token_id`` and ``shifted``, loaded with ``AutoModelForCausalLM``;
  - anything else only with ``trust_remote_code=True`` and explicit ``mask_token_id=`` and ``shifted=``.

  Shifted means the token at index s is read from output row s - 1 (Dream keeps the AR shift; LLaDA does not).
  ``quantization="8bit"`` / ``"4bit"`` loads any of them through bitsandbytes (``pip install 'diffuspec[quant]'``):
  Dream-7B's weights take 8.7 / 5.9 GB instead of 15.2 GB in bf16 (the embedding and the LM head stay bf16).

- ``load_conditioned_model``: a feature-conditioned drafter, diffuspec's own or a DFlash checkpoint
  (``architectures: ["DFlashDraftModel"]``, translated by ``models/dflash.py``).
- ``drafter_kind``: which of these a drafter folder holds (conditioned, diffusion, or a plain causal LM drafting
  autoregressively), from its config files alone.

Drafter objects (``DiffusionDrafter``, ``ConditionedDrafter``) are built from these by ``diffuspec.drafters``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .devices import resolve_device
from .drafter_config import CONFIG_FILE, has_diffuspec_config, read_diffuspec_config
from .dtypes import load_dtype, resolve_dtype
from .models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel
from .models.dflash import is_dflash_checkpoint, load_dflash_drafter
from .models.dream import load_dream
from .models.llada import load_llada
from .models.weights import set_bidirectional

QUANTIZATIONS = ("8bit", "4bit")
DIFFUSION_MODEL_TYPES = ("Dream", "dream", "llada")  # checkpoints load_diffusion_model reads without a marker file
DrafterKind = Literal["conditioned", "diffusion", "autoregressive"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- names and folders


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is a filesystem path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_local(name_or_path: str | os.PathLike) -> str:
    """Return a local folder for ``name_or_path``, downloading a Hub id; fail at once, clearly, when offline."""
    path = Path(name_or_path)
    if path.exists():
        return str(path)
    if _looks_like_path(str(name_or_path)):
        raise FileNotFoundError(f"{str(name_or_path)!r} does not exist (a local path, not a Hugging Face Hub id)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(name_or_path))
    except Exception as error:  # the hub raises several types for 'offline' and 'unreachable'
        raise OSError(
            f"{name_or_path!r} is not a local folder and the Hugging Face Hub is unreachable or does not have it "
            f"({type(error).__name__}: {error}). Download it on a machine with network access and pass the folder."
        ) from error


def read_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/config.json`` as a dict (no remote code runs), or an error saying the folder is not a model."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a model folder")
    return json.loads(config_file.read_text())


def config_vocab_size(folder: str | os.PathLike) -> int:
    """Embedding rows from config.json, read without loading weights."""
    raw = read_model_config(folder)
    size = raw.get("vocab_size", (raw.get("text_config") or {}).get("vocab_size"))
    if size is None:
        raise ValueError(f"{Path(folder) / 'config.json'} gives no vocab_size")
    return int(size)


def is_conditioned_drafter(folder: str | os.PathLike) -> bool:
    """Whether a model folder holds a feature-conditioned drafter, diffuspec's or DFlash's (either needs its
    verifier to draft)."""
    return read_model_config(folder).get("model_type") == ConditionedDrafterConfig.model_type or (
        is_dflash_checkpoint(folder)
    )


def drafter_kind(folder: str | os.PathLike) -> DrafterKind:
    """What a drafter folder holds, by its config files: a conditioned drafter (diffuspec's or DFlash's), a diffusion
    LM (a diffuspec marker file, Dream or LLaDA), or a causal LM transformers knows (drafting autoregressively).
    Anything else is a diffusion LM that only ``load_diffusion_model`` can explain (remote code, or an error)."""
    raw = read_model_config(folder)
    if is_conditioned_drafter(folder):
        return "conditioned"
    if has_diffuspec_config(folder) or raw.get("model_type") in DIFFUSION_MODEL_TYPES:
        return "diffusion"
    causal = raw.get("is_causal", True) is not False and raw.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return "autoregressive" if causal else "diffusion"


def load_conditioned_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
) -> ConditionedDrafterModel:
    """A conditioned drafter's model from a folder or Hub id: diffuspec's format, or a DFlash checkpoint (whose
    options are honoured or refused by name). The verifier's embedding and head are attached by the caller."""
    folder = resolve_local(name_or_path)
    if is_dflash_checkpoint(folder):
        return load_dflash_drafter(folder, dtype=dtype, device=resolve_device(device_map))
    return ConditionedDrafterModel.from_pretrained(folder, device_map=device_map, dtype=load_dtype(dtype))


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str | os.PathLike) -> Any | None:
    """The folder's tokenizer, or None when it ships none (logged: whatever is saved from it holds no tokenizer)."""
    folder = resolve_local(name_or_path)
    if not has_tokenizer(folder):
        logger.info("%s has no tokenizer files", folder)
        return None
    return AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------- causal LMs


def load_causal_lm(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device_map: str | int | torch.device | dict | None = None,
) -> PreTrainedModel:
    """Any transformers causal LM (a verifier, an AR drafter) in eval mode; ``dtype=None`` keeps the stored one."""
    device_map = str(device_map) if isinstance(device_map, torch.device) else device_map
    model = AutoModelForCausalLM.from_pretrained(
        resolve_local(name_or_path), dtype=load_dtype(dtype), device_map=device_map
    )
    return model.eval()


# ---------------------------------------------------------------- diffusion LMs


def bitsandbytes_config(quantization: str | None, dtype: torch.dtype | str | None = None) -> Any | None:
    """transformers' ``BitsAndBytesConfig`` for ``"8bit"`` / ``"4bit"`` (``None``: no quantization).

    Called before anything is downloaded or loaded, so a typo or a missing package fails in a second, not after
    minutes of loading. 4-bit is NF4 with ``dtype`` (default bfloat16) as the compute dtype.
    """
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS} or None, got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"quantization={quantization!r} needs the bitsandbytes package, which is not installed: "
            "pip install 'bitsandbytes>=0.46.1' (or pip install 'diffuspec[quant]')"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=resolve_dtype(dtype) or torch.bfloat16
    )


def load_diffusion_model(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device_map: str | int | torch.device | dict | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, int, bool]:
    """Load a diffusion LM from a folder (or Hub id) in eval mode; returns (model, mask_token_id, shifted).

    ``dtype=None`` keeps the stored dtype. Dream and LLaDA go to one device (``device_map`` may be a device,
    ``"auto"`` or ``{"": device}``) and accept only ``attn_implementation`` among ``kwargs``; the native and
    remote-code paths pass ``device_map`` and ``kwargs`` on to ``from_pretrained``. ``quantization`` is
    ``None``, ``"8bit"`` or ``"4bit"`` (bitsandbytes; checked before any weight loads; with no ``device_map`` the
    model goes to ``"auto"``, the accelerator).
    """
    quantization_config = bitsandbytes_config(quantization, dtype)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        device_map = "auto" if device_map is None else device_map  # bitsandbytes kernels want an accelerator
    folder = Path(resolve_local(path))
    raw = read_model_config(folder)
    model_type = raw.get("model_type")

    if has_diffuspec_config(folder):
        return _load_native(folder, raw, dtype, device_map, kwargs)
    if model_type in DIFFUSION_MODEL_TYPES:
        attn_implementation = kwargs.pop("attn_implementation", None)
        kwargs.pop("quantization_config", None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for a {model_type} checkpoint: {sorted(kwargs)}")
        loader = load_dream if model_type.lower() == "dream" else load_llada
        model, mask_token_id, shifted = loader(
            folder,
            raw,
            dtype=resolve_dtype(dtype),
            device=resolve_device(device_map),
            quantization_config=quantization_config,
        )
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
            set_bidirectional(model)
        return model, mask_token_id, shifted
    if trust_remote_code:
        return _load_remote_code(folder, dtype, device_map, kwargs)
    raise ValueError(
        f"{folder}: model_type {model_type!r} is not a known diffusion LM (known: 'Dream', 'llada', or a "
        f"diffuspec folder with a {CONFIG_FILE}). Running its own modeling code needs the explicit opt-in "
        "trust_remote_code=True, together with mask_token_id= and shifted=."
    )


def _load_native(
    folder: Path, raw_config: dict[str, Any], dtype: Any, device_map: Any, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, int, bool]:
    marker = read_diffuspec_config(folder)
    if raw_config.get("is_causal", True) is not False:
        raise ValueError(f'{folder}: a diffuspec drafter folder must have "is_causal": false in config.json')
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=load_dtype(dtype), device_map=device_map, **kwargs)
    if getattr(model.config, "is_causal", True) is not False:
        raise ValueError(
            f"{folder}: is_causal was lost while loading {type(model).__name__}; refusing a causal drafter"
        )
    set_bidirectional(model)
    return model.eval(), marker.mask_token_id, marker.shifted


def _load_remote_code(
    folder: Path, dtype: Any, device_map: Any, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, int, bool]:
    """The explicit opt-in: the checkpoint's own code runs, so we cannot read the mask id or shift from it."""
    if "mask_token_id" not in kwargs or "shifted" not in kwargs:
        raise ValueError(
            "trust_remote_code=True needs mask_token_id= and shifted= as well: diffuspec cannot know a "
            "remote-code model's mask token or logit alignment, and a wrong shift silently ruins acceptance"
        )
    mask_token_id = int(kwargs.pop("mask_token_id"))
    shifted = bool(kwargs.pop("shifted"))
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    auto_map = getattr(config, "auto_map", None) or {}
    auto_class = AutoModelForCausalLM if "AutoModelForCausalLM" in auto_map or not auto_map else AutoModel
    model = auto_class.from_pretrained(
        folder, trust_remote_code=True, dtype=load_dtype(dtype), device_map=device_map, **kwargs
    )
    return model.eval(), mask_token_id, shifted
