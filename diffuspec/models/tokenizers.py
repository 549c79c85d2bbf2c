"""Drafter/verifier tokenizer compatibility: drafted ids are handed to the verifier unchanged.

Speculative decoding stays lossless with any drafter, but a drafter whose id 1234 means a different string
than the verifier's id 1234 proposes garbage and acceptance collapses without any error. So every token
string both tokenizers know must have the same id in both. Ids only one side has are allowed: Dream adds
151665/151666 above Qwen2.5's specials and pads its embedding to 152064 rows, and the decoder never proposes
the drafter's mask id or any id at or above the verifier's vocabulary size.

Special tokens are compared as tokens, not as roles: for eos/pad/bos defined by both, each side's token must
exist in the other vocabulary under the same id. Roles may differ (a Dream base model ends on
``<|endoftext|>`` while Qwen2.5-Instruct ends on ``<|im_end|>``, both ids shared), because stopping follows
the verifier's eos ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

_ROLES = ("eos", "pad", "bos")


def check_tokenizers_compatible(drafter_tokenizer: Any, verifier_tokenizer: Any) -> None:
    """Raise ``ValueError`` naming the first token whose ids differ between drafter and verifier."""
    drafter_vocab: dict[str, int] = drafter_tokenizer.get_vocab()
    verifier_vocab: dict[str, int] = verifier_tokenizer.get_vocab()

    shared = drafter_vocab.keys() & verifier_vocab.keys()
    conflicts = sorted(
        (min(drafter_vocab[token], verifier_vocab[token]), token)
        for token in shared
        if drafter_vocab[token] != verifier_vocab[token]
    )
    if conflicts:
        _, token = conflicts[0]
        raise ValueError(
            f"drafter and verifier tokenizers disagree on {len(conflicts)} token(s); the first is {token!r}: "
            f"drafter id {drafter_vocab[token]}, verifier id {verifier_vocab[token]}. Drafted ids would mean "
            "other strings to the verifier; use a drafter trained on the verifier's tokenizer."
        )

    for role in _ROLES:
        drafter_token = getattr(drafter_tokenizer, f"{role}_token", None)
        verifier_token = getattr(verifier_tokenizer, f"{role}_token", None)
        if drafter_token is None or verifier_token is None:
            continue
        for owner, token in (("drafter", drafter_token), ("verifier", verifier_token)):
            token = str(token)
            in_drafter, in_verifier = drafter_vocab.get(token), verifier_vocab.get(token)
            if in_drafter is None or in_verifier is None:
                missing = "drafter" if in_drafter is None else "verifier"
                raise ValueError(
                    f"the {owner}'s {role} token {token!r} (drafter id {in_drafter}, verifier id "
                    f"{in_verifier}) is missing from the {missing} vocabulary, so the models disagree on it"
                )


EOS_TOKEN, PAD_TOKEN, MASK_TOKEN = "<|endoftext|>", "<|pad|>", "<|mask|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, extra_special_tokens: Sequence[str] = ()) -> Any:
    """A byte-level BPE trained on ``texts``, as a transformers ``Qwen2Tokenizer``, with ``<|endoftext|>`` (eos),
    ``<|pad|>`` and ``<|mask|>`` as ids 0, 1, 2 and ``extra_special_tokens`` after them.

    Why Qwen2's class: transformers 5 gives a folder whose config.json says ``model_type: qwen2`` the tokenizer
    class of that model type, which applies Qwen2's own pre-tokenizer whatever tokenizer.json says. A BPE trained
    with other splitting rules and saved next to a Qwen2 model would then encode text differently from the ids the
    models were trained on. Trained as a Qwen2 tokenizer, every loading path gives the same ids."""
    from transformers import Qwen2Tokenizer

    specials = [EOS_TOKEN, PAD_TOKEN, MASK_TOKEN, *extra_special_tokens]
    tokenizer = Qwen2Tokenizer().train_new_from_iterator(texts, vocab_size=vocab_size, new_special_tokens=specials)
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.mask_token = EOS_TOKEN, PAD_TOKEN, MASK_TOKEN
    return tokenizer
