"""PromptLookupDrafter: copy the continuation of an earlier occurrence of the current n-gram.

No model: the last ``n`` tokens (n from ``max_ngram`` down to ``min_ngram``) are searched in the prompt and
the output so far, and the tokens that followed the earliest match are drafted as point masses.
"""

from __future__ import annotations

import numpy as np
import torch

from ..decoding.drafter import Drafter, DraftRequest
from ..decoding.lattice import Lattice


def find_match(ids: torch.Tensor, k: int, min_ngram: int, max_ngram: int) -> tuple[torch.Tensor, int]:
    """Up to k tokens that followed the earliest occurrence of the longest matching tail n-gram, and that n-gram's
    length (empty and 0: no match).

    The earliest match leaves the longest continuation: in a repeating stretch it copies several periods. One pass
    finds every earlier occurrence of the newest token; each longer size only filters those (numpy: a round's
    lookup costs microseconds, not a dozen tensor calls).
    """
    tokens = ids.numpy()
    n = tokens.shape[0]
    ends = np.flatnonzero(tokens[: n - 1] == tokens[n - 1]) if n > 1 else np.empty(0, dtype=np.int64)
    best, size = None, 0  # ends of the matches of the longest size so far
    for length in range(1, min(max_ngram, n - 1) + 1):
        if length > 1:
            ends = ends[ends >= length - 1]
            ends = ends[tokens[ends - (length - 1)] == tokens[n - length]]
        if not ends.size:
            break
        if length >= min_ngram:
            best, size = ends, length
    if best is None:
        return ids[:0], 0
    begin = int(best[0]) + 1
    return ids[begin : begin + k], size


class PromptLookupDrafter(Drafter):
    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram}, max_ngram={max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, request: DraftRequest) -> Lattice:
        tokens, _ = find_match(request.ids.cpu(), request.k, self.min_ngram, self.max_ngram)
        return Lattice.point_mass(tokens, request.eos_token_ids)
