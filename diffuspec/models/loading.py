"""One entry point for diffusion drafters: ``load_diffusion_model(path) -> (model, mask_token_id, shifted)``.

Dispatch is on ``config.json``'s ``model_type``, never on the path:

- ``"Dream"``: Dream-v0 checkpoints and our Dream-format exports -> bidirectional ``Qwen2ForCausalLM``,
  shifted logits (see ``dream.py``).
- ``"llada"``: LLaDA-8B checkpoints -> bidirectional ``LlamaForCausalLM``, unshifted logits (``llada.py``).
- a diffuspec-native folder: any transformers causal-LM folder with ``"is_causal": false`` plus a marker
  giving ``mask_token_id`` and ``shifted``, either as a ``"diffuspec"`` object in ``config.json`` or as
  ``diffuspec_config.json``; loaded with ``AutoModelForCausalLM``.
- anything else only with ``trust_remote_code=True`` and explicit ``mask_token_id=`` and ``shifted=``.

``quantization="8bit"`` / ``"4bit"`` loads any of them through bitsandbytes (an optional dependency:
``pip install 'diffuspec[quant]'``): Dream-7B's weights take 8.7 / 5.9 GB instead of 15.2 GB in bf16 (the
embedding and the LM head stay bf16).

Shifted means the token at index s is read from output row s - 1 (method.md section 1).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel

from ..hub import resolve_local
from .dream import load_dream, save_dream_format
from .llada import load_llada
from .weights import resolve_device, resolve_dtype, set_bidirectional

__all__ = [
    "NATIVE_MARKER_FILE",
    "QUANTIZATIONS",
    "bitsandbytes_config",
    "load_diffusion_model",
    "read_native_marker",
    "save_dream_format",
]

NATIVE_MARKER_FILE = "diffuspec_config.json"
QUANTIZATIONS = ("8bit", "4bit")


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
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a model folder")
    raw = json.loads(config_file.read_text())
    model_type = raw.get("model_type")

    marker = read_native_marker(folder, raw)
    if marker is not None:
        return _load_native(folder, marker, dtype, device_map, kwargs)
    if model_type in ("Dream", "dream", "llada"):
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
        f"diffuspec folder with a {NATIVE_MARKER_FILE} / 'diffuspec' config entry). Running its own modeling "
        "code needs the explicit opt-in trust_remote_code=True, together with mask_token_id= and shifted=."
    )


def read_native_marker(folder: Path, raw_config: dict[str, Any]) -> dict[str, Any] | None:
    """The diffuspec marker (``mask_token_id``, ``shifted``) of a native folder, or ``None`` if absent."""
    marker = raw_config.get("diffuspec")
    marker_file = folder / NATIVE_MARKER_FILE
    if marker is None and marker_file.is_file():
        marker = json.loads(marker_file.read_text())
    if marker is None:
        return None
    missing = {"mask_token_id", "shifted"} - set(marker)
    if missing:
        raise ValueError(f"{folder}: the diffuspec marker lacks {sorted(missing)}")
    if raw_config.get("is_causal", True) is not False:
        raise ValueError(f'{folder}: a diffuspec drafter folder must have "is_causal": false in config.json')
    return marker


def _load_native(
    folder: Path, marker: dict[str, Any], dtype: Any, device_map: Any, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, int, bool]:
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=resolve_dtype(dtype) or "auto", device_map=device_map, **kwargs
    )
    if getattr(model.config, "is_causal", True) is not False:
        raise ValueError(
            f"{folder}: is_causal was lost while loading {type(model).__name__}; refusing a causal drafter"
        )
    set_bidirectional(model)
    return model.eval(), int(marker["mask_token_id"]), bool(marker["shifted"])


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
        folder,
        trust_remote_code=True,
        dtype=resolve_dtype(dtype) or "auto",
        device_map=device_map,
        **kwargs,
    )
    return model.eval(), mask_token_id, shifted
