"""AR -> diffusion adaptation: the truncated bidirectional copy, the mask token's id, train/adapt_drafter.py, and the
whole path at tiny scale (adapt the verifier's lower layer, align it with train/train_drafter.py, decode losslessly)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import reference_greedy
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from diffuspec import ADLConfig, DecodeConfig, DiffusionDrafter, SpeculativeDecoder
from diffuspec.drafter_config import read_diffuspec_config
from diffuspec.drafters.diffusion import check_bidirectional
from diffuspec.loading import load_diffusion_model
from diffuspec.models.adapt import MASK_TOKEN, MaskChoice, adapt_and_save, adapt_ar_to_diffusion, choose_mask_token
from diffuspec.models.dream import save_dream_format
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.models.tokenizers import check_tokenizers_compatible
from diffuspec.training import parse_config

ROOT = Path(__file__).resolve().parents[1]

VOCAB = 128
IDS = torch.tensor([[5, 9, 1, 77, 3, 12]])
CHANGED = torch.tensor([[5, 9, 1, 77, 3, 13]])  # only the last token differs


def first_row_moves(model) -> bool:
    """Does position 0 see the last token? True for bidirectional attention, False for causal."""
    with torch.no_grad():
        return not torch.equal(model(input_ids=IDS).logits[0, 0], model(input_ids=CHANGED).logits[0, 0])


@pytest.fixture
def source():
    return tiny_qwen2(seed=5, vocab_size=VOCAB, hidden_size=32, num_layers=3, init_std=0.2)


def test_adapted_copy_is_bidirectional_truncated_and_has_a_mask_row(source):
    before = {k: v.clone() for k, v in source.state_dict().items()}
    drafter, mask_token_id = adapt_ar_to_diffusion(source, num_layers=2)

    assert mask_token_id == VOCAB and drafter.config.vocab_size == VOCAB + 1
    assert len(drafter.model.layers) == drafter.config.num_hidden_layers == 2
    assert len(drafter.config.layer_types) == 2
    assert drafter.config.is_causal is False and first_row_moves(drafter)
    embed, head = drafter.model.embed_tokens.weight, drafter.lm_head.weight
    torch.testing.assert_close(embed[VOCAB], before["model.embed_tokens.weight"].mean(0))
    torch.testing.assert_close(head[VOCAB], before["lm_head.weight"].mean(0))
    for name, tensor in drafter.state_dict().items():  # lower layers and everything else copied as is
        if name.startswith("model.layers."):
            assert torch.equal(tensor, before[name])
    assert torch.equal(embed[:VOCAB], before["model.embed_tokens.weight"])

    # the source is untouched: same tensors, same config, still causal, not shared with the copy
    assert source.state_dict().keys() == before.keys()
    assert all(torch.equal(source.state_dict()[k], v) for k, v in before.items())
    assert source.config.num_hidden_layers == 3 and source.config.vocab_size == VOCAB
    assert getattr(source.config, "is_causal", True) is True and not first_row_moves(source)
    assert drafter.model.layers[0].self_attn.q_proj.weight is not source.model.layers[0].self_attn.q_proj.weight


def test_mask_token_inside_vocabulary_is_reused(source):
    drafter, mask_token_id = adapt_ar_to_diffusion(source, mask_token_id=VOCAB - 1)
    assert mask_token_id == VOCAB - 1 and drafter.config.vocab_size == VOCAB
    assert len(drafter.model.layers) == 3 and first_row_moves(drafter)


@pytest.mark.parametrize("kwargs", [{"num_layers": 0}, {"num_layers": 4}, {"mask_token_id": VOCAB + 5}])
def test_bad_arguments(source, kwargs):
    with pytest.raises(ValueError):
        adapt_ar_to_diffusion(source, **kwargs)


def test_tied_llama_keeps_its_tie():
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    source = LlamaForCausalLM(config).eval()
    drafter, mask_token_id = adapt_ar_to_diffusion(source, num_layers=1)
    assert mask_token_id == VOCAB and drafter.lm_head.weight is drafter.model.embed_tokens.weight
    assert first_row_moves(drafter) and not first_row_moves(source)


def test_adapted_drafter_survives_the_dream_format(source, tmp_path):
    drafter, mask_token_id = adapt_ar_to_diffusion(source, num_layers=1)
    save_dream_format(drafter, None, tmp_path / "dream", mask_token_id)
    loaded, loaded_mask, shifted = load_diffusion_model(tmp_path / "dream")
    assert (loaded_mask, shifted) == (mask_token_id, True)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, drafter(input_ids=IDS).logits)


# ---------------------------------------------------------------- the mask token, and the whole path from a folder

WORDS = 37
SPECIALS = {"<unk>": 0, "<eos>": 1, "<pad>": 2}
N_TOKENS = len(SPECIALS) + WORDS  # 40 ids used by the tokenizer; the tiny models below have 64 embedding rows
ROWS, EOS = 64, 1


def make_tokenizer(extra: dict[str, int] | None = None, **special: str) -> PreTrainedTokenizerFast:
    vocab = {**SPECIALS, **{f"w{i}": len(SPECIALS) + i for i in range(WORDS)}, **(extra or {})}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>", **special
    )


@pytest.mark.parametrize(
    "extra, special, mask_token, rows, expected",
    [
        # Qwen2.5's case: 40 ids used, 64 rows -> the first spare row, 40, under Dream's token string
        (None, {}, None, ROWS, MaskChoice(MASK_TOKEN, N_TOKENS, "spare_row")),
        (None, {}, "<m>", ROWS, MaskChoice("<m>", N_TOKENS, "spare_row")),
        # the tokenizer's own mask token keeps its id; so does any string already in the vocabulary
        ({"<mask>": N_TOKENS}, {"mask_token": "<mask>"}, None, ROWS, MaskChoice("<mask>", N_TOKENS, "tokenizer")),
        (None, {}, "w7", ROWS, MaskChoice("w7", len(SPECIALS) + 7, "vocabulary")),
        # no spare row: one is appended
        (None, {}, None, N_TOKENS, MaskChoice(MASK_TOKEN, N_TOKENS, "appended")),
    ],
)
def test_choose_mask_token(extra, special, mask_token, rows, expected):
    tokenizer = make_tokenizer(extra, **special)
    assert choose_mask_token(tokenizer, rows, mask_token) == expected


def test_choose_mask_token_spare_row_skips_every_used_id():
    """Added tokens count as used: the spare row is past the highest id the tokenizer knows."""
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(["<tool>", "<think>"])
    assert choose_mask_token(tokenizer, ROWS) == MaskChoice(MASK_TOKEN, N_TOKENS + 2, "spare_row")


def test_choose_mask_token_without_a_spare_row_takes_an_unused_special_token():
    """Every row a token (SmolLM2): the highest special token that is no role token and not in the chat template."""
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<turn>", "<spare_a>", "<spare_b>"]})
    tokenizer.chat_template = "{% for m in messages %}<turn>{{ m['content'] }}{% endfor %}"
    rows = N_TOKENS + 3
    assert choose_mask_token(tokenizer, rows) == MaskChoice("<spare_b>", N_TOKENS + 2, "special_token")
    assert choose_mask_token(tokenizer, rows + 1) == MaskChoice(MASK_TOKEN, rows, "spare_row")  # a spare row first
    assert choose_mask_token(tokenizer, rows, "<m>") == MaskChoice("<m>", rows, "appended")  # a named token wins
    tokenizer.chat_template += "<spare_a><spare_b>"
    assert choose_mask_token(tokenizer, rows) == MaskChoice(MASK_TOKEN, rows, "appended")  # none left unused


def test_choose_mask_token_refuses_a_tokenizer_larger_than_the_embedding():
    with pytest.raises(ValueError, match="uses 40 ids but the embedding has only 39 rows"):
        choose_mask_token(make_tokenizer(), N_TOKENS - 1)


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_drafter", ROOT / "train" / "train_drafter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_adapt_script():
    spec = importlib.util.spec_from_file_location("adapt_drafter", ROOT / "train" / "adapt_drafter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def verifier_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 verifier folder with a 40-token tokenizer and 64 embedding rows (24 spare, as in Qwen2.5)."""
    folder = tmp_path_factory.mktemp("verifier")
    model = tiny_qwen2(seed=11, vocab_size=ROWS, hidden_size=32, num_layers=2, eos_token_id=EOS, init_std=0.3)
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def test_adapt_train_and_decode_losslessly(verifier_dir, tmp_path):
    """The adaptation path at tiny scale: adapt the verifier's lower layer, load it, align it, decode with it."""
    verifier = AutoModelForCausalLM.from_pretrained(verifier_dir).eval()
    out = tmp_path / "adapted"
    out.mkdir()  # an existing empty folder is fine
    result = load_adapt_script().main(["--model", str(verifier_dir), "--output_dir", str(out), "--num_layers", "1"])
    assert result.mask == MaskChoice(MASK_TOKEN, N_TOKENS, "spare_row") and result.mask_named_in_tokenizer
    assert (result.num_layers, result.total_layers, result.vocab_size) == (1, 2, ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]  # written atomically: no partial folders

    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "Dream" and saved["mask_token_id"] == N_TOKENS and saved["vocab_size"] == ROWS
    drafter, mask_token_id, shifted = load_diffusion_model(out)  # mask id and shift from the checkpoint
    assert (mask_token_id, shifted) == (N_TOKENS, True)
    check_bidirectional(drafter)  # raises if position 0 ignores later tokens
    assert len(drafter.model.layers) == 1
    source = verifier.state_dict()
    for name, tensor in drafter.state_dict().items():
        if name.startswith("model.layers.") or name == "model.norm.weight":
            assert torch.equal(tensor, source[name]), name
    embed = source["model.embed_tokens.weight"]
    torch.testing.assert_close(drafter.model.embed_tokens.weight[N_TOKENS], embed[:N_TOKENS].mean(0))
    torch.testing.assert_close(drafter.lm_head.weight[N_TOKENS], source["lm_head.weight"][:N_TOKENS].mean(0))
    spare = [i for i in range(ROWS) if i != N_TOKENS]
    assert torch.equal(drafter.model.embed_tokens.weight[spare], embed[spare])  # every other row as it was

    drafter_tokenizer = AutoTokenizer.from_pretrained(out)
    assert (drafter_tokenizer.mask_token, drafter_tokenizer.mask_token_id) == (MASK_TOKEN, N_TOKENS)
    check_tokenizers_compatible(drafter_tokenizer, AutoTokenizer.from_pretrained(verifier_dir))

    # align: 2 steps of full fine-tuning, with the verifier online as the KL teacher (checks vocab and tokenizers)
    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "prompt_ids": torch.randint(3, N_TOKENS, (4,), generator=g).tolist(),
            "completion_ids": torch.randint(3, N_TOKENS, (6,), generator=g).tolist(),
        }
        for _ in range(4)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    aligned = tmp_path / "aligned"
    argv = [
        "--drafter_name_or_path", str(out), "--verifier_name_or_path", str(verifier_dir),
        "--dataset_path", str(data), "--output_dir", str(aligned),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--block_ce_weight", "1", "--kl_weight", "1", "--block_size", "4", "--anchors_per_sequence", "2",
        "--save_strategy", "no", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
        "--eval_k_min", "2", "--eval_k_max", "6",
    ]  # fmt: skip
    trainer = load_train_script().main(*parse_config(argv))
    assert trainer.state.global_step == 2 and type(trainer.teacher).__name__ == "OnlineTeacher"
    # the folder recommends its evaluation's decoding, which from_pretrained uses when given no config
    recommended = DecodeConfig(adl=ADLConfig(k_min=2, k_max=6), draft_length=6)
    assert read_diffuspec_config(aligned).decode_config() == recommended

    drafter = DiffusionDrafter.from_pretrained(aligned)
    assert (drafter.mask_token_id, drafter.shifted) == (N_TOKENS, True)
    verifier64 = verifier.to(torch.float64)
    decoder = SpeculativeDecoder(verifier64, drafter, DecodeConfig(adl=ADLConfig(k_min=2, k_max=6, delta=2)))
    prompt = torch.tensor([5, 9, 14, 22])
    out_ids = decoder.generate(prompt, max_new_tokens=20)
    expected = reference_greedy(verifier64, prompt, 20, eos=(EOS,))
    assert out_ids.sequences[0].tolist() == expected.tolist()  # lossless: the verifier's greedy output
    assert sum(out_ids.stats.draft_lengths) > 0  # the drafter did draft


def test_vocab_size_pads_to_the_verifiers_row_count(verifier_dir, tmp_path):
    """Qwen2.5-0.5B has 151,936 rows, Qwen2.5-7B 152,064: the drafter is padded to the verifier's size."""
    out = tmp_path / "padded"
    argv = ["--model", str(verifier_dir), "--output_dir", str(out), "--num_layers", "1", "--vocab_size", "80"]
    result = load_adapt_script().main(argv)
    assert result.vocab_size == 80 and result.mask == MaskChoice(MASK_TOKEN, N_TOKENS, "spare_row")
    drafter, mask_token_id, _ = load_diffusion_model(out)
    assert mask_token_id == N_TOKENS and drafter.config.vocab_size == 80
    source = AutoModelForCausalLM.from_pretrained(verifier_dir).state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weight, before = drafter.state_dict()[name], source[name]
        assert torch.equal(weight[:N_TOKENS], before[:N_TOKENS]) and torch.equal(weight[41:ROWS], before[41:])
        mean = before[:N_TOKENS].mean(0)
        torch.testing.assert_close(weight[[N_TOKENS, *range(ROWS, 80)]], mean.expand(1 + 80 - ROWS, -1))


def test_adapt_keeps_the_tokenizers_own_mask_token(tmp_path):
    folder = tmp_path / "ar"
    model = tiny_qwen2(seed=12, vocab_size=ROWS, hidden_size=32, num_layers=2, init_std=0.3)
    model.save_pretrained(folder)
    make_tokenizer({"<mask>": N_TOKENS}, mask_token="<mask>").save_pretrained(folder)
    result = adapt_and_save(folder, tmp_path / "out", dtype="float64")
    assert result.mask == MaskChoice("<mask>", N_TOKENS, "tokenizer") and result.num_layers == 2
    drafter, mask_token_id, _ = load_diffusion_model(tmp_path / "out")
    assert mask_token_id == N_TOKENS and drafter.dtype == torch.float64
    embed = model.model.embed_tokens.weight.to(torch.float64)
    assert torch.equal(drafter.model.embed_tokens.weight, embed)  # its own (trained) row is kept as is


def test_smollm2_like_gguf_adapts_within_its_vocabulary_and_decodes_losslessly(tmp_path):
    """SmolLM2's layout (a converted GGUF whose 600 ids are all tokens): the documented command takes the unused
    ``<empty_output>`` as the mask, so the drafter has the verifier's vocabulary and the one-liner decodes with it
    exactly as greedy ``generate`` does."""
    pytest.importorskip("gguf")
    from gguf_files import write_tiny_llama_gguf

    from diffuspec.models.packaged import convert_gguf

    (tmp_path / "gguf").mkdir()
    verifier_dir = convert_gguf(write_tiny_llama_gguf(tmp_path / "gguf" / "tiny.gguf"), tmp_path / "verifier")
    rows = json.loads((verifier_dir / "config.json").read_text())["vocab_size"]
    tokenizer = AutoTokenizer.from_pretrained(verifier_dir)
    assert len(tokenizer) == rows  # no spare row
    out = tmp_path / "adapted"
    result = load_adapt_script().main(["--model", str(verifier_dir), "--num_layers", "1", "--output_dir", str(out)])
    mask_id = tokenizer.convert_tokens_to_ids("<empty_output>")
    assert result.mask == MaskChoice("<empty_output>", mask_id, "special_token") and result.vocab_size == rows
    assert "<empty_output>" in result.summary() and "unused special token" in result.summary()

    decoder = SpeculativeDecoder.from_pretrained(verifier_dir, out)  # no config
    assert decoder.drafter.vocab_size == rows and decoder.drafter.mask_token_id == mask_id
    ids = tokenizer("Translate the following sentence", return_tensors="pt").input_ids
    generated = decoder.generate(ids, max_new_tokens=16)
    expected = decoder.verifier.model.generate(ids, max_new_tokens=16, do_sample=False)
    assert generated.sequences.tolist() == expected.tolist()
    assert sum(generated.stats.draft_lengths) > 0


@pytest.fixture
def weightless(tmp_path) -> Path:
    """config.json and tokenizer only: a check that needed the weights would fail with another error."""
    folder = tmp_path / "weightless"
    tiny_qwen2(vocab_size=ROWS, hidden_size=32, num_layers=2).config.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | fields))


@pytest.mark.parametrize(
    "setup, flags, error, match",
    [
        (None, ["--num_layers", "0"], ValueError, r"num_layers=0 is out of range: .* has 2 decoder layers"),
        (None, ["--num_layers", "3"], ValueError, r"num_layers=3 is out of range"),
        (None, ["--vocab_size", "63"], ValueError, r"vocab_size=63 is smaller than the 64 embedding rows"),
        ({"architectures": ["Qwen2ForSequenceClassification"]}, [], ValueError, "not a causal LM"),
        ({"is_causal": False}, [], ValueError, "already has bidirectional attention"),
        ({"model_type": "Dream", "architectures": ["DreamModel"]}, [], ValueError, "not a transformers causal LM"),
        ("no_tokenizer", [], ValueError, "has no tokenizer files"),
        ("busy_output", [], FileExistsError, "exists and is not empty"),
    ],
)
def test_bad_input_is_refused_before_weights_load(weightless, tmp_path, setup, flags, error, match):
    out = tmp_path / "out"
    if isinstance(setup, dict):
        edit_config(weightless, **setup)
    elif setup == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (weightless / name).unlink()
    elif setup == "busy_output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    with pytest.raises(error, match=match):
        load_adapt_script().main(["--model", str(weightless), "--output_dir", str(out), *flags])
    assert setup == "busy_output" or not out.exists()


def test_busy_output_is_refused_before_the_model_is_even_looked_up(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(FileExistsError, match=str(tmp_path / "out")):
        adapt_and_save(tmp_path / "no_such_model", tmp_path / "out")


def test_other_model_types_are_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    make_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        adapt_and_save(tmp_path, tmp_path / "out")
