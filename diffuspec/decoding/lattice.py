"""The lattice: what every drafter hands to the path search.

A lattice holds, for each of the k draft slots, the drafter's best candidates sorted by log-prob
(top-M ids and values), the log-prob of each EOS id (CPS always keeps EOS), and the raw argmax draft.
``branches`` are whole token paths the drafter vouches for apart from the per-slot marginals (a copied
continuation): a token tree holds each of them as its own branch, whatever its score. A drafter that already ran
the decoder's path search (a hybrid scores the path it would verify) hands that ``path`` over, so the loop does not
search twice; one that proposes for another drafter (a hybrid's copy) reports that drafter's ``generated_length``,
so ADL follows the lattice drafter's own lengths.
Keeping only the top M per slot makes a lattice cheap to build and to move for any vocabulary size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Lattice:
    ids: torch.Tensor  # [k, M] long, candidates per slot, best first
    logprobs: torch.Tensor  # [k, M] float32, their log-probs (natural log), descending
    eos_logprobs: torch.Tensor  # [k, E] float32, log-prob of each EOS id (E may be 0)
    eos_token_ids: tuple[int, ...]
    draft: torch.Tensor  # [k] long, raw per-slot argmax
    branches: tuple[torch.Tensor, ...] = ()  # [<= k] long paths a token tree inserts whole (none: marginals only)
    path: torch.Tensor | None = None  # [<= k] long, the decoder's CPS path when the drafter already searched it
    generated_length: int | None = None  # L^gen to report to ADL instead of this lattice's own (eos_aware_length)

    @property
    def k(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def from_logprobs(
        cls,
        logprobs: torch.Tensor,
        width: int,
        eos_token_ids: Sequence[int] = (),
        token_ids: torch.Tensor | None = None,
    ) -> Lattice:
        """Build from per-slot log-probs ``[k, C]``; keeps the ``width`` best ids per slot. Column j is token j, or
        ``token_ids[j]`` when the drafter scores a subset of the vocabulary (ascending ids; an EOS id outside it
        gets log-prob -inf)."""
        if logprobs.dim() != 2:
            raise ValueError(f"logprobs must be [k, V], got shape {tuple(logprobs.shape)}")
        logprobs = logprobs.float()
        width = min(width, logprobs.shape[-1])
        values, columns = torch.topk(logprobs, width, dim=-1)  # sorted, best first
        eos = tuple(int(e) for e in eos_token_ids)
        if token_ids is None:
            ids = columns
            eos_lp = logprobs[:, list(eos)] if eos else logprobs.new_zeros((logprobs.shape[0], 0))
        else:
            token_ids = token_ids.to(columns.device)
            ids = token_ids[columns]
            eos_lp = logprobs.new_full((logprobs.shape[0], len(eos)), float("-inf"))
            for j, e in enumerate(eos):
                column = int(torch.searchsorted(token_ids, e))
                if column < token_ids.numel() and int(token_ids[column]) == e:
                    eos_lp[:, j] = logprobs[:, column]
        return cls(ids=ids, logprobs=values, eos_logprobs=eos_lp, eos_token_ids=eos, draft=ids[:, 0].clone())

    @classmethod
    def point_mass(cls, tokens: Sequence[int] | torch.Tensor, eos_token_ids: Sequence[int] = ()) -> Lattice:
        """A lattice that puts all mass on one token per slot (copy-based and sampled drafts)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        eos = tuple(int(e) for e in eos_token_ids)
        eos_lp = torch.full((tokens.numel(), len(eos)), float("-inf"))
        for j, e in enumerate(eos):
            eos_lp[tokens == e, j] = 0.0
        return cls(
            ids=tokens[:, None].clone(),
            logprobs=torch.zeros(tokens.numel(), 1),
            eos_logprobs=eos_lp,
            eos_token_ids=eos,
            draft=tokens.clone(),
        )

    def truncate(self, k: int) -> Lattice:
        branches = tuple(b[:k] for b in self.branches)
        path = None if self.path is None else self.path[:k]
        generated = None if self.generated_length is None else min(self.generated_length, k)
        return Lattice(
            self.ids[:k], self.logprobs[:k], self.eos_logprobs[:k], self.eos_token_ids, self.draft[:k], branches,
            path, generated,
        )  # fmt: skip

    def eos_aware_length(self) -> int:
        """L^gen, the EOS-aware generated length: slots before the first raw-argmax EOS, or k without one
        (``generated_length`` when set)."""
        if self.generated_length is not None:
            return self.generated_length
        if self.eos_token_ids:
            is_eos = torch.isin(self.draft, torch.tensor(self.eos_token_ids, dtype=self.draft.dtype))
            hits = torch.nonzero(is_eos)
            if hits.numel():
                return int(hits[0, 0])
        return self.k
