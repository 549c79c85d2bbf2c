"""Drafter/verifier tokenizer compatibility on small WordLevel tokenizers."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from diffuspec.models.tokenizers import check_tokenizers_compatible

BASE = {"<unk>": 0, "<eos>": 1, "<pad>": 2, "<im_end>": 3, "the": 4, "cat": 5, "sat": 6}


def make_tokenizer(vocab: dict[str, int], **special: str) -> PreTrainedTokenizerFast:
    model = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>", **special)


def test_same_vocabulary_is_compatible():
    check_tokenizers_compatible(make_tokenizer(BASE, eos_token="<eos>"), make_tokenizer(BASE, eos_token="<eos>"))


def test_ids_present_on_one_side_only_are_allowed():
    """Dream adds a mask id above Qwen's specials; the verifier may have other ids up there (Qwen3)."""
    drafter = make_tokenizer({**BASE, "<mask>": 7, "<bot>": 8}, eos_token="<eos>", pad_token="<pad>")
    verifier = make_tokenizer({**BASE, "<think>": 7}, eos_token="<eos>", pad_token="<pad>")
    check_tokenizers_compatible(drafter, verifier)
    check_tokenizers_compatible(verifier, drafter)


def test_special_roles_may_differ_when_both_tokens_are_shared():
    """Dream base ends on <|endoftext|>, Qwen2.5-Instruct on <|im_end|>: both ids exist on both sides."""
    drafter = make_tokenizer(BASE, eos_token="<eos>", pad_token="<pad>")
    verifier = make_tokenizer(BASE, eos_token="<im_end>", pad_token="<pad>")
    check_tokenizers_compatible(drafter, verifier)


def test_conflicting_ids_name_the_first_token_and_both_ids():
    swapped = {**BASE, "cat": 6, "sat": 5}
    with pytest.raises(ValueError, match=r"'cat': drafter id 6, verifier id 5"):
        check_tokenizers_compatible(make_tokenizer(swapped), make_tokenizer(BASE))


def test_special_token_missing_on_the_other_side():
    verifier_vocab = {**BASE, "<end>": 7}
    with pytest.raises(ValueError, match=r"verifier's eos token '<end>'.*missing from the drafter"):
        check_tokenizers_compatible(
            make_tokenizer(BASE, eos_token="<eos>"), make_tokenizer(verifier_vocab, eos_token="<end>")
        )


def test_special_token_only_one_side_defines_is_not_compared():
    drafter = make_tokenizer({**BASE, "<bot>": 7}, bos_token="<bot>", eos_token="<eos>")
    check_tokenizers_compatible(drafter, make_tokenizer(BASE, eos_token="<eos>"))
