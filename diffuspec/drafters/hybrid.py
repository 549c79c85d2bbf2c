"""HybridDrafter: a prompt-lookup copy and a lattice drafter's block in one proposal.

Copying is free and right where the answer repeats its prompt (summaries, retrieval, code edits); a diffusion or
conditioned drafter is right on new text. Each round the hybrid reads both and hands the loop one lattice, so CPS,
token trees, verification and ADL treat it like any other drafter:

- ``mode="select"``: the proposal with the larger expected accepted length (``expected_length``): the copy as a
  point-mass lattice, or the drafter's lattice unchanged.
- ``mode="merge"``: the copied token at slot i joins slot i's candidates as a mixture component (``merge_copy``),
  so CPS takes it where the lattice agrees or is unsure, and a token tree holds the copy whole as its own branch
  (``Lattice.branches``).

Expected accepted length. A chain whose slot i is accepted with probability ``a_i`` once slots ``< i`` are gives
``E = sum_i prod_{j<=i} a_j`` accepted tokens. For the copy, ``a_j = alpha_g``: the running per-token acceptance
rate of copies whose tail n-gram matched ``g`` tokens (prior ``g / (g + 1)``: a longer match is likelier to go on).
For the lattice, ``a_j = q_j(pi_j)``, the drafter's probability of each token on the path the loop's CPS picks
(``HybridDrafter(cps=...)``; without it, the raw argmax path), and ``E`` is scaled by ``kappa``, the running ratio
of tokens accepted to tokens this predicted (1: a calibrated drafter), and capped at the path's length. Both
estimates learn from the same evidence: each round the hybrid compares both of its previous proposals with the
tokens committed since (accepted draft plus the verifier's own token). A point-mass slot is accepted exactly when
the emitted token equals it (the residual excludes it), and the emitted tokens have the verifier's law whatever
was proposed, so the common prefix is what the verified proposal got and, in law, what the other one would have
got, censored at the committed length. The proposal not chosen is scored too, so neither estimate starves.
The copy is chosen only when it expects ``copy_margin`` tokens more than the lattice: its rate is a per-request
average for its match length, while the rule consults it where the lattice is weak, which is where copies fail
more often too (a winner's curse); the lattice's estimate reads this round's own probabilities.

Skipping the draft (select mode, ``skip_margin``). The select rule needs the lattice, so a hybrid pays a draft in
every round, also in those it then gives to the copy. With ``skip_margin`` set, a copy that expects
``skip_margin`` tokens more than the lattice's recent rounds did (the decayed mean of its capped estimate ``E``
over the rounds it was drafted) is taken before any draft: a long, reliable match then costs what prompt lookup
costs. Rounds without a draft leave ``kappa`` unchanged and still score the copy.

Exactness (T = 0 and T > 0). Whatever the mode, the loop verifies a path ``pi`` (select: the copy, or CPS's path
through the drafter's lattice; merge: CPS's path through the merged lattice) or a token tree, with the rules of
``decoding.acceptance`` and ``decoding.tree``. Slot i is accepted against the point mass ``q_i = delta_{pi_i}``:
``pi_i`` is kept with probability ``p~_i(pi_i)``, and on rejection the token is drawn from ``p~_i`` with ``pi_i``
removed; in a tree each node's children are such point masses, tried through one draw (``decoding.tree``). The
merged mixture only chooses ``pi``; no acceptance test reads it. ``pi`` is a function of the committed tokens
alone: the copy and the lattice read ``request.ids`` (and the verifier's states of committed tokens), and
``alpha``, ``kappa`` and the lattice's recent estimate (the skip rule) are functions of earlier proposals and
committed tokens. So, given the history, ``x = pi_i`` is fixed before the round's coins are drawn, and the emitted
token Y has ``P(Y = x) = p~(x)`` and, for ``v != x``, ``P(Y = v) = (1 - p~(x)) * p~(v) / (1 - p~(x)) = p~(v)``:
``Y ~ p~``. Each emitted token joins the next slot's prefix, so by induction the output has the law of AR sampling
from ``p~``. At T = 0, ``p~`` is the point mass on the verifier's argmax and the output is plain greedy decoding,
token for token.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..decoding.config import CPSConfig
from ..decoding.cps import causal_path_search
from ..decoding.drafter import Drafter, DraftRequest
from ..decoding.lattice import Lattice
from ..eos import cut_after_eos
from .prompt_lookup import PromptLookupDrafter, find_match

MODES = ("select", "merge")
HISTORY_DECAY = 0.8  # weight of the past in the running estimates: roughly the last five rounds count
ARGMAX = CPSConfig(lam=1.0)  # the path the loop verifies without CPS: the raw argmax, cut after its first EOS


class RunningRatio:
    """``num / den`` over exponentially decayed observations, started from a prior ``(num, den)``."""

    def __init__(self, num: float, den: float) -> None:
        self.num, self.den = num, den

    def update(self, num: float, den: float) -> None:
        self.num = HISTORY_DECAY * self.num + num
        self.den = HISTORY_DECAY * self.den + den

    @property
    def value(self) -> float:
        return self.num / self.den if self.den > 0 else 1.0


def token_logprobs(lattice: Lattice, tokens: torch.Tensor) -> torch.Tensor:
    """``[m]``: the lattice's log-prob of ``tokens[i]`` at slot i (-inf where the lattice did not keep it).

    Plain Python on these few-element lists, as below: the hybrid's bookkeeping runs every round and must stay far
    below a draft's cost (a dozen tensor calls would not)."""
    wanted = tokens.tolist()
    m = len(wanted)
    ids, values = lattice.ids[:m].tolist(), lattice.logprobs[:m].tolist()
    out = [
        values[i][row.index(t)] if t in row else -math.inf for i, (t, row) in enumerate(zip(wanted, ids, strict=True))
    ]
    for j, eos in enumerate(lattice.eos_token_ids):
        eos_values = lattice.eos_logprobs[:m, j].tolist()
        out = [max(v, eos_values[i]) if wanted[i] == eos else v for i, v in enumerate(out)]
    return torch.tensor(out, dtype=torch.float32)


def expected_length(logprobs: torch.Tensor) -> float:
    """Expected accepted tokens of a chain whose slot i is accepted with probability ``exp(logprobs[i])`` once the
    slots before it are: ``sum_i prod_{j<=i} a_j``."""
    total = running = 0.0
    for value in logprobs.tolist():
        running += value
        total += math.exp(running)
    return total


def agreement(draft: torch.Tensor, committed: torch.Tensor) -> tuple[int, int]:
    """(tokens of ``draft`` the committed tokens confirm, the slots they can judge: the shorter length)."""
    horizon = min(draft.numel(), committed.numel())
    for i, (a, b) in enumerate(zip(draft[:horizon].tolist(), committed[:horizon].tolist(), strict=True)):
        if a != b:
            return i, horizon
    return horizon, horizon


def merge_copy(lattice: Lattice, copy: torch.Tensor, weight: float) -> Lattice:
    """The lattice with ``copy`` mixed in: ``q'_i = (1 - w) q_i + w * delta_{copy_i}`` for slots ``i < len(copy)``,
    later slots unchanged, and ``copy`` as a branch.

    ``w`` (``weight``) is the chance the copied token is the verifier's (``alpha``), so ``q'_i`` is the law of "the
    copy when it is right, else the drafter". The copy outranks the lattice's best token v exactly when
    ``(1 - w) q_i(copy_i) + w > (1 - w) q_i(v)``: where the lattice agrees, and where it is unsure (v leads the
    copied token by less than ``w / (1 - w)``); a lattice more confident than that keeps its token (never once
    copies are right at least half the time). A copied token outside the lattice's top M counts as ``q_i = 0`` (its
    mass is at most the M-th's). Like the lattice's marginals the mixture is per slot: CPS, with its proxy, decides
    whether copied and drafted tokens mix in one path, and a tree also holds the copy whole. The lattice gains one
    column.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"merge weight must be in [0, 1], got {weight}")
    c = min(copy.numel(), lattice.k)
    copy = copy[:c].to(lattice.ids.dtype)
    keep = math.log1p(-weight) if weight < 1.0 else float("-inf")  # log(1 - w): the drafter's share
    mixed = torch.log((1.0 - weight) * token_logprobs(lattice, copy).exp() + weight)  # [c], the copy's new log-prob
    head = lattice.logprobs[:c].masked_fill(lattice.ids[:c] == copy[:, None], float("-inf")) + keep
    logprobs, order = torch.cat([head, mixed[:, None]], dim=1).sort(dim=1, descending=True, stable=True)
    ids = torch.cat([lattice.ids[:c], copy[:, None]], dim=1).gather(1, order)
    eos = lattice.eos_logprobs[:c] + keep
    for j, e in enumerate(lattice.eos_token_ids):
        eos[:, j] = torch.where(copy == e, mixed, eos[:, j])
    # later slots keep their candidates; the extra column repeats their best id at -inf, which nothing ever takes
    tail_ids = torch.cat([lattice.ids[c:], lattice.ids[c:, :1]], dim=1)
    tail = torch.cat([lattice.logprobs[c:], lattice.logprobs.new_full((lattice.k - c, 1), float("-inf"))], dim=1)
    ids = torch.cat([ids, tail_ids])
    return Lattice(
        ids=ids,
        logprobs=torch.cat([logprobs, tail]),
        eos_logprobs=torch.cat([eos, lattice.eos_logprobs[c:]]),
        eos_token_ids=lattice.eos_token_ids,
        draft=ids[:, 0].clone(),
        branches=(copy,) if c else (),
    )


@dataclasses.dataclass
class _Proposals:
    """One round's proposals, kept to be scored against the tokens the next request has committed."""

    ids: torch.Tensor  # the round's request ids
    copy: torch.Tensor  # the copied continuation (empty: no match)
    match: int  # its tail n-gram length
    path: torch.Tensor | None  # the lattice path the select rule scored (None in merge mode)
    path_logprobs: torch.Tensor | None  # its per-slot drafter log-probs


class HybridDrafter(Drafter):
    """A lattice drafter and a prompt-lookup copy behind the one ``Drafter`` interface (see the module doc).

    ``cps``: the decoder's ``CPSConfig`` (proxy included). In select mode the hybrid searches the path itself, to
    score it, and hands it to the loop (``Lattice.path``), which verifies it without searching again; None searches
    the raw argmax path, the loop's path without CPS. ``copy_margin``: how many tokens more than the lattice the copy
    must expect to be chosen; ``skip_margin`` (select mode; None: draft every round): how many tokens more than the
    lattice's recent rounds the copy must expect to be taken without drafting (module doc).
    """

    def __init__(
        self,
        drafter: Drafter,
        lookup: PromptLookupDrafter | None = None,
        mode: str = "select",
        cps: CPSConfig | None = None,
        copy_margin: float = 1.0,
        skip_margin: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"HybridDrafter mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(drafter, Drafter) or isinstance(drafter, (PromptLookupDrafter, HybridDrafter)):
            raise ValueError(
                f"HybridDrafter needs a lattice drafter (diffusion, conditioned, autoregressive), got "
                f"{type(drafter).__name__}"
            )
        lookup = PromptLookupDrafter() if lookup is None else lookup
        if not isinstance(lookup, PromptLookupDrafter):
            raise ValueError(f"HybridDrafter lookup must be a PromptLookupDrafter, got {type(lookup).__name__}")
        if cps is not None and not isinstance(cps, CPSConfig):
            raise ValueError(f"HybridDrafter cps must be a CPSConfig or None, got {type(cps).__name__}")
        if not copy_margin >= 0:
            raise ValueError(f"HybridDrafter copy_margin must be >= 0 tokens, got {copy_margin}")
        if skip_margin is not None and (mode != "select" or not skip_margin >= 0):
            raise ValueError(f"HybridDrafter skip_margin (>= 0 tokens) is read in select mode only, got {skip_margin}")
        self.drafter, self.lookup, self.mode, self.cps = drafter, lookup, mode, cps
        self.copy_margin = float(copy_margin)
        self.skip_margin = None if skip_margin is None else float(skip_margin)
        self.feature_layers = drafter.feature_layers
        self.vocab_size = drafter.vocab_size
        self.reset()

    def reset(self) -> None:
        """A new request: the drafter forgets its state, and the estimates restart from their priors."""
        self.drafter.reset()
        self.copy_rates: dict[int, RunningRatio] = {}  # tail n-gram length -> copied tokens accepted per trial
        self.calibration = RunningRatio(1.0, 1.0)  # lattice tokens accepted / predicted (kappa)
        self.lattice_lengths = RunningRatio(0.0, 0.0)  # the lattice's capped E per drafted round (skip rule)
        self._generated_length: int | None = None  # the last draft's L^gen, reported to ADL in rounds without one
        self._last: _Proposals | None = None

    def max_length(self) -> int | None:
        return self.drafter.max_length()

    def max_draft_length(self) -> int | None:
        return self.drafter.max_draft_length()

    def copy_rate(self, match: int) -> RunningRatio:
        """``alpha_g``: the chance a copied token is accepted once the ones before it are, for a tail match of ``g``
        tokens (prior ``g / (g + 1)``)."""
        return self.copy_rates.setdefault(match, RunningRatio(match, match + 1))

    def propose(self, request: DraftRequest) -> Lattice:
        ids = request.ids.cpu()
        self._observe(ids)
        copy, match = find_match(ids, request.k, self.lookup.min_ngram, self.lookup.max_ngram)
        alpha = self.copy_rate(match).value if match else 0.0
        copy_length = expected_length(torch.full((copy.numel(),), math.log(alpha) if alpha > 0 else -math.inf))
        recent = self.lattice_lengths
        if self.skip_margin is not None and copy.numel() and recent.den > 0:
            if copy_length > recent.value + self.skip_margin:
                self._last = _Proposals(ids, copy, match, None, None)
                return self._copy(copy, request, self._generated_length)
        lattice = self.drafter.propose(request)
        self._generated_length = lattice.eos_aware_length()
        if self.mode == "merge":
            self._last = _Proposals(ids, copy, match, None, None)
            return merge_copy(lattice, copy, alpha) if copy.numel() else lattice
        path = torch.as_tensor(causal_path_search(lattice, ids, self.cps or ARGMAX), dtype=torch.long)
        path_logprobs = token_logprobs(lattice, path)
        self._last = _Proposals(ids, copy, match, path, path_logprobs)
        lattice_length = min(self.calibration.value * expected_length(path_logprobs), float(path.numel()))
        recent.update(lattice_length, 1.0)
        if copy.numel() and copy_length > lattice_length + self.copy_margin:
            return self._copy(copy, request, self._generated_length)
        return dataclasses.replace(lattice, path=path)  # the loop verifies this path without searching again

    @staticmethod
    def _copy(copy: torch.Tensor, request: DraftRequest, generated_length: int | None) -> Lattice:
        """The copy as the round's proposal; ADL keeps following the drafter's lengths (``generated_length``)."""
        chosen = Lattice.point_mass(copy, request.eos_token_ids)
        chosen.path = cut_after_eos(copy, request.eos_token_ids)
        chosen.generated_length = generated_length
        return chosen

    def _observe(self, ids: torch.Tensor) -> None:
        """Score the previous round's proposals against the tokens committed since (module doc)."""
        last, self._last = self._last, None
        n = 0 if last is None else last.ids.numel()
        if last is None or ids.numel() <= n or not torch.equal(ids[:n], last.ids):
            return  # no earlier round of this sequence
        committed = ids[n:]
        if last.copy.numel():
            accepted, horizon = agreement(last.copy, committed)
            # a miss inside the horizon is one failed trial; agreement up to it is censored, not a failure
            self.copy_rate(last.match).update(accepted, accepted + int(accepted < horizon))
        if last.path is not None and last.path.numel():
            accepted, horizon = agreement(last.path, committed)
            self.calibration.update(accepted, expected_length(last.path_logprobs[:horizon]))
