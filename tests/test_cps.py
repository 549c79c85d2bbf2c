"""CPS: pruning rules, the lam = 1 / no-proxy shortcut, and beam and DP against a brute-force search."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffuspec.decoding.config import CPSConfig
from diffuspec.decoding.cps import causal_path_search, prune
from diffuspec.decoding.lattice import Lattice
from diffuspec.decoding.proxy import NGramProxy, UniformProxy

VOCAB = 12
_rng = random.Random(0)
_CORPUS = [[_rng.choice([0, 1, 2, 3, _rng.randrange(VOCAB)]) for _ in range(_rng.randint(1, 30))] for _ in range(40)]
PROXIES = {
    "bigram": NGramProxy.fit(_CORPUS, VOCAB, order=2),
    "trigram": NGramProxy.fit(_CORPUS, VOCAB, order=3),
    "uniform": UniformProxy(VOCAB),
}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- independent reference --------------------------------------------------------------------------------------


def brute_force(candidates, context, proxy, eos, lam, length_norm):
    """Every terminal path (ends at its first EOS, or runs the full length) with its score, full context."""
    terminals = []

    def walk(path, score):
        if len(path) == len(candidates) or (path and path[-1] in eos):
            rank = score / len(path) if length_norm == "mean" and path else score
            terminals.append((rank, path))
            return
        ids, logqs = candidates[len(path)]
        for v, logq in zip(ids, logqs, strict=True):
            walk(path + [v], score + lam * logq + (1 - lam) * proxy.logprob(list(context) + path, v))

    walk([], 0.0)
    return terminals


def score_of(path, terminals):
    return dict((tuple(p), r) for r, p in terminals)[tuple(path)]


# -- random lattices --------------------------------------------------------------------------------------------


@st.composite
def lattices(draw, max_k=5, max_width=4):
    k = draw(st.integers(1, max_k))
    vocab = draw(st.integers(2, VOCAB))
    width = draw(st.integers(1, min(max_width, vocab)))
    eos = draw(st.lists(st.integers(0, vocab - 1), max_size=2, unique=True))
    logits = torch.tensor(draw(st.lists(st.floats(-4, 4), min_size=k * vocab, max_size=k * vocab))).view(k, vocab)
    for i in range(k):
        if eos and draw(st.booleans()):  # random EOS placement: make an EOS the slot's argmax
            logits[i, draw(st.sampled_from(eos))] = 6.0
        if draw(st.booleans()):  # a few impossible ids
            logits[i, draw(st.integers(0, vocab - 1))] = -math.inf
    logits[:, 0] = logits[:, 0].clamp(min=-4)  # at least one finite id per slot
    return Lattice.from_logprobs(torch.log_softmax(logits, dim=-1), width, eos)


configs = st.builds(
    CPSConfig,
    m_max=st.integers(1, 4),
    mass=st.floats(0.2, 1.0),
    lam=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
    length_norm=st.sampled_from(["none", "mean"]),
    truncate_at_raw_eos=st.booleans(),
)
contexts = st.lists(st.integers(0, VOCAB - 1), max_size=4)


def _reference(lattice, context, config, proxy):
    if config.truncate_at_raw_eos:
        lattice = lattice.truncate(lattice.eos_aware_length() + 1)
    candidates = prune(lattice, config.mass, config.m_max)
    return brute_force(candidates, context, proxy, set(lattice.eos_token_ids), config.lam, config.length_norm)


# -- exactness --------------------------------------------------------------------------------------------------


@SETTINGS
@given(lattices(), contexts, configs, st.sampled_from(sorted(PROXIES)))
def test_dp_is_exact(lattice, context, config, proxy_name):
    proxy = PROXIES[proxy_name]
    config.search = "dp"
    terminals = _reference(lattice, context, config, proxy)
    path = causal_path_search(lattice, context, config, proxy=proxy)
    assert score_of(path, terminals) == pytest.approx(max(r for r, _ in terminals), abs=1e-9)


@SETTINGS
@given(lattices(), contexts, configs, st.sampled_from(sorted(PROXIES)))
def test_wide_beam_is_exact(lattice, context, config, proxy_name):
    proxy = PROXIES[proxy_name]
    terminals = _reference(lattice, context, config, proxy)
    config.beam = len(terminals)  # nothing is ever pruned from the beam
    path = causal_path_search(lattice, context, config, proxy=proxy)
    assert score_of(path, terminals) == pytest.approx(max(r for r, _ in terminals), abs=1e-9)


class TableProxy:
    """A bigram with explicit log-probs; unlisted pairs get log(1e-3)."""

    order = 2

    def __init__(self, table):
        self.table = table

    def logprob(self, context, token):
        return self.table.get((context[-1] if len(context) else None, token), math.log(1e-3))


def test_narrow_beam_is_greedy_and_dp_is_not():
    # Slot 0 prefers 1 (0.6 vs 0.4) but the proxy only likes 3 after 2, so the best path is [2, 3].
    logprobs = torch.full((2, 4), -30.0)
    logprobs[0, 1], logprobs[0, 2] = math.log(0.6), math.log(0.4)
    logprobs[1, 3] = 0.0
    proxy = TableProxy({(None, 1): math.log(0.5), (None, 2): math.log(0.5), (2, 3): math.log(0.9)})
    greedy = CPSConfig(m_max=2, mass=0.99, beam=1, proxy=proxy)
    assert causal_path_search(logprobs, [], greedy) == [1, 3]
    assert causal_path_search(logprobs, [], CPSConfig(m_max=2, mass=0.99, beam=2, proxy=proxy)) == [2, 3]
    assert causal_path_search(logprobs, [], CPSConfig(m_max=2, mass=0.99, proxy=proxy, search="dp")) == [2, 3]


# -- EOS handling -----------------------------------------------------------------------------------------------


class RecordingProxy:
    def __init__(self, inner):
        self.inner, self.order, self.contexts = inner, inner.order, []

    def logprob(self, context, token):
        self.contexts.append(list(context))
        return self.inner.logprob(context, token)


@SETTINGS
@given(lattices(), st.sampled_from(["beam", "dp"]), st.sampled_from(["bigram", "trigram"]))
def test_no_path_is_extended_after_eos(lattice, search, proxy_name):
    eos = set(lattice.eos_token_ids)
    context = [v for v in range(VOCAB) if v not in eos][:3]
    proxy = RecordingProxy(PROXIES[proxy_name])
    path = causal_path_search(lattice, context, CPSConfig(mass=0.9, beam=2, search=search), proxy=proxy)
    assert 1 <= len(path) <= lattice.k
    assert not eos.intersection(path[:-1])
    # Every proxy query's context came from the committed context plus a path without EOS.
    assert all(not eos.intersection(c) for c in proxy.contexts)


def test_no_proxy_or_lam_one_is_argmax_cut_after_eos():
    logprobs = torch.log_softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), dim=-1)
    logprobs[2, 7] = 5.0  # slot 2's argmax is EOS 7
    draft = logprobs.argmax(dim=-1).tolist()
    assert draft[2] == 7
    assert causal_path_search(logprobs, [1, 2], CPSConfig(), eos_token_id=7) == draft[:3]
    lam_one = CPSConfig(lam=1.0, proxy=PROXIES["bigram"])
    assert causal_path_search(logprobs, [1, 2], lam_one, eos_token_id=[9, 7]) == draft[:3]
    assert causal_path_search(logprobs, [1, 2], CPSConfig()) == draft  # no EOS: the whole draft


def test_tensor_and_lattice_inputs_agree():
    logprobs = torch.log_softmax(torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(1)), dim=-1)
    config = CPSConfig(m_max=4, proxy=PROXIES["trigram"])
    lattice = Lattice.from_logprobs(logprobs, config.m_max, (5,))
    from_tensor = causal_path_search(logprobs, torch.tensor([1, 2, 3]), config, eos_token_id=5)
    assert from_tensor == causal_path_search(lattice, [1, 2, 3], config)
    assert all(isinstance(t, int) for t in from_tensor)
    with pytest.raises(ValueError, match="eos_token_id"):
        causal_path_search(lattice, [1], config, eos_token_id=6)


def test_edge_cases():
    proxy = PROXIES["bigram"]
    assert causal_path_search(torch.zeros(0, VOCAB), [1], CPSConfig(proxy=proxy)) == []
    no_order = TableProxy({})
    no_order.order = None
    with pytest.raises(ValueError, match="dp"):
        causal_path_search(torch.zeros(3, VOCAB), [1], CPSConfig(proxy=no_order, search="dp"))


# -- pruning ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(lattices(max_k=4, max_width=12), st.floats(0.05, 1.0), st.integers(1, 12))
def test_prune_respects_mass_cap_and_keeps_eos(lattice, mass, m_max):
    eos_lps = lattice.eos_logprobs.tolist()
    for i, (ids, logqs) in enumerate(prune(lattice, mass, m_max)):
        row = list(zip(lattice.ids[i].tolist(), lattice.logprobs[i].tolist(), strict=True))
        # Shortest best-first prefix whose mass reaches `mass`, capped at m_max.
        n = next((n for n in range(1, len(row) + 1) if sum(math.exp(lp) for _, lp in row[:n]) >= mass - 1e-6), len(row))
        n = min(n, m_max)
        if n > 1:
            assert sum(math.exp(lp) for _, lp in row[: n - 1]) < mass
        expected = row[:n] + [
            (e, lp) for e, lp in zip(lattice.eos_token_ids, eos_lps[i], strict=True) if e not in {t for t, _ in row[:n]}
        ]
        finite = [(t, lp) for t, lp in expected if lp > -math.inf]
        assert list(zip(ids, logqs, strict=True)) == (finite or expected[:1])
        assert 1 <= len(ids) == len(set(ids)) <= m_max + len(lattice.eos_token_ids)
        for e, lp in zip(lattice.eos_token_ids, eos_lps[i], strict=True):
            assert e in ids or lp == -math.inf  # EOS is always a candidate unless impossible


def test_prune_drops_impossible_candidates_but_keeps_one():
    lattice = Lattice.point_mass([4, 9, 4], eos_token_ids=(9,))
    assert prune(lattice, 0.8, 15) == [([4], [0.0]), ([9], [0.0]), ([4], [0.0])]
    hopeless = Lattice(
        ids=torch.tensor([[1, 2]]),
        logprobs=torch.full((1, 2), -math.inf),
        eos_logprobs=torch.full((1, 1), -math.inf),
        eos_token_ids=(3,),
        draft=torch.tensor([1]),
    )
    assert prune(hopeless, 0.8, 15) == [([1], [-math.inf])]
