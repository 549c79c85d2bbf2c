"""T = 0: speculative output equals plain greedy decoding token for token, whatever the drafter does."""

import torch
from conftest import VOCAB, OracleDrafter, cps_variant, greedy_with_eos_at
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from diffuspec import (
    ADLConfig,
    AutoregressiveDrafter,
    DecodeConfig,
    DiffusionDrafter,
    PromptLookupDrafter,
    SpeculativeDecoder,
)
from diffuspec.decoding.proxy import NGramProxy
from diffuspec.models.tiny import tiny_qwen2

_PROXY = NGramProxy.fit([list(range(VOCAB)) * 2, [1, 2, 3, 1, 2, 3, 4]], vocab_size=VOCAB, order=3)


def _drafter(kind: str, verifier, dlm):
    if kind == "identical":
        return OracleDrafter(verifier, noise=0.0)
    if kind == "partial":
        return OracleDrafter(verifier, noise=0.3, seed=7)
    if kind == "diffusion":
        return DiffusionDrafter(dlm, mask_token_id=VOCAB - 1, shifted=True)
    if kind == "diffusion_unshifted_s2":
        return DiffusionDrafter(dlm, mask_token_id=VOCAB - 1, shifted=False, steps=2, context_window=5)
    if kind == "prompt_lookup":
        return PromptLookupDrafter(max_ngram=2)
    ar = tiny_qwen2(seed=5, vocab_size=VOCAB, hidden_size=32, num_layers=1, init_std=0.3, dtype=torch.float64)
    return AutoregressiveDrafter(ar)


@settings(
    max_examples=220,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["identical", "partial", "diffusion", "diffusion_unshifted_s2", "prompt_lookup", "ar"]),
    prompt=st.lists(st.integers(0, VOCAB - 2), min_size=1, max_size=12),
    k=st.integers(1, 40),
    cps=st.sampled_from([None, "argmax", "beam", "dp"]),
    adl=st.booleans(),
    max_new=st.integers(1, 48),
    eos_at=st.one_of(st.none(), st.integers(0, 47)),
)
def test_greedy_equals_plain_decoding(verifier, dlm, kind, prompt, k, cps, adl, max_new, eos_at):
    prompt = torch.tensor(prompt)
    expected, eos = greedy_with_eos_at(verifier, prompt, max_new, eos_at)
    cps_config = cps_variant(cps, _PROXY)
    adl_config = ADLConfig(k_min=max(1, k - 10), k_max=k, delta=3) if adl else None
    config = DecodeConfig(cps=cps_config, adl=adl_config, draft_length=k)
    decoder = SpeculativeDecoder(verifier, _drafter(kind, verifier, dlm), config)
    out = decoder.generate(prompt, max_new_tokens=max_new, eos_token_id=list(eos) if eos else [])

    assert out.sequences[0].tolist() == expected.tolist()
    stats = out.stats
    assert stats.new_tokens == expected.numel() - prompt.numel() <= max_new
    assert sum(stats.accepted) + stats.rounds >= stats.new_tokens  # each round adds accepted + at most one
    assert all(0 <= a <= p for a, p in zip(stats.accepted, stats.path_lengths, strict=True))


def test_plain_decoder_matches_transformers_generate(verifier):
    prompt = torch.tensor([[5, 9, 2, 7]])
    ours = SpeculativeDecoder(verifier).generate(prompt, max_new_tokens=30, eos_token_id=[])
    theirs = verifier.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.sequences.tolist() == theirs.tolist()


def test_identical_drafter_accepts_everything(verifier):
    decoder = SpeculativeDecoder(verifier, OracleDrafter(verifier), DecodeConfig(cps=None, adl=None, draft_length=7))
    out = decoder.generate(torch.tensor([3, 4, 5]), max_new_tokens=32, eos_token_id=[])
    assert out.stats.accepted[:4] == [7, 7, 7, 7]
    assert out.stats.tau == 32 / out.stats.rounds == 8.0


def test_verifier_never_reencodes_accepted_tokens(verifier, dlm):
    prompt = torch.tensor([1, 2, 3, 4, 5, 6])
    decoder = SpeculativeDecoder(
        verifier, DiffusionDrafter(dlm, VOCAB - 1), DecodeConfig(cps=None, adl=None, draft_length=5)
    )
    out = decoder.generate(prompt, max_new_tokens=40, eos_token_id=[])
    lengths = decoder.verifier.forward_lengths
    assert lengths[0] == prompt.numel() - 1  # prefill: every prompt token but the pending one
    # each round feeds the pending token plus its path, and nothing else
    assert lengths[1:] == [1 + m for m in out.stats.path_lengths]
    # at the start of the last round the cache held exactly the committed tokens but the pending one
    committed_before_last = prompt.numel() + sum(out.stats.accepted[:-1]) + out.stats.rounds - 1
    assert decoder.verifier._committed == committed_before_last - 1
