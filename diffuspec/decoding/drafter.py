"""The drafter interface.

A drafter turns the committed sequence into a :class:`~diffuspec.decoding.lattice.Lattice` of k slots.
It is a two-method interface, ``reset`` (a new request starts) and ``propose`` (draft one round), so that
drafters of very different kinds run through the same loop:

- stateless drafters (the diffusion drafter re-reads prefix + masks every round, prompt lookup);
- drafters that keep their own cache (an autoregressive drafter): ``propose`` receives the whole committed
  sequence every round and keeps whatever prefix of its cache still matches it;
- drafters that read the verifier's hidden states: they name the verifier layers they want in
  ``feature_layers`` and receive those states for every committed position in ``DraftRequest.features``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .lattice import Lattice


@dataclass
class DraftRequest:
    ids: torch.Tensor  # [n] long: prompt followed by every committed token
    k: int  # number of slots to draft
    width: int  # candidates to keep per slot in the lattice (top-M)
    eos_token_ids: tuple[int, ...]
    features: torch.Tensor | None = None  # [n - 1, F]: verifier states of ids[:-1] (the newest is not encoded yet)


class Drafter(ABC):
    #: Verifier layers whose hidden states this drafter reads (empty: none; the verifier then returns none).
    feature_layers: tuple[int, ...] = ()

    #: Largest token id + 1 this drafter can emit; the decoder checks it against the verifier before work.
    vocab_size: int | None = None

    def reset(self) -> None:  # noqa: B027 - an optional hook: stateless drafters have nothing to forget
        """Forget any per-request state; called before each request."""

    @abstractmethod
    def propose(self, request: DraftRequest) -> Lattice:
        """Draft ``request.k`` slots after ``request.ids``."""

    def max_length(self) -> int | None:
        """Longest prefix + draft the drafter's model can read (None: unbounded)."""
        return None

    def max_draft_length(self) -> int | None:
        """Most slots one proposal can hold (None: any); block drafters have a fixed block size."""
        return None
