"""PromptLookupDrafter: copy the continuation of an earlier occurrence of the current n-gram.

No model: the last ``n`` tokens (n from ``max_ngram`` down to ``min_ngram``) are searched in the prompt and
the output so far, and the tokens that followed the earliest match are drafted as point masses.
"""

from __future__ import annotations

import torch

from ..decoding.drafter import Drafter, DraftRequest
from ..decoding.lattice import Lattice


def find_continuation(ids: torch.Tensor, k: int, min_ngram: int, max_ngram: int) -> torch.Tensor:
    """Up to k tokens that followed the earliest occurrence of the longest matching tail n-gram.

    The earliest match leaves the longest continuation: in a repeating stretch it copies several periods.
    """
    n = ids.numel()
    for size in range(min(max_ngram, n - 1), min_ngram - 1, -1):
        tail = ids[n - size :]
        windows = ids[: n - 1].unfold(0, size, 1)  # every n-gram that ends before the last token
        starts = torch.nonzero((windows == tail).all(dim=-1))[:, 0]
        if starts.numel():
            begin = int(starts[0]) + size
            return ids[begin : begin + k]
    return ids[:0]


class PromptLookupDrafter(Drafter):
    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram}, max_ngram={max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, request: DraftRequest) -> Lattice:
        tokens = find_continuation(request.ids.cpu(), request.k, self.min_ngram, self.max_ngram)
        return Lattice.point_mass(tokens, request.eos_token_ids)
