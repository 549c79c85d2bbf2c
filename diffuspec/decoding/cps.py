"""Causal-consistency path search (CPS).

The drafter's per-slot marginals ignore what the other slots will hold, so the raw argmax draft can repeat or
skip words. CPS re-ranks paths through the lattice with a causal proxy LM:

    score(pi) = sum_i [ lam * log q_i(pi_i) + (1 - lam) * log P(pi_i | context ++ pi_<i) ]

over candidate sets pruned to the top of each slot, with EOS always kept. A path ends at
its first EOS; a full-length path without EOS is also a terminal. Two searches:

- ``beam``: the paper's left-to-right beam of width B. Finished hypotheses keep their frozen score and
  stay in the beam, competing with live ones.
- ``dp``: an exact Viterbi over states = the last ``order - 1`` tokens of an n-gram proxy, used to
  measure how far the beam is from optimal.

``length_norm='mean'`` ranks a path by ``score / len(path)`` instead of its sum. Live hypotheses at one step all
have the same length, so it only changes how finished paths rank against live ones and against each other.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch

from ..eos import cut_after_eos
from .config import CPSConfig
from .lattice import Lattice
from .proxy import CausalProxy

# Slack on the cumulative mass test, so that float32 rounding cannot push a slot past its last candidate.
_MASS_TOL = 1e-6

Candidates = list[tuple[list[int], list[float]]]  # per slot: (ids, drafter log-probs)


def prune(lattice: Lattice, mass: float, m_max: int) -> Candidates:
    """Per slot, the shortest best-first list reaching cumulative probability ``mass``, capped at ``m_max``.

    Every EOS id of the lattice is appended with its own log-prob when absent, so a slot keeps at most
    ``m_max + len(eos)`` candidates. Candidates with log-prob ``-inf`` can never be on a finite-score path and
    are dropped, except that the best one always stays so that every slot has a candidate.
    """
    if lattice.k == 0:
        return []
    cum = lattice.logprobs.double().exp().cumsum(dim=-1)  # [k, M]
    sizes = ((cum < mass - _MASS_TOL).sum(dim=-1) + 1).clamp(max=m_max).tolist()
    ids, logprobs, eos_logprobs = lattice.ids.tolist(), lattice.logprobs.tolist(), lattice.eos_logprobs.tolist()
    out: Candidates = []
    for i, size in enumerate(sizes):
        cand = list(zip(ids[i][:size], logprobs[i][:size], strict=True))
        kept = {t for t, _ in cand}
        cand += [(e, lp) for e, lp in zip(lattice.eos_token_ids, eos_logprobs[i], strict=True) if e not in kept]
        finite = [c for c in cand if c[1] > -math.inf] or cand[:1]
        out.append(([t for t, _ in finite], [lp for _, lp in finite]))
    return out


def causal_path_search(
    logprobs: torch.Tensor | Lattice,
    context: Sequence[int] | torch.Tensor,
    config: CPSConfig,
    proxy: CausalProxy | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> list[int]:
    """Pick the draft path to verify.

    Args:
        logprobs: ``[k, V]`` drafter log-probs, or a ``Lattice``.
        context: committed token ids (sequence or 1-D tensor); the proxy conditions on it.
        config: CPS settings; ``proxy`` (when given) overrides ``config.proxy``.
        eos_token_id: EOS id(s). With a ``Lattice`` the default is its ``eos_token_ids``; other ids are an error,
            since the lattice has no log-probs for them.

    Returns:
        The path as a list of ints: at most k tokens, ending at its first EOS if it has one, and at least one
        token when k >= 1. Without a proxy or with ``lam == 1`` it is the raw argmax cut after its first EOS.
    """
    lattice = _as_lattice(logprobs, config, eos_token_id)
    proxy = proxy if proxy is not None else config.proxy
    eos = frozenset(lattice.eos_token_ids)
    if config.truncate_at_raw_eos:
        lattice = lattice.truncate(lattice.eos_aware_length() + 1)
    if lattice.k == 0:
        return []
    if proxy is None or config.lam == 1.0:
        return cut_after_eos(lattice.draft.tolist(), eos)

    context = context.tolist() if isinstance(context, torch.Tensor) else list(context)
    order = getattr(proxy, "order", None)  # None: not an n-gram model
    if order is not None:  # an n-gram proxy reads only the last order - 1 tokens
        context = context[max(len(context) - (order - 1), 0) :]
    candidates = prune(lattice, config.mass, config.m_max)
    if config.search == "dp":
        if order is None:
            raise ValueError("CPSConfig.search='dp' needs an n-gram proxy (proxy.order is None); use 'beam'")
        return _viterbi(candidates, context, proxy, eos, config.lam, config.length_norm)
    return _beam_search(candidates, context, proxy, eos, config.lam, config.beam, config.length_norm)


def _as_lattice(
    logprobs: torch.Tensor | Lattice, config: CPSConfig, eos_token_id: int | Sequence[int] | None
) -> Lattice:
    eos = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id or ())
    if not isinstance(logprobs, Lattice):
        return Lattice.from_logprobs(logprobs, width=config.m_max, eos_token_ids=eos)
    if eos_token_id is not None and set(eos) != set(logprobs.eos_token_ids):
        raise ValueError(
            f"eos_token_id {eos} differs from the lattice's eos_token_ids {logprobs.eos_token_ids}; "
            "build the lattice with these EOS ids"
        )
    return logprobs


def _rank(score: float, length: int, length_norm: str) -> float:
    return score / length if length_norm == "mean" and length else score


def _beam_search(
    candidates: Candidates,
    context: list[int],
    proxy: CausalProxy,
    eos: frozenset[int],
    lam: float,
    width: int,
    length_norm: str,
) -> list[int]:
    """Left-to-right beam: at most ``k * B * |C_i|`` proxy look-ups."""
    beams: list[tuple[float, list[int], bool]] = [(0.0, [], False)]  # (score, tokens, done)
    for ids, logqs in candidates:
        new = [b for b in beams if b[2]]  # finished hypotheses keep their frozen score
        for score, tokens, done in beams:
            if done:
                continue
            history = context + tokens
            for v, logq in zip(ids, logqs, strict=True):
                s = score + lam * logq + (1.0 - lam) * proxy.logprob(history, v)
                new.append((s, tokens + [v], v in eos))
        beams = heapq.nlargest(width, new, key=lambda b: _rank(b[0], len(b[1]), length_norm))
        if all(b[2] for b in beams):
            break
    return max(beams, key=lambda b: _rank(b[0], len(b[1]), length_norm))[1]


def _viterbi(
    candidates: Candidates,
    context: list[int],
    proxy: CausalProxy,
    eos: frozenset[int],
    lam: float,
    length_norm: str,
) -> list[int]:
    """Exact maximiser over the pruned lattice for an order-n proxy.

    The proxy term at slot i depends only on the last ``n - 1`` tokens of ``context ++ pi_<i`` (the whole of it
    while it is shorter), so that tuple is the state and the best-scoring path into each state is all we keep.
    EOS is absorbing: a path reaching it is a terminal. Every terminal at slot i has length i, so keeping the
    best raw score per state is also exact under ``length_norm='mean'``. Paths are kept as backpointer chains
    ``(token, parent)`` to avoid copying lists per transition.
    """
    keep = proxy.order - 1
    start = tuple(context[max(len(context) - keep, 0) :]) if keep else ()
    live: dict[tuple[int, ...], tuple[float, tuple | None]] = {start: (0.0, None)}
    best_rank, best_chain = -math.inf, None
    for i, (ids, logqs) in enumerate(candidates, start=1):
        nxt: dict[tuple[int, ...], tuple[float, tuple | None]] = {}
        for state, (score, chain) in live.items():
            for v, logq in zip(ids, logqs, strict=True):
                s = score + lam * logq + (1.0 - lam) * proxy.logprob(state, v)
                if v in eos:
                    r = _rank(s, i, length_norm)
                    if best_chain is None or r > best_rank:
                        best_rank, best_chain = r, (v, chain)
                    continue
                to = (state + (v,))[-keep:] if keep else ()
                if to not in nxt or s > nxt[to][0]:
                    nxt[to] = (s, (v, chain))
        live = nxt
    for score, chain in live.values():  # full-length paths without EOS
        r = _rank(score, len(candidates), length_norm)
        if best_chain is None or r > best_rank:
            best_rank, best_chain = r, chain
    path: list[int] = []
    while best_chain is not None:
        path.append(best_chain[0])
        best_chain = best_chain[1]
    return path[::-1]
