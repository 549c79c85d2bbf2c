"""adapt_ar_to_diffusion: a truncated bidirectional copy with a mask token; the source model is untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from diffuspec.models.adapt import adapt_ar_to_diffusion
from diffuspec.models.loading import load_diffusion_model, save_dream_format
from diffuspec.models.tiny import tiny_qwen2

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
