"""Lossless decoding with the conditioned drafter: T = 0 equals plain greedy, T > 0 matches the verifier's law."""

import pytest
import torch
from conftest import VOCAB, cps_variant, greedy_with_eos_at, reference_greedy
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_sampling import PROMPT, N, V, exact_distribution, sampled_tv, tv_bound

from diffuspec import ADLConfig, DecodeConfig, Drafter, DraftRequest, Lattice, SpeculativeDecoder, TreeConfig
from diffuspec.decoding.proxy import NGramProxy
from diffuspec.drafters.conditioned import ConditionedDrafter
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel
from diffuspec.models.tiny import tiny_qwen2

_PROXY = NGramProxy.fit([list(range(VOCAB)) * 2, [1, 2, 3, 1, 2, 3, 4]], vocab_size=VOCAB, order=3)


def random_drafter(
    verifier, seed: int, layers: int, block_size: int, init_std: float = 0.3, stem: int = 0
) -> ConditionedDrafter:
    config = ConditionedDrafterConfig.for_verifier(
        verifier.config,
        mask_token_id=verifier.config.vocab_size - 1,
        num_hidden_layers=layers,
        block_size=block_size,
        feature_layers=[0, verifier.config.num_hidden_layers],
        initializer_range=init_std,
        stem_size=stem,
    )
    torch.manual_seed(seed)
    return ConditionedDrafter(ConditionedDrafterModel(config).to(verifier.dtype), verifier)


class SteeredConditionedDrafter(Drafter):
    """The conditioned drafter, with each slot replaced by the verifier's greedy token with probability ``steer``.

    A random drafter is almost never accepted, so its memory would only ever grow by one row per round. Steering
    makes rounds accept several tokens (several new memory rows), while the conditioned drafter still runs every
    round; each round its cached memory is also checked against a fresh drafter on the same request."""

    def __init__(self, drafter: ConditionedDrafter, verifier, steer: float, seed: int, check_memory: bool = True):
        # steer and the slot coins are independent of the verifier's coins, so any steer keeps T > 0 exact
        self.drafter, self.verifier, self.steer, self.check_memory = drafter, verifier, steer, check_memory
        self.feature_layers, self.vocab_size = drafter.feature_layers, drafter.vocab_size
        self.rng = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self.drafter.reset()

    def propose(self, request: DraftRequest) -> Lattice:
        full = DraftRequest(request.ids, request.k, self.vocab_size, request.eos_token_ids, request.features)
        lattice = self.drafter.propose(full)
        if self.check_memory:  # the cached memory gives what a fresh drafter computes from scratch
            torch.testing.assert_close(lattice.logprobs, ConditionedDrafter(self.drafter.model).propose(full).logprobs)
        logprobs = torch.full((request.k, self.vocab_size), float("-inf")).scatter(1, lattice.ids, lattice.logprobs)
        greedy = reference_greedy(self.verifier, request.ids, request.k)[request.ids.numel() :]
        for slot in torch.nonzero(torch.rand(request.k, generator=self.rng) < self.steer)[:, 0].tolist():
            logprobs[slot] = -20.0
            logprobs[slot, greedy[slot]] = 0.0
        return Lattice.from_logprobs(torch.log_softmax(logprobs, -1), request.width, request.eos_token_ids)


@settings(
    max_examples=80,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**16),
    layers=st.integers(1, 2),
    stem=st.sampled_from([0, 8]),
    steer=st.sampled_from([0.0, 0.6, 1.0]),
    prompt=st.lists(st.integers(0, VOCAB - 2), min_size=1, max_size=12),
    k=st.integers(1, 10),
    block_extra=st.integers(0, 3),
    cps=st.sampled_from([None, "argmax", "beam", "dp"]),
    adl=st.booleans(),
    max_new=st.integers(1, 40),
    eos_at=st.one_of(st.none(), st.integers(0, 39)),
    tree=st.sampled_from([None, TreeConfig(max_nodes=6, max_children=2), TreeConfig(max_nodes=16, max_children=3)]),
)
def test_greedy_with_conditioned_drafter_equals_plain_decoding(
    verifier, seed, layers, stem, steer, prompt, k, block_extra, cps, adl, max_new, eos_at, tree
):
    """Also with token trees (the tree's verifier features are compacted to the accepted branch) and an anchor stem
    (it reads the newest committed row); the drafter's cached memory is checked against a fresh drafter every
    round."""
    prompt = torch.tensor(prompt)
    expected, eos = greedy_with_eos_at(verifier, prompt, max_new, eos_at)
    cps_config = cps_variant(cps, _PROXY)
    adl_config = ADLConfig(k_min=max(1, k - 5), k_max=k, delta=2) if adl else None
    drafter = random_drafter(verifier, seed, layers, block_size=k + block_extra, stem=stem)
    steered = SteeredConditionedDrafter(drafter, verifier, steer, seed)
    config = DecodeConfig(cps=cps_config, adl=adl_config, draft_length=k, tree=tree)
    decoder = SpeculativeDecoder(verifier, steered, config)
    out = decoder.generate(prompt, max_new_tokens=max_new, eos_token_id=list(eos) if eos else [])

    assert out.sequences[0].tolist() == expected.tolist()
    stats = out.stats
    assert stats.new_tokens == expected.numel() - prompt.numel() <= max_new
    assert all(0 <= a <= p for a, p in zip(stats.accepted, stats.path_lengths, strict=True))
    if steer == 1.0 and cps is None and tree is None:  # every slot is the verifier's greedy token: all accepted
        assert stats.accepted == stats.path_lengths


def test_unsteered_drafter_is_lossless_and_its_memory_tracks_the_committed_ids(verifier):
    drafter = random_drafter(verifier, seed=11, layers=2, block_size=6)
    seen = []
    propose = drafter.propose
    drafter.propose = lambda request: seen.append(request.ids) or propose(request)
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=None, adl=None, draft_length=6))
    prompt = torch.tensor([4, 8, 15, 16, 23, 42])
    out = decoder.generate(prompt, max_new_tokens=30, eos_token_id=[])
    assert out.sequences[0].tolist() == reference_greedy(verifier, prompt, 30).tolist()
    # after the last round the memory covers exactly the ids of the last request but its newest token
    last = seen[-1]
    assert torch.equal(out.sequences[0, : last.numel()], last)
    assert drafter.memory.length == last.numel() - 1 and torch.equal(drafter.memory_ids, last[:-1])


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 4, 0.9)])
def test_conditioned_drafter_sampling_is_exact(temperature, top_k, top_p):
    """T > 0: the law of the generated pair equals AR sampling from the processed verifier. Half the slots are
    steered to the verifier's greedy token (mostly accepted), the rest are the random drafter's (mostly rejected),
    so both branches of the acceptance rule run; the TV bound is test_sampling's (false alarm <= 1e-6)."""
    verifier = tiny_qwen2(seed=3, vocab_size=V, hidden_size=32, num_layers=1, init_std=0.5, dtype=torch.float64)
    exact = exact_distribution(verifier, temperature, top_k, top_p)
    drafter = random_drafter(verifier, seed=4, layers=1, block_size=2, init_std=0.5)
    steered = SteeredConditionedDrafter(drafter, verifier, steer=0.5, seed=5, check_memory=False)
    decoder = SpeculativeDecoder(verifier, steered, DecodeConfig(cps=None, adl=None, draft_length=2))
    generator = torch.Generator().manual_seed(1)
    runs = [decoder.generate(PROMPT, 2, temperature, top_k, top_p, generator, eos_token_id=[]) for _ in range(100)]
    assert {0, 1} <= {run.stats.accepted[0] for run in runs}  # drafts are accepted and rejected
    tv = sampled_tv(decoder, exact, temperature, top_k, top_p, seed=2)
    assert tv < tv_bound(len(exact), N), tv
