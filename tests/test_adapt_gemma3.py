"""Adapting a Gemma-3 text model (gemma3_text): the drafter keeps transformers' own Gemma-3 class, so its scaled
embedding, (1 + w) RMSNorms, sandwich norms, sliding layers and final logit soft-capping are the verifier's; in
causal mode it computes exactly transformers' Gemma-3 forward up to the layers it keeps, with full attention it is
bidirectional, and it decodes with its verifier through the public API exactly as greedy ``generate`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from diffuspec import DiffusionDrafter, SpeculativeDecoder
from diffuspec.loading import load_diffusion_model
from diffuspec.models.adapt import MaskChoice, adapt_and_save

ROWS, EOS, SOFTCAP, KEEP = 64, 1, 5.0, 2
ROLES = {"<pad>": 0, "<eos>": EOS, "<bos>": 2, "<unk>": 3}
TURNS = ["<start_of_turn>", "<end_of_turn>"]  # in the chat template: never the mask
UNUSED = ["<unused0>", "<unused1>"]  # special tokens no chat uses: the highest becomes the mask
MASK = len(ROLES) + len(TURNS) + len(UNUSED) - 1
PROMPTS = ([7, 9, 12, 40], [20, 21, 22, 23, 24, 25, 26])  # the second is longer than the sliding window


def gemma_tokenizer() -> PreTrainedTokenizerFast:
    """Every one of the 64 embedding rows is a token (no spare row), as in Gemma-3's and SmolLM2's vocabularies."""
    specials = [*ROLES, *TURNS, *UNUSED]
    vocab = {token: i for i, token in enumerate(specials)} | {f"w{i}": i for i in range(len(specials), ROWS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>", bos_token="<bos>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": TURNS + UNUSED})
    tokenizer.chat_template = (
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    )
    return tokenizer


def tiny_gemma3() -> Gemma3ForCausalLM:
    """Three layers (sliding, full, sliding; window 4), soft-capped logits, weights wide enough for sharp argmaxes."""
    config = Gemma3TextConfig(
        vocab_size=ROWS, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], final_logit_softcapping=SOFTCAP,
        max_position_embeddings=256, eos_token_id=EOS, bos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def adapted(tmp_path_factory) -> tuple[Gemma3ForCausalLM, Path, Path]:
    """(verifier, its folder, the adapted folder: its first two layers)."""
    root = tmp_path_factory.mktemp("gemma3")
    tiny_gemma3().save_pretrained(root / "verifier")
    gemma_tokenizer().save_pretrained(root / "verifier")
    # loaded as the decoder loads it: built in float64, the embedding scale sqrt(32) is not float32's
    verifier = Gemma3ForCausalLM.from_pretrained(root / "verifier").eval()
    result = adapt_and_save(root / "verifier", root / "drafter", num_layers=KEEP)
    assert result.mask == MaskChoice("<unused1>", MASK, "special_token") and result.vocab_size == ROWS
    return verifier, root / "verifier", root / "drafter"


def set_causal(model, causal: bool) -> None:
    model.config.is_causal = causal
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = causal


def test_the_folder_is_a_native_gemma3_drafter(adapted):
    _, _, folder = adapted
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["is_causal"] is False
    assert config["num_hidden_layers"] == KEEP and config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config["final_logit_softcapping"] == SOFTCAP
    assert json.loads((folder / "diffuspec_config.json").read_text())["mask_token_id"] == MASK
    assert AutoTokenizer.from_pretrained(folder).mask_token_id == MASK


def test_causal_mode_is_transformers_gemma3_forward_up_to_the_kept_layers(adapted):
    """The reference is the verifier's own forward: its hidden state after layer KEEP, its final norm, its head and
    the soft-cap tanh(x / c) * c, computed here by hand."""
    verifier, _, folder = adapted
    drafter, mask_token_id, shifted = load_diffusion_model(folder)
    assert type(drafter) is Gemma3ForCausalLM and (mask_token_id, shifted) == (MASK, True)
    ids = torch.tensor([[7, 9, 12, 40, 22, 33, 11, 9, 50]])  # longer than the window
    with torch.no_grad():
        bidirectional = drafter(input_ids=ids).logits
        set_causal(drafter, True)
        causal = drafter(input_ids=ids).logits
        states = verifier(input_ids=ids, output_hidden_states=True).hidden_states[KEEP]
        reference = torch.tanh(verifier.lm_head(verifier.model.norm(states)) / SOFTCAP) * SOFTCAP
    torch.testing.assert_close(causal, reference, rtol=0, atol=1e-12)
    assert not torch.allclose(bidirectional[0, 0], causal[0, 0])  # with full attention, position 0 reads ahead


def test_decodes_like_greedy_generate_through_the_public_api(adapted):
    verifier, verifier_folder, folder = adapted
    decoder = SpeculativeDecoder.from_pretrained(verifier_folder, folder)  # no config: ADL within no block
    assert isinstance(decoder.drafter, DiffusionDrafter) and decoder.drafter.mask_token_id == MASK
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out = decoder.generate(ids, max_new_tokens=24)
        expected = verifier.generate(ids, max_new_tokens=24, do_sample=False)
        assert out.sequences.tolist() == expected.tolist()
        assert sum(out.stats.draft_lengths) > 0  # the drafter did draft
