"""Bad input is refused before any work, with the offending value named."""

import pytest
import torch
from conftest import VOCAB

from diffuspec import ADLConfig, CPSConfig, DecodeConfig, DiffusionDrafter, SpeculativeDecoder
from diffuspec.models.tiny import tiny_qwen2


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: CPSConfig(mass=0.0), "mass must be in"),
        (lambda: CPSConfig(mass=1.5), "mass must be in"),
        (lambda: CPSConfig(beam=0), "beam must be >= 1"),
        (lambda: CPSConfig(lam=-0.1), "lam must be in"),
        (lambda: CPSConfig(lam=1.1), "lam must be in"),
        (lambda: CPSConfig(m_max=0), "m_max"),
        (lambda: CPSConfig(search="greedy"), "search"),
        (lambda: CPSConfig(proxy=object()), "proxy"),
        (lambda: ADLConfig(k_min=31, k_max=30), r"k_min \(31\) must be <= k_max \(30\)"),
        (lambda: ADLConfig(rho=0.0), "rho"),
        (lambda: DecodeConfig(draft_length=0), "draft_length must be >= 1"),
    ],
)
def test_invalid_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mask_token_outside_vocabulary(dlm):
    with pytest.raises(ValueError, match=f"mask_token_id {VOCAB} is outside"):
        DiffusionDrafter(dlm, mask_token_id=VOCAB)


def test_causal_drafter_refused(verifier):
    with pytest.raises(ValueError, match="is causal"):
        DiffusionDrafter(verifier, mask_token_id=0)


def test_vocabulary_mismatch(verifier):
    other = tiny_qwen2(vocab_size=VOCAB + 5, hidden_size=32, num_layers=1, causal=False)
    with pytest.raises(ValueError, match=rf"drafter vocabulary \({VOCAB + 5} ids\) differs"):
        SpeculativeDecoder(verifier, DiffusionDrafter(other, mask_token_id=0))


@pytest.mark.parametrize(
    "prompt,kwargs,match",
    [
        (torch.tensor([], dtype=torch.long), {}, "at least one token"),
        (torch.tensor([[1, 2], [3, 4]]), {}, "batch size must be 1"),
        (torch.tensor([1, 2]), {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        (torch.tensor([1, 2]), {"temperature": -1.0}, "temperature"),
        (torch.tensor([1, 2]), {"top_p": 0.0}, "top_p"),
        (torch.tensor([1, VOCAB]), {}, "outside the verifier vocabulary"),
        (torch.tensor([1, 2]), {"max_new_tokens": 5000}, "exceeds the verifier's context of 2048"),
    ],
)
def test_bad_requests(verifier, dlm, prompt, kwargs, match):
    decoder = SpeculativeDecoder(verifier, DiffusionDrafter(dlm, mask_token_id=VOCAB - 1))
    calls = []
    decoder.verifier.start = lambda *a: calls.append(a)  # no work may start before the check
    with pytest.raises(ValueError, match=match):
        decoder.generate(prompt, **kwargs)
    assert calls == []


def test_drafter_context_is_checked(verifier):
    short = tiny_qwen2(vocab_size=VOCAB, hidden_size=32, num_layers=1, causal=False, max_position_embeddings=64)
    decoder = SpeculativeDecoder(verifier, DiffusionDrafter(short, 0), DecodeConfig(adl=ADLConfig(k_min=5, k_max=10)))
    with pytest.raises(ValueError, match="drafter's context of 64"):
        decoder.generate(torch.tensor([1, 2, 3]), max_new_tokens=60)


def test_from_pretrained_offline_fails_at_once(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match="Hub is unreachable"):
        SpeculativeDecoder.from_pretrained(
            verifier="Qwen/Qwen2.5-7B-Instruct", drafter="Dream-org/Dream-v0-Instruct-7B"
        )
    assert time.perf_counter() - start < 10


def test_from_pretrained_names_an_unknown_loader():
    with pytest.raises(ValueError, match=r"no pretrained loader 'nope'; registered: \['diffuspec'\]"):
        SpeculativeDecoder.from_pretrained("verifier", loader="nope")
