"""Causal proxy LMs over token ids for the CPS path score.

A proxy scores ``log P(token | context)`` in natural log, where both are verifier token ids: each id is one
"word", so the proxy and the lattice use the same units. ``order`` is the n-gram order (the proxy reads at
most the last ``order - 1`` context tokens), or ``None`` for a proxy that is not an n-gram model; the exact
DP search needs it.

Sentence starts: n-gram models are fitted with one ``<s>`` before each sequence (as KenLM's ``lmplz`` does).
A context shorter than ``order - 1`` is read as the whole history since that start, so it is prefixed with
``<s>``; a longer one is cut to its last ``order - 1`` tokens.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import torch

from ..files import atomic_write_text

_BOS = -1  # internal id of <s>: never a real token id, never predicted
_LOG10 = math.log(10.0)
_ARPA_ZERO = -99.0  # log10 "probability" of symbols the model never predicts (<s>, </s>, <unk>)
_FORMAT = "diffuspec-ngram-v1"


@runtime_checkable
class CausalProxy(Protocol):
    order: int | None

    def logprob(self, context: Sequence[int], token: int) -> float: ...


def _as_list(context: Sequence[int] | torch.Tensor) -> Sequence[int]:
    return context.tolist() if isinstance(context, torch.Tensor) else context


class UniformProxy:
    """log P = -log V for every token: a proxy that never changes the ranking (a control)."""

    order = 1

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self._logp = -math.log(vocab_size)

    def logprob(self, context: Sequence[int], token: int) -> float:
        return self._logp


class NGramProxy:
    """Token-id n-gram LM with interpolated Kneser-Ney smoothing (one discount per order).

    ``P_n(w | h) = max(c(hw) - D_n, 0) / c(h.) + D_n N1+(h.) / c(h.) * P_{n-1}(w | h')``, down to a uniform
    over ``vocab_size`` ids, so every id gets non-zero mass and every context sums to one. ``c`` is the raw
    count at the highest order and for n-grams that start with ``<s>``; otherwise it is the number of distinct
    left extensions (the continuation count). A context never seen at order n falls through to order n-1.
    """

    def __init__(
        self, order: int, vocab_size: int, counts: list[dict[tuple[int, ...], int]], discounts: list[float]
    ) -> None:
        """``counts[n-1]`` maps n-grams (tuples, ``-1`` = ``<s>``) to adjusted counts; ``discounts[n-1]`` is D_n."""
        if order < 1 or vocab_size < 1:
            raise ValueError(f"order and vocab_size must be >= 1, got {order} and {vocab_size}")
        if len(counts) != order or len(discounts) != order:
            raise ValueError(f"need {order} count tables and discounts, got {len(counts)} and {len(discounts)}")
        if not all(0.0 < d < 1.0 for d in discounts):
            raise ValueError(f"discounts must be in (0, 1), got {discounts}")
        self.order = order
        self.vocab_size = vocab_size
        self.counts = counts
        self.discounts = discounts

        # Unigrams, interpolated with the uniform (fit() leaves out <s>: it is never predicted).
        uni = {g[0]: c for g, c in counts[0].items()}
        total = sum(uni.values())
        floor = (discounts[0] * len(uni) / total if total else 1.0) / vocab_size
        self._unigram = [floor] * vocab_size
        for w, c in uni.items():
            self._unigram[w] += max(c - discounts[0], 0.0) / total
        # _contexts[m]: context of length m -> (c(h.), interpolation weight, {w: c(hw)}), for order m + 1.
        self._contexts: list[dict[tuple[int, ...], tuple[float, float, dict[int, int]]]] = [{}]
        for n in range(2, order + 1):
            grouped: dict[tuple[int, ...], dict[int, int]] = defaultdict(dict)
            for g, c in counts[n - 1].items():
                grouped[g[:-1]][g[-1]] = c
            d = discounts[n - 1]
            self._contexts.append({h: (sum(f.values()), d * len(f) / sum(f.values()), f) for h, f in grouped.items()})
        self._cached_logprob = functools.lru_cache(maxsize=1 << 20)(self._logprob_uncached)

    # -- fitting ----------------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, sequences: Iterable[Sequence[int]], vocab_size: int, order: int = 3, discount: float | None = None
    ) -> NGramProxy:
        """Count n-grams of each sequence (with one ``<s>`` before it) and fit the discounts.

        ``discount=None`` uses Ney's estimate ``D_n = n1 / (n1 + 2 n2)`` from the count-of-counts of order n,
        and 0.5 where a tiny corpus has no singletons or no doubletons.
        """
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        raw: list[dict[tuple[int, ...], int]] = [defaultdict(int) for _ in range(order)]
        for seq in sequences:
            seq = [int(t) for t in _as_list(seq)]
            if not seq:
                continue
            if min(seq) < 0 or max(seq) >= vocab_size:
                raise ValueError(f"token ids must be in [0, {vocab_size}), got min {min(seq)} max {max(seq)}")
            padded = [_BOS, *seq]
            for n in range(1, order + 1):
                for i in range(len(padded) - n + 1):
                    raw[n - 1][tuple(padded[i : i + n])] += 1

        # Adjusted counts: raw at the top order and after <s>, distinct left extensions elsewhere.
        counts: list[dict[tuple[int, ...], int]] = [dict(raw[-1])]
        for n in range(order - 1, 0, -1):
            left: dict[tuple[int, ...], int] = defaultdict(int)
            for g in raw[n]:
                left[g[1:]] += 1
            counts.insert(0, {g: (c if g[0] == _BOS else left[g]) for g, c in raw[n - 1].items()})
        counts[0].pop((_BOS,), None)

        discounts = []
        for table in counts:
            if discount is not None:
                discounts.append(float(discount))
                continue
            n1 = sum(1 for c in table.values() if c == 1)
            n2 = sum(1 for c in table.values() if c == 2)
            discounts.append(n1 / (n1 + 2 * n2) if n1 and n2 else 0.5)
        return cls(order, vocab_size, counts, discounts)

    # -- scoring ----------------------------------------------------------------------------------------------

    def logprob(self, context: Sequence[int] | torch.Tensor, token: int) -> float:
        """Natural-log ``P(token | context)``; cached, since CPS asks for the same pairs many times per round."""
        n = self.order - 1
        if n == 0:
            return self._cached_logprob((), token)
        context = _as_list(context)
        key = tuple(context[-n:]) if len(context) >= n else (_BOS, *context)
        return self._cached_logprob(key, token)

    def _logprob_uncached(self, context: tuple[int, ...], token: int) -> float:
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token id {token} is outside [0, {self.vocab_size})")
        return math.log(self._prob(context, token))

    def _prob(self, context: tuple[int, ...], token: int) -> float:
        """Interpolate from the unigram up through ever longer context suffixes (``-1`` = ``<s>``)."""
        p = self._unigram[token]
        for m in range(1, len(context) + 1):
            stats = self._contexts[m].get(context[-m:])
            if stats is None:  # a longer suffix cannot have been seen either
                break
            total, weight, follow = stats
            p = max(follow.get(token, 0) - self.discounts[m], 0.0) / total + weight * p
        return p

    # -- files ------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the counts and discounts as JSON, atomically (temp file, then ``os.replace``)."""
        payload = {
            "format": _FORMAT,
            "order": self.order,
            "vocab_size": self.vocab_size,
            "discounts": self.discounts,
            "counts": [[[list(g), c] for g, c in table.items()] for table in self.counts],
        }
        atomic_write_text(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NGramProxy:
        with open(path) as f:
            payload = json.load(f)
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a {_FORMAT} file (format={payload.get('format')!r})")
        counts = [{tuple(g): c for g, c in table} for table in payload["counts"]]
        return cls(payload["order"], payload["vocab_size"], counts, payload["discounts"])

    def to_arpa(self, path: str | os.PathLike) -> None:
        """Write a standard ARPA file (log10 probabilities and backoff weights) that KenLM can load.

        Interpolated KN maps exactly onto back-off form: a listed n-gram stores its interpolated probability,
        and its backoff weight is its interpolation weight as a context. Every id in ``[0, vocab_size)`` is
        listed as a unigram, so KenLM reproduces ``logprob`` for every token. ``<s>``, ``</s>`` and ``<unk>``
        are required by KenLM but never predicted here, so they get log10 probability -99.
        """

        def word(t: int) -> str:
            return "<s>" if t == _BOS else str(t)

        def backoff(gram: tuple[int, ...]) -> str:
            if len(gram) >= self.order or gram not in self._contexts[len(gram)]:
                return ""
            return f"\t{math.log10(self._contexts[len(gram)][gram][1]):.7f}"

        def log10p(gram: tuple[int, ...]) -> float:
            return min(math.log10(self._prob(gram[:-1], gram[-1])), 0.0)

        ngrams_per_order = [sorted(table) for table in self.counts]
        ngrams_per_order[0] = [(t,) for t in range(self.vocab_size)]  # every id, seen or not
        lines = ["", "\\data\\", f"ngram 1={self.vocab_size + 3}"]
        lines += [f"ngram {n}={len(grams)}" for n, grams in enumerate(ngrams_per_order[1:], start=2)]
        for n, grams in enumerate(ngrams_per_order, start=1):
            lines += ["", f"\\{n}-grams:"]
            if n == 1:
                lines += [f"{_ARPA_ZERO}\t<s>{backoff((_BOS,))}", f"{_ARPA_ZERO}\t</s>", f"{_ARPA_ZERO}\t<unk>"]
            lines += [f"{log10p(g):.7f}\t{' '.join(map(word, g))}{backoff(g)}" for g in grams]
        lines += ["", "\\end\\", ""]
        atomic_write_text(path, "\n".join(lines))


class KenLMProxy:
    """A KenLM model (ARPA or binary) whose words are token ids written as decimal strings.

    Requires the optional ``kenlm`` package. Scores are KenLM's log10 values converted to natural log.
    ``vocab_size`` is informational (KenLM maps ids it does not know to ``<unk>``).
    """

    def __init__(self, path: str | os.PathLike, vocab_size: int | None = None) -> None:
        try:
            import kenlm
        except ImportError as e:
            raise ImportError("KenLMProxy needs the kenlm package: pip install kenlm") from e
        self._kenlm = kenlm
        self._model = kenlm.Model(str(path))
        self.order: int = self._model.order
        self.vocab_size = vocab_size
        self._cached_logprob = functools.lru_cache(maxsize=1 << 20)(self._logprob_uncached)

    def logprob(self, context: Sequence[int] | torch.Tensor, token: int) -> float:
        """Natural-log ``P(token | context)`` from the last ``order - 1`` tokens (from ``<s>`` if shorter)."""
        n = self.order - 1
        context = _as_list(context)
        at_start = len(context) < n
        key = tuple(context) if at_start else tuple(context[len(context) - n :])
        return self._cached_logprob(at_start, key, token)

    def _logprob_uncached(self, at_start: bool, context: tuple[int, ...], token: int) -> float:
        state, out = self._kenlm.State(), self._kenlm.State()
        if at_start:
            self._model.BeginSentenceWrite(state)
        else:
            self._model.NullContextWrite(state)
        for t in context:
            self._model.BaseScore(state, str(t), out)
            state, out = out, state
        return self._model.BaseScore(state, str(token), out) * _LOG10


def load_proxy(path: str | os.PathLike) -> CausalProxy:
    """A diffuspec n-gram ``.json`` or a KenLM ``.arpa`` / ``.bin`` / ``.klm`` file, by its extension."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"proxy file {path} does not exist")
    return KenLMProxy(path) if path.endswith((".arpa", ".bin", ".klm")) else NGramProxy.load(path)
