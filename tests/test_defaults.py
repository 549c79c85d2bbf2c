"""Defaults that fit: ``SpeculativeDecoder.from_pretrained(verifier, drafter)`` with no config decodes every drafter
kind (diffusion, conditioned, DFlash import, AR) with what its folder recommends, else with ADL within its block, and
stays lossless; trainers record that decoding; a verifier is recognised by its weights fingerprint wherever it sits
(a symlink, a copy), while a different model is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from conftest import VOCAB, reference_greedy
from test_eval_harness import folders  # noqa: F401 - a fixture
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from diffuspec import (
    ADLConfig,
    AutoregressiveDrafter,
    ConditionedDrafter,
    DecodeConfig,
    DiffusionDrafter,
    SpeculativeDecoder,
)
from diffuspec.decoding.config import adl_within_block
from diffuspec.drafter_config import read_diffuspec_config, record_recommended_decode, write_diffuspec_config
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel, model_fingerprint
from diffuspec.models.dflash import export_dflash
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training.run import train_conditioned_drafter

MASK, BLOCK = VOCAB - 1, 6
PROMPT = torch.tensor([5, 9, 14, 22, 3])
NEW_TOKENS = 16
RECORDED = DecodeConfig(cps=None, adl=ADLConfig(k_min=2, k_max=5, delta=1))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Token ``t{i}`` is id i; the top id is the mask token."""
    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"<mask>": MASK}
    backend = Tokenizer(WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", mask_token="<mask>")


def conditioned_model(verifier, block_size: int = BLOCK) -> ConditionedDrafterModel:
    config = ConditionedDrafterConfig.for_verifier(
        verifier.config, mask_token_id=MASK, block_size=block_size, feature_layers=[1, 2], initializer_range=0.3
    )
    torch.manual_seed(0)
    return ConditionedDrafterModel(config, verifier=verifier).to(verifier.dtype).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A float64 verifier folder and one folder per drafter kind, none of which records a decoding."""
    root = tmp_path_factory.mktemp("defaults")
    verifier = tiny_qwen2(seed=1, vocab_size=VOCAB, hidden_size=32, num_layers=2, init_std=0.3, dtype=torch.float64)
    verifier.save_pretrained(root / "verifier")
    tiny_tokenizer().save_pretrained(root / "verifier")
    verifier = AutoModelForCausalLM.from_pretrained(root / "verifier").eval()

    diffusion = tiny_qwen2(seed=2, vocab_size=VOCAB, hidden_size=32, num_layers=1, causal=False, init_std=0.3)
    diffusion.to(torch.float64).save_pretrained(root / "diffusion")
    write_diffuspec_config(root / "diffusion", mask_token_id=MASK, shifted=True)
    conditioned_model(verifier).save_pretrained(root / "conditioned")
    export_dflash(conditioned_model(verifier, block_size=5), root / "dflash", verifier="tiny-verifier")
    ar = tiny_qwen2(seed=3, vocab_size=VOCAB, hidden_size=32, num_layers=1, init_std=0.3, dtype=torch.float64)
    ar.save_pretrained(root / "ar")
    return root


def decode(verifier_folder: Path, drafter_folder: Path) -> SpeculativeDecoder:
    """The documented one-liner, no config; asserts the output is the verifier's greedy output."""
    decoder = SpeculativeDecoder.from_pretrained(verifier_folder, drafter_folder)
    out = decoder.generate(PROMPT, max_new_tokens=NEW_TOKENS)
    expected = reference_greedy(decoder.verifier.model, PROMPT, NEW_TOKENS)
    assert out.sequences[0].tolist() == expected.tolist()
    assert sum(out.stats.draft_lengths) > 0
    return decoder


@pytest.mark.parametrize(
    "kind, drafter_class, adl",
    [
        ("diffusion", DiffusionDrafter, ADLConfig()),  # no block: the paper's ADL
        ("ar", AutoregressiveDrafter, ADLConfig()),
        ("conditioned", ConditionedDrafter, ADLConfig(k_min=2, k_max=BLOCK, delta=2)),  # 6 slots
        ("dflash", ConditionedDrafter, ADLConfig(k_min=2, k_max=5, delta=2)),  # DFlash block_size 6: 5 slots
    ],
)
def test_every_drafter_kind_decodes_with_no_config(root, kind, drafter_class, adl):
    decoder = decode(root / "verifier", root / kind)
    assert type(decoder.drafter) is drafter_class
    assert decoder.config == DecodeConfig(adl=adl)


def test_a_recorded_decoding_wins(root, tmp_path):
    folder = tmp_path / "diffusion"
    shutil.copytree(root / "diffusion", folder)
    record_recommended_decode(folder, RECORDED)
    assert read_diffuspec_config(folder).mask_token_id == MASK  # the rest of the record kept
    assert decode(root / "verifier", folder).config == RECORDED
    config = DecodeConfig(cps=None, adl=None, draft_length=3)
    assert SpeculativeDecoder.from_pretrained(root / "verifier", folder, config=config).config is config


@pytest.mark.parametrize(
    "block, expected",
    [(None, (20, 30, 10)), (30, (20, 30, 10)), (64, (20, 30, 10)), (12, (4, 12, 4)), (15, (5, 15, 5)), (1, (1, 1, 1))],
)
def test_adl_within_a_block(block, expected):
    adl = adl_within_block(block)
    assert (adl.k_min, adl.k_max, adl.delta) == expected


# ---------------------------------------------------------------- trainers record; verifiers are recognised


@pytest.fixture(scope="module")
def trained(root) -> Path:
    """A conditioned drafter trained for two steps against ``root/verifier``."""
    generator = torch.Generator().manual_seed(0)
    rows = {
        "id": ["0", "1"],
        "prompt_ids": [torch.randint(0, MASK, (6,), generator=generator).tolist() for _ in range(2)],
        "completion_ids": [torch.randint(0, MASK, (12,), generator=generator).tolist() for _ in range(2)],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(root / "dataset"))
    return train_conditioned_drafter(
        root / "verifier", root / "dataset", root / "trained", block_size=BLOCK, max_steps=2, batch_size=2,
        learning_rate=1e-3, anchors_per_sequence=2, feature_layers=[1, 2],
    )  # fmt: skip


def test_the_conditioned_trainer_records_its_decoding_and_the_verifiers_fingerprint(root, trained):
    verifier = AutoModelForCausalLM.from_pretrained(root / "verifier")
    fingerprint = model_fingerprint(verifier)
    assert ConditionedDrafterConfig.from_pretrained(trained).verifier_fingerprint == fingerprint
    record = read_diffuspec_config(trained)
    assert record.verifier == {"name": str(root / "verifier"), "vocab_size": VOCAB, "fingerprint": fingerprint}
    assert record.decode_config() == DecodeConfig.for_block(BLOCK)
    assert decode(root / "verifier", trained).config == DecodeConfig.for_block(BLOCK)


def test_a_verifier_is_recognised_wherever_it_sits(root, trained, tmp_path):
    (tmp_path / "verifier").mkdir()
    (tmp_path / "verifier" / "model").symlink_to(root / "verifier", target_is_directory=True)
    decode(tmp_path / "verifier" / "model", trained)  # the case: a symlink named "model"
    shutil.copytree(root / "verifier", tmp_path / "copied-elsewhere")
    moved = tmp_path / "moved-run"
    shutil.copytree(trained, moved)
    decode(tmp_path / "copied-elsewhere", moved)  # a copied verifier and a moved run folder


def test_a_different_model_is_refused_by_name(root, trained, tmp_path):
    other = tiny_qwen2(seed=9, vocab_size=VOCAB, hidden_size=32, num_layers=2, init_std=0.3, dtype=torch.float64)
    other.save_pretrained(tmp_path / "verifier")  # same shape and even the same folder name
    with pytest.raises(ValueError, match=r"is a different model from the recorded '.*verifier' \(weights fingerprint"):
        SpeculativeDecoder.from_pretrained(tmp_path / "verifier", trained)


def test_drafters_recorded_before_fingerprints_compare_names_through_symlinks(root, trained, tmp_path):
    """An old record (a name, no fingerprint): a symlink to the recorded folder passes, another name does not."""
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    config = json.loads((old / "config.json").read_text())
    link = tmp_path / "model"
    link.symlink_to(root / "verifier", target_is_directory=True)
    (old / "config.json").write_text(json.dumps(config | {"verifier_name": str(link), "verifier_fingerprint": None}))
    decode(root / "verifier", old)
    shutil.copytree(root / "verifier", tmp_path / "renamed")
    with pytest.raises(ValueError, match="records no weights fingerprint"):
        SpeculativeDecoder.from_pretrained(tmp_path / "renamed", old)


def test_the_fingerprint_ignores_the_load_dtype_and_tells_checkpoints_apart(root):
    float32 = AutoModelForCausalLM.from_pretrained(root / "verifier", dtype=torch.float32)
    bfloat16 = AutoModelForCausalLM.from_pretrained(root / "verifier", dtype=torch.bfloat16)
    assert model_fingerprint(float32) == model_fingerprint(bfloat16)
    other = tiny_qwen2(seed=9, vocab_size=VOCAB, hidden_size=32, num_layers=2, init_std=0.3)
    assert model_fingerprint(other) != model_fingerprint(float32)


# ---------------------------------------------------------------- a decoder built directly; the command line


def test_a_decoder_built_with_no_config_drafts_within_its_drafters_block(root):
    verifier = AutoModelForCausalLM.from_pretrained(root / "verifier").eval()
    drafter = ConditionedDrafter.from_pretrained(root / "conditioned", verifier)
    decoder = SpeculativeDecoder(verifier, drafter)  # the defaults' k_max of 30 would not fit the 6-slot block
    assert decoder.config == DecodeConfig.for_block(BLOCK)
    out = decoder.generate(PROMPT, max_new_tokens=NEW_TOKENS)
    assert out.sequences[0].tolist() == reference_greedy(verifier, PROMPT, NEW_TOKENS).tolist()
    assert SpeculativeDecoder(verifier).config == DecodeConfig()  # plain decoding


def test_generate_without_decoding_flags_decodes_as_the_folder_recommends(folders, tmp_path, monkeypatch):  # noqa: F811
    """``diffuspec generate`` passes no config unless a decoding flag is given (eval/tiny_models.py's folders)."""
    from diffuspec.cli import main

    folder = tmp_path / "dlm"
    shutil.copytree(folders["dlm"], folder)
    record_recommended_decode(folder, RECORDED)
    real = SpeculativeDecoder.from_pretrained.__func__
    seen = []

    def spy(cls, *args, **kwargs):
        decoder = real(cls, *args, **kwargs)
        seen.append((kwargs["config"], decoder))
        return decoder

    monkeypatch.setattr(SpeculativeDecoder, "from_pretrained", classmethod(spy))
    argv = ["generate", "--verifier", str(folders["verifier"]), "--prompt", "the cat sat", "--max-new-tokens", "4"]
    assert main([*argv, "--drafter", str(folder)]) == 0
    assert seen[-1][0] is None and seen[-1][1].config == RECORDED
    assert main([*argv, "--drafter", str(folders["conditioned"])]) == 0
    config, decoder = seen[-1]
    assert config is None and decoder.config == DecodeConfig.for_block(decoder.drafter.max_draft_length())
    assert main([*argv, "--drafter", str(folder), "--k-min", "2", "--k-max", "4"]) == 0  # a flag: the flags decide
    assert seen[-1][0] == seen[-1][1].config == DecodeConfig(adl=ADLConfig(k_min=2, k_max=4))
