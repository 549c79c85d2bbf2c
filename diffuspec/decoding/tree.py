"""Token trees: many paths through the lattice verified in one verifier pass.

A chain round verifies one path; when its first token is wrong the round gains nothing, although the lattice often
ranked the right token second. A tree keeps several candidates per slot as a prefix tree of nodes, the verifier
scores every node in one forward pass (each node attends to the cache, the pending token and its own ancestors:
a 4D mask, positions by depth), and the round keeps the deepest node whose path the verifier itself would have
produced.

Which nodes: the ``max_nodes`` best by path score, the same score CPS ranks paths with (``lam * log q`` plus
``(1 - lam)`` times the proxy's log-prob, or the drafter's log-prob alone without a proxy). With calibrated
log-probs the score of a node estimates the chance that the verifier reaches it, and the expected number of
accepted tokens is the sum of those chances over the tree's nodes, so the best-first set is the one that
maximises it. Scores only fall along a path, so that set is always prefix-closed. With ``include_path`` the path
CPS picked goes in first, so a tree never holds less than the chain it replaces.

Why the walk is exact. At T = 0 it follows the verifier's argmax from the root and stops at the first argmax that
no child holds: every emitted token is the verifier's greedy token, so the output is plain greedy decoding. At
T > 0 it draws the next token from the verifier's processed distribution at the current node and descends when a
child holds it; otherwise that draw is the round's last token. Every emitted token is thus a draw from the
verifier's distribution given everything emitted before it, whatever the tree holds, so the output distribution is
the verifier's. (The candidates are fixed by the lattice, not sampled, so this equals recursive rejection sampling
over the siblings with point-mass proposals: child c is taken with probability p(c), and a token outside the
children with p(v). Its chance to descend, the sum of p over the children, is the most any exact rule can get.)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .config import TreeConfig
from .cps import prune
from .lattice import Lattice
from .proxy import CausalProxy


@dataclass
class TokenTree:
    """Nodes in insertion order (a parent always before its children); the root is the pending token."""

    tokens: torch.Tensor  # [N] long, the node's draft token
    parents: torch.Tensor  # [N] long, the parent's node index, -1 for the root
    depths: torch.Tensor  # [N] long, 1 for the root's children (the first draft slot)
    children: dict[tuple[int, int], int] = field(default_factory=dict)  # (parent, token) -> node

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    def child(self, node: int, token: int) -> int | None:
        """The child of ``node`` (-1: the root) holding ``token``, if any."""
        return self.children.get((node, token))

    def ancestors(self) -> torch.Tensor:
        """``[N + 1, N + 1]`` bool, row i + 1 marks the root, node i and its ancestors (row 0: the root alone)."""
        n = self.size
        mask = torch.eye(n + 1, dtype=torch.bool)
        mask[:, 0] = True
        for i, parent in enumerate(self.parents.tolist()):
            if parent >= 0:
                mask[i + 1] |= mask[parent + 1]
        return mask

    def path_tokens(self, nodes: Sequence[int]) -> torch.Tensor:
        return self.tokens[list(nodes)] if nodes else self.tokens.new_empty(0)


def build_tree(
    lattice: Lattice,
    context: Sequence[int] | torch.Tensor,
    config: TreeConfig,
    path: Sequence[int] | torch.Tensor = (),
    proxy: CausalProxy | None = None,
    lam: float = 1.0,
    max_nodes: int | None = None,
) -> TokenTree:
    """The best ``max_nodes`` (default ``config.max_nodes``) nodes of the lattice's prefix tree, at most
    ``lattice.k`` deep.

    ``path`` (the one CPS picked) is inserted first when ``config.include_path``, then each of ``lattice.branches``
    (while nodes are left); ``proxy`` and ``lam`` are CPS's (no proxy or ``lam == 1``: the drafter's log-prob
    alone). A node holding an EOS id gets no children.
    """
    builder = _TreeBuilder(lattice, context, config, proxy if lam < 1.0 else None, lam, max_nodes or config.max_nodes)
    paths = ([path] if config.include_path else []) + list(lattice.branches)
    for tokens in paths:
        builder.insert_path([int(t) for t in tokens])
    builder.fill()
    return builder.tree()


class _TreeBuilder:
    """Best-first enumeration: a heap holds, per expanded node, its best child not yet taken, so each pop yields
    the best remaining node of the whole tree (children never score above their parent)."""

    def __init__(
        self,
        lattice: Lattice,
        context: Sequence[int] | torch.Tensor,
        config: TreeConfig,
        proxy,
        lam: float,
        max_nodes: int,
    ) -> None:
        self.lattice, self.config, self.proxy, self.lam, self.max_nodes = lattice, config, proxy, lam, max_nodes
        self.candidates = prune(lattice, 1.0, config.max_children)
        self.eos = frozenset(lattice.eos_token_ids)
        context = context.tolist() if isinstance(context, torch.Tensor) else list(context)
        order = getattr(proxy, "order", None)
        self.context = context[max(len(context) - (order - 1), 0) :] if order is not None else context
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.scores: list[float] = []
        self.children: dict[tuple[int, int], int] = {}
        self.ranked: dict[int, list[tuple[float, int]]] = {}  # node -> its children (score, token), best first
        self.heap: list[tuple[float, int, int]] = []  # (-score, node, rank in ranked[node])
        self._expand(-1)

    def _history(self, node: int) -> list[int]:
        tokens = []
        while node >= 0:
            tokens.append(self.tokens[node])
            node = self.parents[node]
        return self.context + tokens[::-1]

    def _score(self, base: float, history: list[int] | None, token: int, logq: float) -> float:
        if self.proxy is None:
            return base + logq
        return base + self.lam * logq + (1.0 - self.lam) * self.proxy.logprob(history, token)

    def _expand(self, node: int) -> None:
        depth = self.depths[node] if node >= 0 else 0
        if depth >= self.lattice.k or (node >= 0 and self.tokens[node] in self.eos):
            return
        base = self.scores[node] if node >= 0 else 0.0
        history = self._history(node) if self.proxy is not None else None
        ids, logqs = self.candidates[depth]
        ranked = sorted(
            ((self._score(base, history, t, lq), t) for t, lq in zip(ids, logqs, strict=True)), reverse=True
        )
        self.ranked[node] = ranked
        heapq.heappush(self.heap, (-ranked[0][0], node, 0))

    def _add(self, parent: int, token: int, score: float) -> int:
        node = len(self.tokens)
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1 if parent >= 0 else 1)
        self.scores.append(score)
        self.children[(parent, token)] = node
        self._expand(node)
        return node

    def insert_path(self, path: list[int]) -> None:
        """Add ``path``'s nodes not in the tree yet, root first, while the node budget lasts."""
        parent = -1
        for depth, token in enumerate(path[: self.lattice.k]):
            node = self.children.get((parent, token))
            if node is None:
                if len(self.tokens) >= self.max_nodes:
                    break
                base = self.scores[parent] if parent >= 0 else 0.0
                history = self._history(parent) if self.proxy is not None else None
                node = self._add(parent, token, self._score(base, history, token, self._logq(depth, token)))
            parent = node
            if token in self.eos:
                break

    def _logq(self, slot: int, token: int) -> float:
        """The lattice's log-prob of ``token`` at ``slot`` (-inf when the lattice did not keep it)."""
        row = self.lattice.ids[slot]
        hit = torch.nonzero(row == token)
        if hit.numel():
            return float(self.lattice.logprobs[slot, int(hit[0, 0])])
        if token in self.eos:
            return float(self.lattice.eos_logprobs[slot, self.lattice.eos_token_ids.index(token)])
        return -math.inf

    def fill(self) -> None:
        while len(self.tokens) < self.max_nodes and self.heap:
            _, parent, rank = heapq.heappop(self.heap)
            ranked = self.ranked[parent]
            if rank + 1 < len(ranked):
                heapq.heappush(self.heap, (-ranked[rank + 1][0], parent, rank + 1))
            score, token = ranked[rank]
            if (parent, token) not in self.children and score > -math.inf:
                self._add(parent, token, score)

    def tree(self) -> TokenTree:
        return TokenTree(
            tokens=torch.tensor(self.tokens, dtype=torch.long),
            parents=torch.tensor(self.parents, dtype=torch.long),
            depths=torch.tensor(self.depths, dtype=torch.long),
            children=self.children,
        )


def greedy_walk(tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """logits ``[N + 1, V]`` (row 0: after the root) -> (accepted nodes root to leaf, the verifier's next token)."""
    targets = logits.argmax(dim=-1).tolist()
    return _walk(tree, lambda row: targets[row])


def sample_walk(
    tree: TokenTree, probs: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[list[int], int]:
    """probs ``[N + 1, V]`` (processed) -> (accepted nodes, the emitted last token); exact, see the module doc."""
    return _walk(tree, lambda row: int(torch.multinomial(probs[row], 1, generator=generator)))


def _walk(tree: TokenTree, next_token) -> tuple[list[int], int]:
    nodes: list[int] = []
    node = -1
    while True:
        token = next_token(node + 1)
        child = tree.child(node, token)
        if child is None:
            return nodes, token
        nodes.append(child)
        node = child


class NodeBudget:
    """How many nodes this round's tree gets: ``max_nodes`` always (``budget='fixed'``), or by the cost model.

    Nodes enter a tree best first, so node rank i is worth the chance ``h_i`` that the verifier's path runs through
    the i-th node inserted; a tree of n nodes appends ``1 + sum_{i<n} h_i`` tokens per round on average. Both that
    and the round's cost are measured here, online: ``h_i`` as a moving average over the rounds that verified rank
    i, the verify time per tree size as a moving average of that size's passes, draft and search time per round
    likewise. Each round takes the size, among powers of two up to ``max_nodes``, with the most tokens per second;
    sizes not measured yet are tried first (largest first), and every ``explore_every``-th round verifies
    ``max_nodes`` so the deep ranks' rates stay current. Measurements outlive a request: they describe the machine
    and the drafter, not the prompt. On a GPU, where 64 nodes cost about one token, it settles on the largest size;
    on a CPU, where every verified token costs, on a smaller one.
    """

    RHO = 0.2  # weight of the newest observation

    def __init__(self, config: TreeConfig) -> None:
        self.config = config
        self.sizes = sorted({min(2**p, config.max_nodes) for p in range(config.max_nodes.bit_length() + 1)})
        self.hits = [1.0] * config.max_nodes  # optimistic until measured: unexplored ranks look worth their cost
        self.verify_s: dict[int, float] = {}  # tree size -> seconds per verify pass
        self.overhead_s: float | None = None  # draft + search seconds per round
        self.rounds = 0
        self.size = config.max_nodes

    def choose(self) -> int:
        """The node budget of the next round."""
        if self.config.budget == "fixed":
            return self.config.max_nodes
        self.rounds += 1
        unmeasured = [n for n in self.sizes if n not in self.verify_s]
        if unmeasured:
            self.size = unmeasured[-1]
        elif self.rounds % self.config.explore_every == 0:
            self.size = self.config.max_nodes
        else:
            self.size = max(self.sizes, key=self.tokens_per_second)
        return self.size

    def tokens_per_second(self, size: int) -> float:
        return (1.0 + sum(self.hits[:size])) / ((self.overhead_s or 0.0) + self.verify_s[size])

    def update(self, tree: TokenTree, accepted: Sequence[int], overhead_s: float, verify_s: float) -> None:
        """One round's tree, its accepted nodes, its draft + search and verify seconds."""
        if self.config.budget == "fixed":
            return
        taken = set(accepted)
        for rank in range(tree.size):
            self.hits[rank] = self._average(self.hits[rank], float(rank in taken))
        # per budget: a short draft's smaller tree is part of its cost
        self.verify_s[self.size] = self._average(self.verify_s.get(self.size), verify_s)
        self.overhead_s = self._average(self.overhead_s, overhead_s)

    @classmethod
    def _average(cls, old: float | None, new: float) -> float:
        """The moving average after observing ``new`` (the observation itself when there is none yet)."""
        return new if old is None else old + cls.RHO * (new - old)
