"""AutoregressiveDrafter: a small causal LM drafts k tokens greedily (classic SpS).

The drafter keeps its own KV cache across rounds. Each round it keeps the longest cached prefix that still
matches the committed sequence (a rejected draft is cropped away) and encodes only the rest.
"""

from __future__ import annotations

import os

import torch
from transformers import DynamicCache, PreTrainedModel

from ..decoding.drafter import Drafter, DraftRequest
from ..decoding.lattice import Lattice


class AutoregressiveDrafter(Drafter):
    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        self.reset()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
    ) -> AutoregressiveDrafter:
        """Any transformers causal LM folder or Hub id (``diffuspec.loading.load_causal_lm``)."""
        from ..loading import load_causal_lm

        return cls(load_causal_lm(path, dtype=dtype, device_map=device_map))

    def reset(self) -> None:
        self.cache: DynamicCache | None = None
        self.cached_ids = torch.empty(0, dtype=torch.long)  # tokens whose keys/values are in the cache

    def max_length(self) -> int | None:
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    def _sync(self, ids: torch.Tensor) -> torch.Tensor:
        """Crop the cache to the prefix shared with ``ids`` (leaving at least one token to feed); return the rest."""
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        n = min(self.cached_ids.numel(), ids.numel() - 1)
        differs = torch.nonzero(self.cached_ids[:n] != ids[:n])
        common = int(differs[0, 0]) if differs.numel() else n
        if self.cache.get_seq_length() > common:
            self.cache.crop(common - self.cache.get_seq_length())
        self.cached_ids = ids[:common]
        return ids[common:]

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> Lattice:
        ids = request.ids.cpu()
        feed = self._sync(ids)
        device = self.model.device
        rows = []
        for _ in range(request.k):
            logits = self.model(input_ids=feed[None].to(device), cache=self.cache, use_cache=True, logits_to_keep=1)
            self.cached_ids = torch.cat([self.cached_ids, feed])
            row = torch.log_softmax(logits.logits[0, -1].float(), dim=-1).cpu()
            rows.append(row)
            feed = row.argmax().reshape(1)
        return Lattice.from_logprobs(torch.stack(rows), request.width, request.eos_token_ids)
