"""Token-tree verification: the tree's shape, its one-pass scores, and lossless decoding at T = 0 and T > 0."""

import itertools

import pytest
import torch
from conftest import VOCAB, OracleDrafter, cps_variant, greedy_with_eos_at, reference_greedy
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_lossless import _PROXY, _drafter
from test_sampling import PROMPT, N, V, exact_distribution, sampled_tv, tv_bound

from diffuspec import ADLConfig, CPSConfig, DecodeConfig, Drafter, DraftRequest, Lattice, SpeculativeDecoder, TreeConfig
from diffuspec.decoding.tree import NodeBudget, TokenTree, build_tree, greedy_walk
from diffuspec.decoding.verifier import Verifier
from diffuspec.models.tiny import tiny_qwen2


class RankedDrafter(Drafter):
    """Puts the verifier's greedy token at a random rank 0..``worst`` of each slot, with the other ranks random
    tokens: the chain misses whenever rank 0 is wrong, a tree with enough children still finds it."""

    def __init__(self, model, worst: int = 2, seed: int = 0):
        self.model, self.worst = model, worst
        self.vocab_size = model.config.vocab_size
        self.rng = torch.Generator().manual_seed(seed)

    def propose(self, request: DraftRequest) -> Lattice:
        greedy = reference_greedy(self.model, request.ids, request.k)[request.ids.numel() :]
        logprobs = torch.full((request.k, self.vocab_size), -30.0)
        for slot, token in enumerate(greedy.tolist()):
            others = torch.randperm(self.vocab_size, generator=self.rng)
            ranked = [t for t in others.tolist() if t != token][: self.worst]
            rank = int(torch.randint(0, self.worst + 1, (1,), generator=self.rng))
            ranked.insert(rank, token)
            for r, t in enumerate(ranked):
                logprobs[slot, t] = -float(r)  # rank r gets weight e^-r
        return Lattice.from_logprobs(torch.log_softmax(logprobs, -1), request.width, request.eos_token_ids)


def _all_nodes(lattice: Lattice, children: int) -> list[tuple[float, tuple[int, ...]]]:
    """Every node of the full prefix tree with its score, by brute force (no EOS in these lattices)."""
    nodes = []
    for depth in range(1, lattice.k + 1):
        for ranks in itertools.product(range(children), repeat=depth):
            tokens = tuple(int(lattice.ids[d, r]) for d, r in enumerate(ranks))
            score = sum(float(lattice.logprobs[d, r]) for d, r in enumerate(ranks))
            nodes.append((score, tokens))
    return nodes


def _node_tokens(tree, node: int) -> tuple[int, ...]:
    tokens = []
    while node >= 0:
        tokens.append(int(tree.tokens[node]))
        node = int(tree.parents[node])
    return tuple(tokens[::-1])


@pytest.mark.parametrize("max_nodes", [1, 5, 17, 40])
def test_best_first_tree_holds_the_highest_scoring_nodes(max_nodes):
    torch.manual_seed(max_nodes)
    lattice = Lattice.from_logprobs(torch.randn(4, 12).log_softmax(-1), width=3)
    tree = build_tree(lattice, [1, 2], TreeConfig(max_nodes=max_nodes, max_children=3, include_path=False))
    scores = sorted((s for s, _ in _all_nodes(lattice, 3)), reverse=True)
    held = {_node_tokens(tree, i) for i in range(tree.size)}
    assert tree.size == min(max_nodes, len(scores)) == len(held)
    brute = {tokens: s for s, tokens in _all_nodes(lattice, 3)}
    assert sorted((brute[t] for t in held), reverse=True) == pytest.approx(scores[: tree.size])
    for i in range(tree.size):  # parents come first, every prefix is held, depth is the path length
        parent = int(tree.parents[i])
        assert parent < i and (parent == -1 or _node_tokens(tree, parent) == _node_tokens(tree, i)[:-1])
        assert int(tree.depths[i]) == len(_node_tokens(tree, i)) <= lattice.k


def test_path_goes_in_first_and_eos_ends_a_branch():
    logprobs = torch.full((3, 8), -5.0)
    logprobs[:, 3] = 0.0  # the argmax is 3 everywhere, EOS (7) is second at slot 0
    logprobs[0, 7] = -1.0
    lattice = Lattice.from_logprobs(logprobs.log_softmax(-1), width=2, eos_token_ids=[7])
    tree = build_tree(lattice, [0], TreeConfig(max_nodes=7, max_children=2), path=[5, 3, 3])
    assert tree.tokens[:3].tolist() == [5, 3, 3] and tree.parents[:3].tolist() == [-1, 0, 1]  # off-lattice path kept
    eos_node = tree.child(-1, 7)
    assert eos_node is not None and all(parent != eos_node for parent in tree.parents.tolist())
    assert tree.size == 7 and tree.tokens[3:].tolist() == [3, 3, 3, 7]  # then best-first: 3, 3 3, 3 3 3, EOS


def test_tree_pass_scores_every_branch_like_a_chain(verifier):
    """One tree pass gives, at every node, the logits a chain pass of that node's path gives."""
    prompt = torch.tensor([4, 9, 2, 11, 5])
    lattice = Lattice.from_logprobs(
        torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(0)).log_softmax(-1), width=3
    )
    tree = build_tree(lattice, prompt, TreeConfig(max_nodes=10, max_children=3, include_path=False))
    tree_verifier, chain_verifier = Verifier(verifier), Verifier(verifier)
    tree_verifier.start(prompt)
    tree_logits = tree_verifier.step_tree(tree)
    for node in range(-1, tree.size):
        path = torch.tensor(_node_tokens(tree, node)) if node >= 0 else torch.empty(0, dtype=torch.long)
        chain_verifier.start(prompt)
        torch.testing.assert_close(tree_logits[node + 1], chain_verifier.step(path)[-1])


def test_compaction_keeps_the_accepted_branch_and_its_features(verifier):
    """Accepting a branch that is not the tree's first nodes moves its cache rows and feature rows next to the
    prefix: the next pass and the stored features equal a chain that only ever saw that branch."""
    prompt = torch.tensor([3, 1, 4, 1, 5])
    lattice = Lattice.from_logprobs(
        torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2)).log_softmax(-1), width=3
    )
    tree = build_tree(lattice, prompt, TreeConfig(max_nodes=9, max_children=3, include_path=False))
    branch = [tree.size - 1]  # the last node inserted and its ancestors
    while int(tree.parents[branch[0]]) >= 0:
        branch.insert(0, int(tree.parents[branch[0]]))
    assert branch != list(range(len(branch)))
    tree_verifier, chain_verifier = Verifier(verifier, feature_layers=(0, 2)), Verifier(verifier, feature_layers=(0, 2))
    tree_verifier.start(prompt)
    chain_verifier.start(prompt)
    tree_verifier.step_tree(tree)
    chain_verifier.step(tree.path_tokens(branch))
    tree_verifier.commit(branch, 7)
    chain_verifier.commit(len(branch), 7)
    torch.testing.assert_close(tree_verifier.features, chain_verifier.features)
    torch.testing.assert_close(tree_verifier.step(torch.tensor([8, 9])), chain_verifier.step(torch.tensor([8, 9])))


def test_greedy_walk_follows_the_verifier_argmax():
    lattice = Lattice.from_logprobs(torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.0, -2.0]]).log_softmax(-1), width=2)
    tree = build_tree(lattice, [], TreeConfig(max_nodes=6, max_children=2, include_path=False))
    logits = torch.full((tree.size + 1, 3), -1.0)
    logits[0, 1] = 1.0  # after the root the verifier wants 1 (the root's second child)
    logits[tree.child(-1, 1) + 1, 2] = 1.0  # then 2, which the tree does not hold below 1
    nodes, token = greedy_walk(tree, logits)
    assert nodes == [tree.child(-1, 1)] and token == 2


@settings(
    max_examples=120,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["ranked", "partial", "diffusion", "prompt_lookup", "ar"]),
    prompt=st.lists(st.integers(0, VOCAB - 2), min_size=1, max_size=12),
    k=st.integers(1, 12),
    max_nodes=st.integers(1, 24),
    max_children=st.integers(1, 4),
    include_path=st.booleans(),
    budget=st.sampled_from(["fixed", "cost"]),
    cps=st.sampled_from([None, "argmax", "beam"]),
    adl=st.booleans(),
    max_new=st.integers(1, 40),
    eos_at=st.one_of(st.none(), st.integers(0, 39)),
)
def test_tree_greedy_equals_plain_decoding(
    verifier, dlm, kind, prompt, k, max_nodes, max_children, include_path, budget, cps, adl, max_new, eos_at
):
    prompt = torch.tensor(prompt)
    expected, eos = greedy_with_eos_at(verifier, prompt, max_new, eos_at)
    tree = TreeConfig(max_nodes=max_nodes, max_children=max_children, include_path=include_path, budget=budget)
    adl_config = ADLConfig(k_min=max(1, k - 4), k_max=k, delta=2) if adl else None
    config = DecodeConfig(cps=cps_variant(cps, _PROXY), adl=adl_config, draft_length=k, tree=tree)
    drafter = RankedDrafter(verifier, seed=k) if kind == "ranked" else _drafter(kind, verifier, dlm)
    out = SpeculativeDecoder(verifier, drafter, config).generate(
        prompt, max_new_tokens=max_new, eos_token_id=list(eos) if eos else []
    )
    assert out.sequences[0].tolist() == expected.tolist()
    stats = out.stats
    assert stats.new_tokens == expected.numel() - prompt.numel() <= max_new
    rounds = zip(stats.accepted, stats.depths, stats.draft_lengths, stats.path_lengths, strict=True)
    assert all(0 <= a <= depth <= min(k, n) for a, depth, k, n in rounds)
    assert all(n <= max_nodes for n in stats.path_lengths)


def test_tree_finds_runner_up_tokens_the_chain_misses(verifier):
    prompt = torch.tensor([6, 2, 8, 3])
    chain = DecodeConfig(cps=CPSConfig(lam=1.0), adl=None, draft_length=4)
    tree = DecodeConfig(cps=CPSConfig(lam=1.0), adl=None, draft_length=4, tree=TreeConfig(max_nodes=24, max_children=3))
    outs = [
        SpeculativeDecoder(verifier, RankedDrafter(verifier, seed=1), c).generate(prompt, 48, eos_token_id=[])
        for c in (chain, tree)
    ]
    assert outs[0].sequences.tolist() == outs[1].sequences.tolist() == [reference_greedy(verifier, prompt, 48).tolist()]
    assert outs[1].stats.tau > 1.5 * outs[0].stats.tau


def test_a_tree_with_the_path_never_accepts_less_than_the_chain(verifier):
    """Same lattice each round (a deterministic drafter), path included: round by round the tree keeps at least
    what the chain keeps, so over a whole generation it needs no more rounds."""
    prompt = torch.tensor([1, 5, 9])
    drafter = OracleDrafter(verifier, noise=0.0)
    for max_nodes in (1, 3, 8):
        chain = DecodeConfig(cps=None, adl=None, draft_length=6)
        tree = DecodeConfig(cps=None, adl=None, draft_length=6, tree=TreeConfig(max_nodes=max_nodes, max_children=2))
        a, b = (SpeculativeDecoder(verifier, drafter, c).generate(prompt, 30, eos_token_id=[]) for c in (chain, tree))
        assert a.sequences.tolist() == b.sequences.tolist()
        if max_nodes >= 6:
            assert b.stats.rounds <= a.stats.rounds


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 4, 0.9)])
def test_tree_sampling_matches_verifier_distribution(temperature, top_k, top_p):
    """T > 0: the generated pair's law equals AR sampling from the processed verifier (test_sampling's bound)."""
    verifier = tiny_qwen2(seed=3, vocab_size=V, hidden_size=32, num_layers=1, init_std=0.5, dtype=torch.float64)
    exact = exact_distribution(verifier, temperature, top_k, top_p)
    config = DecodeConfig(cps=None, adl=None, draft_length=2, tree=TreeConfig(max_nodes=5, max_children=2))
    decoder = SpeculativeDecoder(verifier, RankedDrafter(verifier, worst=4, seed=4), config)
    generator = torch.Generator().manual_seed(1)
    runs = [decoder.generate(PROMPT, 2, temperature, top_k, top_p, generator, eos_token_id=[]) for _ in range(100)]
    assert {0, 1} <= {run.stats.accepted[0] for run in runs}  # branches are taken and missed
    tv = sampled_tv(decoder, exact, temperature, top_k, top_p, seed=2)
    assert tv < tv_bound(len(exact), N), tv


def test_tree_bound_catches_a_walk_that_prefers_children(monkeypatch):
    """Descending into the best child without a draw is not exact; the statistic must notice."""
    verifier = tiny_qwen2(seed=3, vocab_size=V, hidden_size=32, num_layers=1, init_std=0.5, dtype=torch.float64)
    exact = exact_distribution(verifier, 1.0, None, None)

    def biased(tree, probs, generator=None):
        child = tree.child(-1, int(tree.tokens[0])) if tree.size else None
        if child is None:
            return [], int(torch.multinomial(probs[0], 1, generator=generator))
        return [child], int(torch.multinomial(probs[child + 1], 1, generator=generator))

    monkeypatch.setattr("diffuspec.decoding.loop.sample_walk", biased)
    config = DecodeConfig(cps=None, adl=None, draft_length=1, tree=TreeConfig(max_nodes=3, max_children=3))
    decoder = SpeculativeDecoder(verifier, RankedDrafter(verifier, worst=2, seed=4), config)
    assert sampled_tv(decoder, exact, 1.0, None, None) > tv_bound(len(exact), N)


@pytest.mark.parametrize(
    "slope,expected",
    [(0.0, 32), (1.0, 2)],  # verify time flat in the size (a GPU): the largest; steep (a CPU): where hits run out
)
def test_cost_budget_picks_the_size_with_most_tokens_per_second(slope, expected):
    """Rank i is on the verifier's path in the first rounds of every tree for i < 2, never after: with flat verify
    cost the budget settles on max_nodes, with a cost of ``slope`` seconds per node on 2 nodes."""
    budget = NodeBudget(TreeConfig(max_nodes=32, budget="cost", explore_every=1000))
    assert budget.sizes == [1, 2, 4, 8, 16, 32]
    chosen = []
    for _ in range(40):
        size = budget.choose()
        chosen.append(size)
        tree = TokenTree(torch.zeros(size, dtype=torch.long), torch.arange(-1, size - 1), torch.arange(1, size + 1))
        budget.update(tree, accepted=list(range(min(2, size))), overhead_s=0.5, verify_s=1.0 + slope * size)
    assert chosen[:6] == [32, 16, 8, 4, 2, 1]  # every size is measured once, largest first
    assert chosen[-1] == expected and set(chosen[20:]) == {expected}
    assert NodeBudget(TreeConfig(max_nodes=12)).choose() == 12  # fixed: always max_nodes


def test_tree_config_is_checked_and_round_trips():
    with pytest.raises(ValueError, match="max_nodes must be >= 1, got 0"):
        TreeConfig(max_nodes=0)
    with pytest.raises(ValueError, match="max_children must be >= 1, got -1"):
        TreeConfig(max_children=-1)
    with pytest.raises(ValueError, match="budget must be 'fixed' or 'cost', got 'auto'"):
        TreeConfig(budget="auto")
    config = DecodeConfig(tree=TreeConfig(max_nodes=32, max_children=2, include_path=False))
    assert DecodeConfig.from_dict(config.to_dict()).tree == config.tree
    assert DecodeConfig.from_dict({}).tree is None and config.draft_width == config.cps.m_max
    with pytest.raises(ValueError, match=r"tree: unknown key\(s\) \['nodes'\]"):
        DecodeConfig.from_dict({"tree": {"nodes": 3}})


def test_tree_refuses_verifiers_it_cannot_mask(verifier):
    config = DecodeConfig(tree=TreeConfig())
    sliding = tiny_qwen2(seed=1, vocab_size=VOCAB, hidden_size=32, num_layers=2)
    sliding.config.use_sliding_window, sliding.config.sliding_window = True, 4
    sliding.config.layer_types = ["sliding_attention"] * 2
    with pytest.raises(ValueError, match="full-attention cache layers"):
        SpeculativeDecoder(sliding, OracleDrafter(verifier), config)
    flash = tiny_qwen2(seed=1, vocab_size=VOCAB, hidden_size=32, num_layers=2)
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation in \\['eager', 'sdpa'\\].*'flash_attention_2'"):
        SpeculativeDecoder(flash, OracleDrafter(verifier), config)
    SpeculativeDecoder(verifier, OracleDrafter(verifier), config)  # the sdpa, full-attention verifier is accepted


def test_generate_flags_build_the_tree_config():
    from diffuspec import cli

    parse = cli.build_parser().parse_args
    args = parse(["generate", "--verifier", "v", "--prompt", "p", "--tree-nodes", "32", "--tree-budget", "cost"])
    assert cli.decode_config_from_args(args).tree == TreeConfig(max_nodes=32, max_children=4, budget="cost")
    assert (
        cli.decode_config_from_args(parse(["generate", "--verifier", "v", "--prompt", "p", "--beam", "2"])).tree is None
    )
    assert cli.decode_config_from_args(parse(["generate", "--verifier", "v", "--prompt", "p"])) is None  # no flags
    with pytest.raises(ValueError, match="max_nodes must be >= 1, got -2"):
        cli.decode_config_from_args(parse(["generate", "--verifier", "v", "--prompt", "p", "--tree-nodes", "-2"]))
