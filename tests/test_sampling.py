"""T > 0: the distribution of generated sequences equals the verifier's processed distribution."""

import itertools
import math

import pytest
import torch
from conftest import OracleDrafter

from diffuspec import CPSConfig, DecodeConfig, DiffusionDrafter, SpeculativeDecoder
from diffuspec.decoding import acceptance
from diffuspec.decoding.acceptance import process_logits
from diffuspec.models.tiny import tiny_qwen2

V, NEW, N = 6, 2, 3000
PROMPT = torch.tensor([1, 4, 2])


def exact_distribution(model, temperature, top_k, top_p) -> dict[tuple[int, ...], float]:
    """Probability of every continuation of length NEW under AR sampling from the processed verifier."""
    dist = {}
    with torch.no_grad():
        for seq in itertools.product(range(V), repeat=NEW):
            ids, p = PROMPT.clone(), 1.0
            for token in seq:
                probs = process_logits(model(input_ids=ids[None]).logits[0, -1], temperature, top_k, top_p)
                p *= float(probs[token])
                ids = torch.cat([ids, torch.tensor([token])])
            dist[seq] = p
    return dist


def sampled_tv(decoder, exact, temperature, top_k, top_p, seed=0) -> float:
    generator = torch.Generator().manual_seed(seed)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(N):
        out = decoder.generate(
            PROMPT,
            max_new_tokens=NEW,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            eos_token_id=[],
        )
        key = tuple(out.sequences[0, PROMPT.numel() :].tolist())
        counts[key] = counts.get(key, 0) + 1
    return 0.5 * sum(abs(counts.get(s, 0) / N - p) for s, p in exact.items())


def tv_bound(support: int, n: int, delta: float = 1e-6) -> float:
    """E[TV] <= 1/2 sqrt(K/N) (Cauchy-Schwarz); one sample moves TV by at most 1/N, so McDiarmid adds
    sqrt(ln(1/delta) / 2N) for a false-alarm probability of at most delta."""
    return 0.5 * math.sqrt(support / n) + math.sqrt(math.log(1 / delta) / (2 * n))


@pytest.fixture(scope="module")
def small():
    verifier = tiny_qwen2(seed=3, vocab_size=V, hidden_size=32, num_layers=1, init_std=0.5, dtype=torch.float64)
    dlm = tiny_qwen2(seed=4, vocab_size=V, hidden_size=32, num_layers=1, causal=False, init_std=0.5)
    return verifier, dlm


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 4, 0.9)])
def test_speculative_sampling_matches_verifier_distribution(small, temperature, top_k, top_p):
    verifier, _ = small
    exact = exact_distribution(verifier, temperature, top_k, top_p)
    drafter = OracleDrafter(verifier, noise=0.5, seed=1)  # drafts that are often, but not always, likely
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=CPSConfig(lam=1.0), adl=None, draft_length=3))
    tv = sampled_tv(decoder, exact, temperature, top_k, top_p)
    assert tv < tv_bound(len(exact), N), tv


def test_diffusion_drafter_sampling_is_exact(small):
    verifier, dlm = small
    exact = exact_distribution(verifier, 1.0, None, None)
    drafter = DiffusionDrafter(dlm.to(torch.float64), mask_token_id=V - 1, shifted=True)
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=None, adl=None, draft_length=2))
    assert sampled_tv(decoder, exact, 1.0, None, None, seed=1) < tv_bound(len(exact), N)


def test_the_bound_catches_a_biased_sampler(small, monkeypatch):
    """Accepting every draft token (no coin) is not exact; the test statistic must notice."""
    verifier, _ = small
    exact = exact_distribution(verifier, 1.0, None, None)

    def always_accept(path, probs, generator=None):
        return path.numel(), int(torch.multinomial(probs[path.numel()], 1, generator=generator))

    monkeypatch.setattr("diffuspec.decoding.loop.sample_accept", always_accept)
    decoder = SpeculativeDecoder(
        verifier, OracleDrafter(verifier, noise=0.5, seed=1), DecodeConfig(cps=None, adl=None, draft_length=3)
    )
    assert sampled_tv(decoder, exact, 1.0, None, None) > tv_bound(len(exact), N)


def test_process_logits_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(process_logits(logits, 1.0), torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(process_logits(logits, 1.0, top_k=2), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    # top_p = 0.8 keeps 0.5 and 0.3 (mass before 0.15 is 0.8, which reaches top_p)
    assert torch.allclose(process_logits(logits, 1.0, top_p=0.8), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(process_logits(logits, 1.0, top_p=0.81), torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    sharp = process_logits(logits, 0.5)
    assert torch.allclose(sharp, torch.tensor([0.25, 0.09, 0.0225, 0.0025]) / 0.365)


def test_point_mass_rule_is_exact_in_closed_form():
    """P(emit v) = p(v) for every v, computed from the rule itself: accept x w.p. p(x), else residual."""
    p = torch.tensor([0.1, 0.6, 0.3])
    for x in range(3):
        residual = p.clone()
        residual[x] = 0
        residual /= residual.sum()
        emitted = (1 - p[x]) * residual
        emitted[x] += p[x]
        assert torch.allclose(emitted, p)
    assert acceptance.sample_accept(torch.tensor([1]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])) == (1, 0)
