"""Turn a causal decoder LM into the starting point of a Dream-style diffusion drafter.

Dream was initialised from Qwen2.5 and kept its AR logit shift; drafters trained the same way start from the
verifier family's lower layers. The copy keeps the first ``num_layers`` decoder layers, switches to full
attention and, unless the vocabulary already has one, gains a mask token whose embedding is the mean row
(a neutral input that carries no token identity). Training (diffuspec.training) does the rest.

``adapt_and_save`` is the user entry point (``train/adapt_drafter.py``): a folder or Hub id in, a drafter folder
out. Qwen2 and Llama models become Dream checkpoints; Gemma-3 text models (``gemma3_text``) keep transformers' own
class (its scaled embedding, (1 + w) RMSNorms, sandwich norms, sliding layers and logit soft-capping) in a
diffuspec-native folder (``is_causal: false`` plus ``diffuspec_config.json``). The mask token goes, in order of
preference, to the tokenizer's own mask token, to the first spare embedding row (Qwen2.5 pads its embedding to
151,936 rows for 151,665 tokens, so the drafter keeps its vocabulary size), to an unused special token when every
row is a token (SmolLM2's 49,152: its verifier must score every id the drafter has), or to one appended row.
``vocab_size`` pads the embedding to the verifier's row count, which training against the verifier requires
(Qwen2.5-7B/32B have 152,064 rows).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from ..drafter_config import write_diffuspec_config
from ..dtypes import resolve_dtype
from ..files import replace_folder_atomically
from ..loading import TOKENIZER_FILES, load_tokenizer, resolve_local
from .dream import check_dream_shape, save_dream_format
from .weights import set_bidirectional

logger = logging.getLogger(__name__)

MASK_TOKEN = "<|mask|>"  # Dream's mask token string
MaskSource = Literal["tokenizer", "vocabulary", "spare_row", "special_token", "appended"]
DREAM_TYPES = ("qwen2", "llama")  # written as Dream checkpoints (the format is Qwen2-shaped)
NATIVE_TYPES = ("gemma3_text",)  # kept in transformers' own class: a diffuspec-native folder
ROLE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def adapt_ar_to_diffusion(
    model: PreTrainedModel, *, num_layers: int | None = None, mask_token_id: int | None = None
) -> tuple[PreTrainedModel, int]:
    """A bidirectional, shifted-logit copy of ``model`` cut to ``num_layers``; returns (drafter, mask id).

    ``model`` (a Qwen2/Llama-family ``*ForCausalLM``) is not modified. A ``mask_token_id`` inside the
    vocabulary is reused as is; otherwise one embedding row is appended and its id returned.
    """
    drafter = bidirectional_copy(model, num_layers)
    rows = drafter.get_input_embeddings().weight.shape[0]
    if mask_token_id is not None and 0 <= mask_token_id < rows:
        return drafter, int(mask_token_id)
    if mask_token_id is not None and mask_token_id != rows:
        raise ValueError(
            f"mask_token_id {mask_token_id} is neither in the vocabulary [0, {rows}) nor the next id {rows}"
        )
    grow_mean_rows(drafter, rows + 1, used_rows=rows)
    return drafter, rows


def bidirectional_copy(model: PreTrainedModel, num_layers: int | None = None) -> PreTrainedModel:
    """A copy of ``model`` with its first ``num_layers`` decoder layers and full attention; ``model`` is untouched."""
    drafter = truncated_copy(model, num_layers)
    set_bidirectional(drafter)
    return drafter


def truncated_copy(model: PreTrainedModel, num_layers: int | None = None) -> PreTrainedModel:
    """A copy of ``model`` with its first ``num_layers`` decoder layers (still causal); ``model`` is untouched."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} is not a decoder-only *ForCausalLM with model.layers")
    total = len(layers)
    keep = total if num_layers is None else num_layers
    if not 1 <= keep <= total:
        raise ValueError(f"num_layers must be in [1, {total}], got {num_layers}")

    # Deep-copy everything except the dropped layers (the memo maps them to None), so adapting 4 layers of a
    # 32B verifier does not first duplicate all of it.
    memo = {id(layer): None for layer in layers[keep:]}
    drafter = copy.deepcopy(model, memo)
    drafter.model.layers = nn.ModuleList(drafter.model.layers[i] for i in range(keep))
    drafter.config.num_hidden_layers = keep
    if getattr(drafter.config, "layer_types", None) is not None:
        drafter.config.layer_types = list(drafter.config.layer_types[:keep])
    return drafter


@torch.no_grad()
def grow_mean_rows(model: PreTrainedModel, rows: int, used_rows: int) -> None:
    """Grow the vocabulary to ``rows`` ids; each new input (and untied output) row is the mean of the first
    ``used_rows`` rows, a neutral start that carries no token identity."""
    old = model.get_input_embeddings().weight.shape[0]
    if rows <= old:
        return
    means = _row_means(model, used_rows)
    model.resize_token_embeddings(rows, mean_resizing=False)
    for row in range(old, rows):
        _write_row(model, row, means)


@torch.no_grad()
def _row_means(model: PreTrainedModel, used_rows: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Means of the first ``used_rows`` input rows, untied output rows and output biases (None where absent)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight is not embedding
    output_mean = head.weight[:used_rows].float().mean(dim=0) if untied else None
    bias = getattr(head, "bias", None) if untied else None
    bias_mean = bias[:used_rows].float().mean() if bias is not None else None
    return embedding[:used_rows].float().mean(dim=0), output_mean, bias_mean


@torch.no_grad()
def _write_row(
    model: PreTrainedModel, row: int, means: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
) -> None:
    input_mean, output_mean, bias_mean = means
    embedding = model.get_input_embeddings().weight
    embedding[row] = input_mean.to(embedding.dtype)
    head = model.get_output_embeddings()
    if output_mean is not None:
        head.weight[row] = output_mean.to(head.weight.dtype)
    if bias_mean is not None:
        head.bias[row] = bias_mean.to(head.bias.dtype)


# ---------------------------------------------------------------- the mask token


@dataclass(frozen=True)
class MaskChoice:
    """Where the drafter's mask token lives: its string, its id, and why that id."""

    token: str
    token_id: int
    # tokenizer's mask token / a string already in the vocabulary / first spare row / an unused special token / new row
    source: MaskSource


def choose_mask_token(tokenizer: Any, embedding_rows: int, mask_token: str | None = None) -> MaskChoice:
    """Pick the mask id from the tokenizer and the embedding size alone (so before any weight loads).

    ``mask_token`` (default: the tokenizer's mask token, else ``"<|mask|>"``) keeps its id when the vocabulary
    has it. Otherwise the first row past every id the tokenizer uses is taken when the embedding has such a spare
    row (the drafter then keeps its vocabulary size, which must match the verifier's for training). With no spare
    row and no ``mask_token`` asked for, an unused special token is taken (``unused_special_token``): a drafter
    one row larger than its verifier could not decode with it. Only then is one row appended.
    """
    token = mask_token or getattr(tokenizer, "mask_token", None) or MASK_TOKEN
    vocab: dict[str, int] = tokenizer.get_vocab()
    used = ids_used(tokenizer)
    if token in vocab:
        token_id = vocab[token]
        if token_id > embedding_rows:
            raise ValueError(
                f"mask token {token!r} has id {token_id} in the tokenizer, past the {embedding_rows} embedding rows"
            )
        if token_id == embedding_rows:
            return MaskChoice(token, token_id, "appended")
        return MaskChoice(token, token_id, "tokenizer" if token == tokenizer.mask_token else "vocabulary")
    if used < embedding_rows:
        return MaskChoice(token, used, "spare_row")
    if used == embedding_rows:
        special = unused_special_token(tokenizer, embedding_rows) if mask_token is None else None
        if special is not None:
            return MaskChoice(special, vocab[special], "special_token")
        return MaskChoice(token, used, "appended")
    raise ValueError(
        f"the tokenizer uses {used} ids but the embedding has only {embedding_rows} rows; "
        "they do not belong to the same model"
    )


def unused_special_token(tokenizer: Any, embedding_rows: int) -> str | None:
    """The special token with the highest id below ``embedding_rows`` that no chat uses: none of the tokenizer's
    role tokens (BOS, EOS, PAD, ...) and absent from its chat template. SmolLM2: ``<empty_output>`` (id 16), a
    StarCoder notebook marker. None when there is none. The drafter never proposes its mask token, so the verifier
    still emits it (at a cost in acceptance only)."""
    roles = {getattr(tokenizer, name, None) for name in ROLE_TOKENS}
    template = tokenizer.chat_template or ""
    template = "".join(template.values()) if isinstance(template, dict) else template
    unused = [
        (token_id, added.content)
        for token_id, added in tokenizer.added_tokens_decoder.items()
        if added.special and token_id < embedding_rows and added.content not in roles and added.content not in template
    ]
    return max(unused)[1] if unused else None


def ids_used(tokenizer: Any) -> int:
    """How many leading ids the tokenizer uses: one past its highest id (added tokens included)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def _name_mask_token(tokenizer: Any, choice: MaskChoice) -> Any:
    """The tokenizer with ``choice.token`` registered as its mask token at ``choice.token_id``, when possible.

    A new token gets the tokenizer's next id, which is the chosen row unless the vocabulary has holes; then the
    tokenizer is saved as it was (the id is in config.json either way) and a warning says so.
    """
    named = copy.deepcopy(tokenizer)
    named.add_special_tokens({"mask_token": choice.token})
    if named.mask_token_id == choice.token_id:
        return named
    logger.warning(
        "could not register %r at id %d in the tokenizer (it would get id %s); the saved tokenizer names no new "
        "mask token, config.json holds mask_token_id %d",
        choice.token,
        choice.token_id,
        named.mask_token_id,
        choice.token_id,
    )
    return tokenizer


# ---------------------------------------------------------------- folder in, Dream-format folder out


@dataclass(frozen=True)
class AdaptResult:
    """What ``adapt_and_save`` wrote."""

    output_dir: Path
    num_layers: int
    total_layers: int
    mask: MaskChoice
    vocab_size: int
    mask_named_in_tokenizer: bool

    def summary(self) -> str:
        where = {
            "tokenizer": "the tokenizer's own mask token",
            "vocabulary": "an existing token",
            "spare_row": "a spare embedding row, initialised to the mean row",
            "special_token": "an unused special token of the tokenizer (its row kept): the vocabulary had no spare "
            "row, and the drafter keeps the verifier's size",
            "appended": "a new embedding row, initialised to the mean row: the vocabulary grew by one, so a "
            "verifier of the original size refuses this drafter (name a token it never emits with --mask_token)",
        }[self.mask.source]
        return (
            f"wrote {self.output_dir}: {self.num_layers} of {self.total_layers} decoder layers, bidirectional, "
            f"shifted logits; mask token {self.mask.token!r} = id {self.mask.token_id} ({where}); "
            f"vocabulary {self.vocab_size}"
        )


def _check_output_dir(out: Path) -> bool:
    """Refuse an existing non-empty folder (a drafter is never overwritten); True when an empty one exists."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"output_dir {str(out)!r} exists and is not a folder")
    if any(out.iterdir()):
        raise FileExistsError(f"output_dir {str(out)!r} exists and is not empty; choose a new folder or empty it")
    return True


def _check_causal_lm(folder: Path) -> PreTrainedConfig:
    """The config of a Qwen2, Llama or Gemma-3 text causal LM, or a ValueError naming what the folder is instead."""
    if not (folder / "config.json").is_file():
        raise ValueError(f"model {str(folder)!r} has no config.json, so it is not a model folder")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError) as error:
        raise ValueError(f"model {str(folder)!r}: its config.json is not a transformers causal LM ({error})") from error
    if config.model_type not in DREAM_TYPES + NATIVE_TYPES:
        raise ValueError(
            f"model {str(folder)!r} has model_type {config.model_type!r}; adaptation needs a Qwen2-, Llama- or "
            f"Gemma-3 text causal LM (model_type one of {DREAM_TYPES + NATIVE_TYPES})"
        )
    architectures = getattr(config, "architectures", None) or []
    not_causal = [name for name in architectures if not name.endswith("ForCausalLM")]
    if not_causal:
        raise ValueError(f"model {str(folder)!r} is a {not_causal[0]}, not a causal LM (*ForCausalLM)")
    if getattr(config, "is_causal", True) is False:
        raise ValueError(f"model {str(folder)!r} already has bidirectional attention (is_causal: false)")
    if config.model_type in DREAM_TYPES:
        check_dream_shape(config)
    return config


def save_native_format(
    model: PreTrainedModel,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    mask_token_id: int,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write a bidirectional drafter in its own transformers class, atomically: weights, config (``is_causal:
    false``), tokenizer and ``diffuspec_config.json`` (mask id, shifted logits); ``load_diffusion_model`` reads it."""

    def fill(folder: Path) -> None:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(folder)
        write_diffuspec_config(folder, mask_token_id=mask_token_id, shifted=True)

    return replace_folder_atomically(fill, Path(out_dir), overwrite=overwrite)


def adapt_and_save(
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    num_layers: int | None = None,
    mask_token: str | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_size: int | str = "5GB",
) -> AdaptResult:
    """Adapt the causal LM ``model`` (folder or Hub id) and write it to ``output_dir``: a Dream checkpoint for Qwen2
    and Llama, a diffuspec-native folder for Gemma-3.

    Everything checkable without weights is checked before they load: the output folder (new or empty), the
    model type, ``num_layers`` in [1, layers], ``vocab_size``, the tokenizer and the mask token. ``vocab_size``
    pads the embedding to the verifier's row count (Qwen2.5-0.5B has 151,936 rows, Qwen2.5-7B/32B 152,064):
    training with the verifier online and evaluation need equal sizes. ``dtype=None`` keeps the stored dtype.
    The folder is written atomically, with the tokenizer (mask token registered) next to the weights, and loads
    with ``load_diffusion_model`` (mask id and shift from its config.json).
    """
    out = Path(output_dir)
    replace_empty = _check_output_dir(out)
    torch_dtype = resolve_dtype(dtype)
    folder = Path(resolve_local(model))
    config = _check_causal_lm(folder)
    total, rows = int(config.num_hidden_layers), int(config.vocab_size)
    keep = total if num_layers is None else num_layers
    if not 1 <= keep <= total:
        raise ValueError(
            f"num_layers={num_layers} is out of range: {str(folder)!r} has {total} decoder layers, so use 1..{total}"
        )
    if vocab_size is not None and vocab_size < rows:
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the {rows} embedding rows of {str(folder)!r}; it can only "
            "pad the embedding (to the verifier's row count), not cut it"
        )
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        raise ValueError(
            f"model {str(folder)!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); adaptation needs the "
            "tokenizer to tell the ids it uses from spare embedding rows, and the drafter ships it"
        )
    choice = choose_mask_token(tokenizer, max(rows, vocab_size or 0), mask_token)
    final_rows = max(rows, vocab_size or 0, choice.token_id + 1)

    source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype or "auto")
    if source.get_input_embeddings().weight.shape[0] != rows:
        raise ValueError(f"{str(folder)!r}: config vocab_size {rows} differs from the embedding's row count")
    drafter = bidirectional_copy(source, keep)
    del source
    used = min(ids_used(tokenizer), rows)  # rows of real tokens; the rest are untrained padding
    grow_mean_rows(drafter, final_rows, used_rows=used)
    if choice.source == "spare_row" and choice.token_id < rows:  # untrained padding: start it as a new row starts
        _write_row(drafter, choice.token_id, _row_means(drafter, used))
    named = _name_mask_token(tokenizer, choice)
    save = save_dream_format if config.model_type in DREAM_TYPES else save_native_format
    save(drafter, named, out, choice.token_id, max_shard_size=max_shard_size, overwrite=replace_empty)
    return AdaptResult(
        output_dir=out,
        num_layers=keep,
        total_layers=total,
        mask=choice,
        vocab_size=final_rows,
        mask_named_in_tokenizer=named.mask_token_id == choice.token_id,
    )
