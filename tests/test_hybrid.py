"""HybridDrafter: the select score, the merge rule, the copy as a tree branch, and exactness at T = 0 and T > 0."""

import dataclasses
import json
import math

import pytest
import test_sampling
import torch
from conftest import VOCAB, OracleDrafter, cps_variant, greedy_with_eos_at, reference_greedy
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_conditioned_lossless import random_drafter
from test_eval_harness import folders, tiny_config  # noqa: F401 - folders is a fixture
from test_lossless import _PROXY
from test_sampling import N, V, exact_distribution, sampled_tv, tv_bound

from diffuspec import (
    ADLConfig,
    DecodeConfig,
    DiffusionDrafter,
    Drafter,
    DraftRequest,
    HybridDrafter,
    Lattice,
    PromptLookupDrafter,
    SpeculativeDecoder,
    TreeConfig,
)
from diffuspec.decoding.cps import causal_path_search
from diffuspec.decoding.tree import build_tree
from diffuspec.drafters.hybrid import MODES, RunningRatio, expected_length, merge_copy, token_logprobs
from diffuspec.drafters.prompt_lookup import find_match
from diffuspec.evaluation import EvalConfig, evaluate
from diffuspec.models.tiny import tiny_qwen2


class FixedDrafter(Drafter):
    """Every slot puts ``confidence`` on ``token`` and spreads the rest evenly over the other ids."""

    def __init__(self, token: int, confidence: float, vocab_size: int = VOCAB):
        self.token, self.confidence, self.vocab_size = token, confidence, vocab_size

    def propose(self, request: DraftRequest) -> Lattice:
        probs = torch.full((request.k, self.vocab_size), (1 - self.confidence) / (self.vocab_size - 1))
        probs[:, self.token] = self.confidence
        return Lattice.from_logprobs(probs.log(), request.width, request.eos_token_ids)


def request(ids, k: int, width: int = 4, eos=()) -> DraftRequest:
    return DraftRequest(ids=torch.tensor(ids), k=k, width=width, eos_token_ids=tuple(eos))


REPEATING = [7, 8, 9, 1, 2, 3, 4, 7, 8, 9]  # its tail 7 8 9 recurs: the copy is 1 2 3 4, matched on 3 tokens


# ---------------------------------------------------------------- the pieces


def test_expected_length_is_the_chain_sum():
    assert expected_length(torch.log(torch.tensor([0.5, 0.5, 0.5]))) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_length(torch.tensor([0.0, float("-inf"), 0.0])) == 1.0  # nothing after a sure miss
    assert expected_length(torch.empty(0)) == 0.0


def test_find_match_is_prompt_lookup_with_its_match_length():
    ids = torch.tensor(REPEATING)
    for max_ngram, match in [(3, 3), (2, 2), (1, 1)]:
        lookup = PromptLookupDrafter(max_ngram=max_ngram)
        copy, size = find_match(ids, 4, 1, max_ngram)
        assert size == match and copy.tolist() == [1, 2, 3, 4]
        assert copy.tolist() == lookup.propose(request(REPEATING, 4)).draft.tolist()
    copy, size = find_match(torch.tensor([1, 2, 3]), 4, 1, 3)
    assert size == 0 and copy.numel() == 0


def brute_force_match(ids: list[int], k: int, min_ngram: int, max_ngram: int) -> tuple[list[int], int]:
    """The definition, slowly: the longest tail n-gram with an earlier occurrence, its earliest one's follow-up."""
    n = len(ids)
    for size in range(min(max_ngram, n - 1), min_ngram - 1, -1):
        for start in range(n - size):  # occurrences ending before the newest token
            if ids[start : start + size] == ids[n - size :]:
                return ids[start + size : start + size + k], size
    return [], 0


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.integers(0, 4), min_size=1, max_size=30),
    k=st.integers(1, 8),
    sizes=st.tuples(st.integers(1, 5), st.integers(0, 3)),
)
def test_find_match_is_the_definition(ids, k, sizes):
    min_ngram, max_ngram = sizes[0], sizes[0] + sizes[1]
    tokens, size = find_match(torch.tensor(ids), k, min_ngram, max_ngram)
    assert (tokens.tolist(), size) == brute_force_match(ids, k, min_ngram, max_ngram)


def test_token_logprobs_reads_ids_and_eos():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]])
    lattice = Lattice.from_logprobs(probs.log(), width=2, eos_token_ids=(2,))
    got = token_logprobs(lattice, torch.tensor([1, 2])).exp()
    torch.testing.assert_close(got, torch.tensor([0.3, 0.7]))
    assert token_logprobs(lattice, torch.tensor([2])).exp().item() == pytest.approx(0.1)  # EOS outside the top 2
    assert token_logprobs(lattice.truncate(1), torch.tensor([0])).item() == pytest.approx(math.log(0.6))


# ---------------------------------------------------------------- the merge rule


def test_merge_mixes_the_copy_in_and_keeps_a_confident_lattice():
    probs = torch.tensor(
        [
            [0.60, 0.20, 0.10, 0.05, 0.05],  # confident: 0 leads the copy (2) by 0.5 > w / (1 - w)
            [0.30, 0.25, 0.20, 0.15, 0.10],  # unsure: 0 leads the copy (1) by 0.05
            [0.10, 0.10, 0.10, 0.10, 0.60],  # beyond the copy: unchanged
        ]
    )
    lattice = Lattice.from_logprobs(probs.log(), width=5, eos_token_ids=(4,))
    w = 0.3
    merged = merge_copy(lattice, torch.tensor([2, 1]), w)
    assert merged.draft.tolist() == [0, 1, 4]
    assert [b.tolist() for b in merged.branches] == [[2, 1]]
    dense = torch.zeros(3, 5).scatter_add(1, merged.ids, merged.logprobs.exp())
    expected = probs.clone()
    expected[:2] *= 1 - w
    expected[0, 2] += w
    expected[1, 1] += w
    torch.testing.assert_close(dense, expected)  # the mixture, still a distribution per slot
    torch.testing.assert_close(merged.eos_logprobs.exp()[:, 0], expected[:, 4])

    assert merge_copy(lattice, torch.tensor([2, 1]), 0.0).draft.tolist() == [0, 0, 4]  # w = 0: the lattice
    assert merge_copy(lattice, torch.tensor([2, 1]), 1.0).draft.tolist() == [2, 1, 4]  # w = 1: the copy
    narrow = merge_copy(Lattice.from_logprobs(probs.log(), width=2), torch.tensor([3]), 0.4)
    top = narrow.logprobs[0].exp()
    assert narrow.ids[0, 0] == 3 and top[0].item() == pytest.approx(0.4)  # outside the top 2: q counts as 0
    assert top[1:].sum().item() == pytest.approx(0.6 * 0.8)  # the top 2 (0.6 + 0.2) at 1 - w


def test_merge_puts_an_eos_copy_into_the_eos_column():
    lattice = Lattice.from_logprobs(torch.tensor([[0.7, 0.2, 0.1]]).log(), width=1, eos_token_ids=(2,))
    merged = merge_copy(lattice, torch.tensor([2]), 0.5)
    assert merged.draft.tolist() == [2]
    assert merged.eos_logprobs[0, 0].exp().item() == pytest.approx(0.5 * 0.1 + 0.5)


def test_the_copy_is_its_own_tree_branch_whatever_its_score():
    probs = torch.full((4, 12), 0.01)
    probs[:, :3] = torch.tensor([0.5, 0.25, 0.16])  # three strong candidates per slot, the copy's tokens weak
    lattice = Lattice.from_logprobs(probs.log(), width=12)
    copy = torch.tensor([0, 9, 10, 11])  # shares its first token with the best path
    merged = merge_copy(lattice, copy, 0.01)
    config = TreeConfig(max_nodes=8, max_children=3)
    tree = build_tree(merged, [1, 2], config, path=merged.draft)
    node = -1
    for token in copy.tolist():
        node = tree.child(node, token)
        assert node is not None
    assert tree.size == 8 and len(tree.children) == tree.size  # the shared first token is one node, not two
    without = build_tree(dataclasses.replace(merged, branches=()), [1, 2], config, path=merged.draft)
    assert without.child(without.child(-1, 0), 9) is None  # on its score alone the copy would not be in the tree
    small = build_tree(merged, [1, 2], TreeConfig(max_nodes=2, max_children=3), path=merged.draft)
    assert small.size == 2  # the node budget holds


# ---------------------------------------------------------------- the select rule and its estimates


def test_select_takes_the_longer_expected_proposal():
    flat = HybridDrafter(FixedDrafter(5, 0.1), PromptLookupDrafter(max_ngram=3), mode="select")
    # copy: 0.75 + 0.75^2 + 0.75^3 + 0.75^4 = 2.05 tokens expected; lattice: 0.1 + 0.01 + ... = 0.11
    assert flat.propose(request(REPEATING, 4)).draft.tolist() == [1, 2, 3, 4]
    sure = HybridDrafter(FixedDrafter(5, 0.99), PromptLookupDrafter(max_ngram=3), mode="select", copy_margin=0)
    assert sure.propose(request(REPEATING, 4)).draft.tolist() == [5, 5, 5, 5]  # 3.94 tokens expected
    sure.reset()
    sure.copy_rate(3).num = 100.0  # a copy history of near-certain acceptance
    sure.copy_rate(3).den = 100.1
    assert sure.propose(request(REPEATING, 4)).draft.tolist() == [1, 2, 3, 4]
    sure.copy_margin = 1.0  # 3.99 against 3.94: not the token more the default margin asks for
    assert sure.propose(request(REPEATING, 4)).draft.tolist() == [5, 5, 5, 5]
    assert flat.propose(request([1, 2, 3], 4)).draft.tolist() == [5, 5, 5, 5]  # no match: the lattice


class CountingDrafter(FixedDrafter):
    """A FixedDrafter that counts its drafts."""

    def __init__(self, token: int, confidence: float):
        super().__init__(token, confidence)
        self.calls = 0

    def propose(self, request: DraftRequest) -> Lattice:
        self.calls += 1
        return super().propose(request)


def test_skip_margin_takes_a_strong_copy_without_drafting():
    drafter = CountingDrafter(5, 0.1)  # the lattice expects 0.11 tokens, the copy of REPEATING 2.05
    hybrid = HybridDrafter(drafter, PromptLookupDrafter(max_ngram=3), mode="select", skip_margin=1.0)
    first = hybrid.propose(request(REPEATING, 4))  # no drafted round yet: the draft, then the select rule
    assert drafter.calls == 1 and first.draft.tolist() == [1, 2, 3, 4]
    kappa = hybrid.calibration.value
    skipped = hybrid.propose(request(REPEATING, 4))  # 2.05 > 0.11 + 1: the copy, no draft
    assert drafter.calls == 1 and skipped.path.tolist() == [1, 2, 3, 4]
    assert skipped.eos_aware_length() == first.eos_aware_length() == 4  # ADL still follows the drafter's length
    assert hybrid.propose(request([1, 2, 3], 4)).draft.tolist() == [5, 5, 5, 5] and drafter.calls == 2  # no copy
    assert hybrid.calibration.value == kappa  # no drafted path was scored
    hybrid.skip_margin = 2.0  # 2.05 < 0.11 + 2: drafted again
    hybrid.propose(request(REPEATING, 4))
    assert drafter.calls == 3
    always = HybridDrafter(drafter, PromptLookupDrafter(max_ngram=3), mode="select")  # None: a draft every round
    for _ in range(3):
        always.propose(request(REPEATING, 4))
    assert drafter.calls == 6


def test_select_hands_the_loop_its_path_and_the_drafter_s_length():
    cps = cps_variant("dp", _PROXY)
    hybrid = HybridDrafter(FixedDrafter(5, 0.5), PromptLookupDrafter(max_ngram=3), mode="select", cps=cps)
    ids = [1, 2, 3]  # no match: the lattice, with the path CPS picked for it
    lattice = hybrid.propose(request(ids, 4))
    assert lattice.path.tolist() == causal_path_search(hybrid.drafter.propose(request(ids, 4)), torch.tensor(ids), cps)
    eos = VOCAB - 2
    hybrid = HybridDrafter(FixedDrafter(eos, 0.1), PromptLookupDrafter(max_ngram=3), mode="select")
    copy = hybrid.propose(request(REPEATING, 4, eos=(eos,)))  # the copy; the drafter's draft ends at once
    assert copy.path.tolist() == [1, 2, 3, 4] and copy.eos_aware_length() == 0
    assert copy.truncate(2).path.tolist() == [1, 2] and copy.truncate(2).eos_aware_length() == 0


class PathDrafter(Drafter):
    """A flat lattice handed over with a 2-token path, the verifier's own greedy tokens."""

    def __init__(self, verifier) -> None:
        self.verifier, self.vocab_size = verifier, VOCAB

    def propose(self, request: DraftRequest) -> Lattice:
        lattice = Lattice.from_logprobs(torch.zeros(request.k, VOCAB).log_softmax(-1), request.width)
        lattice.path = reference_greedy(self.verifier, request.ids, 2)[request.ids.numel() :][: request.k]
        return lattice


def test_the_loop_verifies_a_path_the_drafter_searched():
    verifier = tiny_qwen2(vocab_size=VOCAB, seed=3)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    config = DecodeConfig(cps=cps_variant("dp", _PROXY), draft_length=6)
    out = SpeculativeDecoder(verifier, PathDrafter(verifier), config).generate(
        prompt, max_new_tokens=12, eos_token_id=[]
    )
    assert out.sequences[0].tolist() == reference_greedy(verifier, prompt, 12).tolist()
    assert set(out.stats.path_lengths) == {2} and set(out.stats.accepted) == {2}  # the given path, never CPS's


def test_both_estimates_learn_from_the_committed_tokens():
    hybrid = HybridDrafter(FixedDrafter(5, 0.5), PromptLookupDrafter(max_ngram=3), mode="select")
    hybrid.propose(request(REPEATING, 4))  # copy 1 2 3 4 (match 3), lattice path 5 5 5 5
    hybrid.propose(request(REPEATING + [1, 2, 6], 4))  # two copied tokens confirmed, then a miss; path missed at once
    assert hybrid.copy_rate(3).value == pytest.approx((0.8 * 3 + 2) / (0.8 * 4 + 3))
    assert hybrid.calibration.value == pytest.approx((0.8 * 1 + 0) / (0.8 * 1 + 0.5 + 0.25 + 0.125))
    assert set(hybrid.copy_rates) == {3}
    hybrid.propose(request(REPEATING + [1, 2, 6, 5, 5], 4))  # no copy after "6"; the path: 2 of 2 confirmed
    kappa = (0.8 * (0.8 * 1) + 2) / (0.8 * (0.8 + 0.875) + 0.5 + 0.25)
    assert hybrid.calibration.value == pytest.approx(kappa)
    hybrid.reset()
    assert hybrid.calibration.value == 1.0 and hybrid.copy_rate(3).value == pytest.approx(0.75)


def test_running_ratio_decays_its_prior():
    ratio = RunningRatio(3.0, 4.0)
    for _ in range(30):
        ratio.update(0.0, 1.0)
    assert ratio.value < 0.01


def test_merge_mode_weighs_the_copy_by_its_rate():
    hybrid = HybridDrafter(FixedDrafter(5, 0.6), PromptLookupDrafter(max_ngram=3), mode="merge")
    lattice = hybrid.propose(request(REPEATING, 4, width=VOCAB))
    assert [b.tolist() for b in lattice.branches] == [[1, 2, 3, 4]]
    # w = 0.75 (the prior for a 3-token match): the copy's 0.75 + 0.25 q beats the lattice's 0.25 * 0.6
    assert lattice.draft.tolist() == [1, 2, 3, 4]
    assert lattice.logprobs[0, 0].exp().item() == pytest.approx(0.75 + 0.25 * 0.4 / (VOCAB - 1))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: HybridDrafter(FixedDrafter(5, 0.5), mode="both"),
            r"mode must be one of \['select', 'merge'\], got 'both'",
        ),
        (lambda: HybridDrafter(PromptLookupDrafter()), "needs a lattice drafter .* got PromptLookupDrafter"),
        (
            lambda: HybridDrafter(FixedDrafter(5, 0.5), lookup=FixedDrafter(1, 0.5)),
            "lookup must be a PromptLookupDrafter",
        ),
        (lambda: HybridDrafter(FixedDrafter(5, 0.5), cps={"lam": 1.0}), "cps must be a CPSConfig or None, got dict"),
        (lambda: HybridDrafter(FixedDrafter(5, 0.5), PromptLookupDrafter(max_ngram=0)), "min_ngram <= max_ngram"),
        (lambda: HybridDrafter(FixedDrafter(5, 0.5), mode="merge", skip_margin=1), "skip_margin .* select mode only"),
        (lambda: HybridDrafter(FixedDrafter(5, 0.5), skip_margin=-1), r"skip_margin \(>= 0 tokens\) .* got -1"),
        (
            lambda: merge_copy(Lattice.point_mass([1]), torch.tensor([1]), 1.5),
            r"merge weight must be in \[0, 1\], got 1.5",
        ),
    ],
)
def test_bad_input_is_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------- T = 0: plain greedy, whatever the hybrid does


def _lattice_drafter(kind: str, verifier, dlm, seed: int, k: int) -> Drafter:
    if kind == "diffusion":
        return DiffusionDrafter(dlm, mask_token_id=VOCAB - 1, shifted=True)
    if kind == "partial":
        return OracleDrafter(verifier, noise=0.5, seed=seed)
    return random_drafter(verifier, seed, layers=1, block_size=k)  # conditioned: reads the verifier's states


@settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["diffusion", "partial", "conditioned"]),
    mode=st.sampled_from(MODES),
    max_ngram=st.integers(1, 4),
    prompt=st.lists(st.integers(0, 7), min_size=1, max_size=16),  # a small alphabet, so tail n-grams recur
    k=st.integers(1, 10),
    cps=st.sampled_from([None, "argmax", "beam", "dp"]),
    share_cps=st.booleans(),
    adl=st.booleans(),
    tree=st.sampled_from([None, TreeConfig(max_nodes=6, max_children=2), TreeConfig(max_nodes=12, include_path=False)]),
    max_new=st.integers(1, 32),
    eos_at=st.one_of(st.none(), st.integers(0, 31)),
    seed=st.integers(0, 2**16),
    skip=st.sampled_from([None, 0.0, 0.5]),
)
def test_hybrid_greedy_equals_plain_decoding(
    verifier, dlm, kind, mode, max_ngram, prompt, k, cps, share_cps, adl, tree, max_new, eos_at, seed, skip
):
    prompt = torch.tensor(prompt)
    expected, eos = greedy_with_eos_at(verifier, prompt, max_new, eos_at)
    cps_config = cps_variant(cps, _PROXY)
    adl_config = ADLConfig(k_min=max(1, k - 4), k_max=k, delta=2) if adl else None
    config = DecodeConfig(cps=cps_config, adl=adl_config, draft_length=k, tree=tree)
    lookup = PromptLookupDrafter(max_ngram=max_ngram)
    drafter = _lattice_drafter(kind, verifier, dlm, seed, k)
    skip = skip if mode == "select" else None  # skip_margin is read in select mode only
    hybrid = HybridDrafter(drafter, lookup, mode=mode, cps=cps_config if share_cps else None, skip_margin=skip)
    out = SpeculativeDecoder(verifier, hybrid, config).generate(
        prompt, max_new_tokens=max_new, eos_token_id=list(eos) if eos else []
    )
    assert out.sequences[0].tolist() == expected.tolist()
    stats = out.stats
    assert stats.new_tokens == expected.numel() - prompt.numel() <= max_new
    assert all(0 <= a <= p for a, p in zip(stats.accepted, stats.depths, strict=True))


def _small_verifier():
    return tiny_qwen2(seed=3, vocab_size=V, hidden_size=32, num_layers=1, init_std=0.5, dtype=torch.float64)


def _small_dlm(init_std: float = 0.5):
    dlm = tiny_qwen2(seed=4, vocab_size=V, hidden_size=32, num_layers=1, causal=False, init_std=init_std)
    return DiffusionDrafter(dlm.to(torch.float64), mask_token_id=V - 1, shifted=True)


@pytest.mark.parametrize("mode", MODES)
def test_copies_are_taken_where_the_verifier_repeats_itself(mode):
    """A 6-id verifier whose greedy text keeps repeating "0 2": the hybrid accepts more than its lattice drafter
    alone, and the output is still plain greedy decoding."""
    verifier = _small_verifier()
    prompt = torch.tensor([1, 4, 2])
    config = DecodeConfig(cps=None, adl=None, draft_length=4)
    expected = reference_greedy(verifier, prompt, 40).tolist()
    alone = SpeculativeDecoder(verifier, _small_dlm(), config).generate(prompt, 40, eos_token_id=[])
    hybrid = HybridDrafter(_small_dlm(), PromptLookupDrafter(max_ngram=3), mode=mode)
    both = SpeculativeDecoder(verifier, hybrid, config).generate(prompt, 40, eos_token_id=[])
    assert alone.sequences[0].tolist() == both.sequences[0].tolist() == expected
    assert sum(both.stats.accepted) > sum(alone.stats.accepted)


# ---------------------------------------------------------------- T > 0: the verifier's distribution


@pytest.mark.parametrize(
    "mode,tree,new,temperature,top_k,top_p,skip",
    [
        ("select", None, 3, 1.0, None, None, None),  # three tokens: later rounds read the estimates the first updated
        ("select", None, 3, 1.0, None, None, 0.0),  # later rounds may take the copy without a draft
        ("merge", TreeConfig(max_nodes=4, max_children=2), 2, 0.7, 4, 0.9, None),
    ],
)
def test_hybrid_sampling_is_exact(monkeypatch, mode, tree, new, temperature, top_k, top_p, skip):
    """The law of the generated tokens equals AR sampling from the processed verifier (test_sampling's TV bound,
    false alarm <= 1e-6), with the copy proposed in the first round and both accepted and rejected."""
    prompt = torch.tensor([1, 4, 2, 1, 4])  # tail "1 4" recurs: the first round copies "2", p(2) = 0.38
    monkeypatch.setattr(test_sampling, "PROMPT", prompt)
    monkeypatch.setattr(test_sampling, "NEW", new)
    verifier = _small_verifier()
    flat = _small_dlm(init_std=0.05)  # a flat lattice
    hybrid = HybridDrafter(flat, PromptLookupDrafter(max_ngram=3), mode=mode, copy_margin=0, skip_margin=skip)
    first = hybrid.propose(DraftRequest(prompt, 1, 2, ()))
    assert first.draft.tolist() == [2]  # select: the copy's 2/3 beats the lattice's; merge: w = 2/3 always leads
    decoder = SpeculativeDecoder(verifier, hybrid, DecodeConfig(cps=None, adl=None, draft_length=2, tree=tree))
    generator = torch.Generator().manual_seed(1)
    runs = [decoder.generate(prompt, new, temperature, top_k, top_p, generator, eos_token_id=[]) for _ in range(100)]
    assert {0, 1} <= {run.stats.accepted[0] for run in runs}  # copies are accepted and rejected
    exact = exact_distribution(verifier, temperature, top_k, top_p)
    tv = sampled_tv(decoder, exact, temperature, top_k, top_p, seed=2)
    assert tv < tv_bound(len(exact), N), tv


# ---------------------------------------------------------------- command line and eval recipes


def test_generate_hybrid_flag(folders, capsys):  # noqa: F811 - the fixture
    from diffuspec.cli import main

    argv = ["generate", "--verifier", str(folders["verifier"]), "--prompt", "the cat sat on the mat, the cat sat",
            "--max-new-tokens", "6", "--k-min", "2", "--k-max", "4"]  # fmt: skip
    assert main([*argv, "--drafter", str(folders["dlm"]), "--hybrid", "--max-ngram", "2"]) == 0
    assert '"rounds"' in capsys.readouterr().err
    assert main([*argv, "--drafter", str(folders["conditioned"]), "--hybrid", "merge"]) == 0
    assert main(["generate", "--verifier", "nowhere", "--prompt", "p", "--hybrid"]) == 2  # before any loading
    assert "--hybrid select needs a --drafter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--drafter", str(folders["dlm"]), "--hybrid", "both"])
    assert "invalid choice: 'both'" in capsys.readouterr().err


BASE = {"verifier": "v", "benchmark": "jsonl", "benchmark_path": "p.jsonl"}


def test_eval_recipes_take_hybrid_methods():
    config = EvalConfig(
        **BASE,
        methods=[
            {"kind": "diffusion", "name": "h", "drafter": "d", "hybrid": "select"},
            {"kind": "conditioned", "name": "m", "drafter": "d", "hybrid": "merge", "max_ngram": 2},
            {"kind": "conditioned", "name": "z", "drafter": "d", "hybrid": "select", "copy_margin": 0},
        ],
    )
    select, merge, eager = config.methods[1:]
    assert (select.hybrid, select.max_ngram, select.min_ngram) == ("select", 3, 1)  # pld's lookup defaults
    assert (merge.hybrid, merge.max_ngram, merge.min_ngram) == ("merge", 2, 1)
    assert (select.copy_margin, eager.copy_margin) == (None, 0)  # None: HybridDrafter's default


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"kind": "diffusion", "drafter": "d", "hybrid": "both"}, r"hybrid must be one of \['select', 'merge'\]"),
        ({"kind": "diffusion", "drafter": "d", "max_ngram": 2}, "max_ngram / min_ngram set the hybrid's copy"),
        ({"kind": "diffusion", "drafter": "d", "hybrid": "merge", "min_ngram": 4}, "min_ngram <= max_ngram"),
        ({"kind": "pld", "hybrid": "select"}, r"unknown key\(s\) \['hybrid'\] for a 'pld' method"),
        ({"kind": "diffusion", "drafter": "d", "hybrid": "merge", "copy_margin": 1}, "read by hybrid: select only"),
        ({"kind": "diffusion", "drafter": "d", "hybrid": "select", "copy_margin": -1}, r"copy_margin \(>= 0 tokens\)"),
        ({"kind": "diffusion", "drafter": "d", "hybrid": "merge", "skip_margin": 0}, "skip_margin .* select only"),
    ],
)
def test_bad_hybrid_methods_are_refused_before_any_model_loads(method, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**BASE, methods=[method])


def test_hybrid_methods_run_lossless_in_the_harness(folders, tmp_path):  # noqa: F811 - the fixture
    adl = {"k_min": 2, "k_max": 4, "delta": 1}
    methods = [
        {"kind": "ar"},
        {"kind": "diffusion", "name": "dlm_hybrid", "drafter": str(folders["dlm"]), "adl": adl, "hybrid": "select",
         "proxy": str(folders["proxy"]), "copy_margin": 0.5},
        {"kind": "conditioned", "name": "conditioned_merge", "drafter": str(folders["conditioned"]), "adl": adl,
         "hybrid": "merge", "tree": {"max_nodes": 6, "max_children": 2}},
    ]  # fmt: skip
    assert evaluate(tiny_config(folders, tmp_path, methods=methods, max_new_tokens=8)) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lossless"] is True and set(results["methods"]) == {"ar", "dlm_hybrid", "conditioned_merge"}


@pytest.mark.parametrize("tree", [{"max_nodes": 64, "max_children": 8}, None])  # the tiny preset's, smollm2's
def test_both_quickstart_presets_time_the_hybrids_beside_their_parts(tmp_path, tree):
    from diffuspec.quickstart.stages import HYBRID, quickstart_methods

    inputs = {
        name: tmp_path / name for name in ("proxy", "drafter_unaligned", "drafter_aligned", "drafter_conditioned")
    }
    methods = quickstart_methods(inputs, window=None, adl={"k_min": 4, "k_max": 12, "delta": 4}, tree=tree)
    by_name = {m.get("name", m["kind"]): m for m in methods}
    for part in ("dlm_aligned", "dlm_conditioned"):
        assert by_name[f"{part}_hybrid"] == {**by_name[part], "name": f"{part}_hybrid", "hybrid": HYBRID}
    EvalConfig(**BASE, ar_drafter="a", methods=methods)  # a valid recipe
    eager = quickstart_methods(inputs, window=None, adl={"k_min": 4, "k_max": 12, "delta": 4}, copy_margin=0.0)
    assert {m["copy_margin"] for m in eager if m.get("hybrid")} == {0.0}
