"""ConditionedDrafter: a feature-conditioned block drafter (DFlash-style) behind the Drafter interface.

It names its verifier layers in ``feature_layers``, so the verifier hands it ``DraftRequest.features``: one row
per committed token but the newest (``[n - 1, F]``). Each round it

1. keeps the memory rows whose ids still match the committed ids (a different sequence is cropped away),
2. projects only the new feature rows into its :class:`~diffuspec.models.conditioned.ContextMemory`,
3. runs one block ``[ids[-1]] + block_size`` masks over the memory and returns the first k slots as a lattice.

So the work of a round grows with the new rows and the block, not with the prefix (attention reads aside).
``vocabulary`` scores the block with the rows of a :class:`~diffuspec.drafters.vocabulary.DraftVocabulary` only.
"""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from ..decoding.drafter import Drafter, DraftRequest
from ..decoding.lattice import Lattice
from ..loading import load_conditioned_model
from ..models.conditioned import ConditionedDrafterModel, ContextMemory
from .vocabulary import DraftVocabulary


class ConditionedDrafter(Drafter):
    def __init__(
        self,
        model: ConditionedDrafterModel,
        verifier_model: PreTrainedModel | None = None,
        vocabulary: DraftVocabulary | None = None,
    ) -> None:
        """``verifier_model`` lends its embedding and LM head (after a compatibility check); it may be omitted
        when ``model`` already has them attached."""
        self.model = model.eval()
        if verifier_model is not None:
            model.attach_verifier(verifier_model)
        if not model.has_verifier:
            raise ValueError(
                "ConditionedDrafter needs the verifier's embedding and LM head: pass verifier_model= (or call "
                "model.attach_verifier(verifier) first)"
            )
        config = model.config
        self.feature_layers = tuple(config.feature_layers)
        self.vocab_size = int(config.vocab_size)
        self.block_size = int(config.block_size)
        self.mask_token_id = int(config.mask_token_id)
        self.vocabulary = vocabulary
        self._head_rows = None
        if vocabulary is not None:
            vocabulary.check_drafter(self.vocab_size, self.mask_token_id)
            head = model.verifier_head
            self._head_rows = vocabulary.head(head.weight, head.bias)
        self.reset()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        verifier_model: PreTrainedModel,
        *,
        check_name: bool = True,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        vocabulary: DraftVocabulary | None = None,
    ) -> ConditionedDrafter:
        """Load a saved drafter (diffuspec's format or a DFlash checkpoint) and attach ``verifier_model``'s
        embedding and LM head.

        Refuses (ValueError) a verifier whose hidden size, layer count or vocabulary differs from the drafter's
        record, that lacks one of its feature layers or, with ``check_name``, that is another model: its weights
        fingerprint differs from the recorded one (whatever its path), or, for drafters saved before fingerprints,
        its name does (``diffuspec.models.conditioned.check_verifier_compatible``)."""
        model = load_conditioned_model(path, dtype=dtype, device_map=device_map)
        model.attach_verifier(verifier_model, check_name=check_name)
        return cls(model, vocabulary=vocabulary)

    def reset(self) -> None:
        self.memory: ContextMemory = self.model.new_memory()
        self.memory_ids = torch.empty(0, dtype=torch.long)  # the committed ids whose features are in the memory

    def max_length(self) -> int | None:
        """Every round runs the whole block (positions up to n - 1 + block_size), whatever k is; the decoder checks
        prefix + k <= this, so the bound subtracts block_size - 1 (the most any k <= block_size can leave out)."""
        return int(self.model.config.max_position_embeddings) - self.block_size + 1

    def max_draft_length(self) -> int:
        return self.block_size

    def _sync_memory(self, ids: torch.Tensor, features: torch.Tensor | None) -> None:
        """Make the memory cover exactly ``ids[:-1]``: crop to the prefix shared with the cached ids, then project
        the new rows of ``features`` ``[n - 1, F]``."""
        rows = ids.numel() - 1
        got = 0 if features is None else int(features.shape[0])
        if got != rows:
            raise ValueError(
                f"expected verifier features for the {rows} committed tokens before the newest, got {got} rows "
                f"(build the decoder with this drafter so the verifier returns layers {list(self.feature_layers)})"
            )
        n = min(self.memory_ids.numel(), rows)
        differs = torch.nonzero(self.memory_ids[:n] != ids[:n])
        common = int(differs[0, 0]) if differs.numel() else n
        if self.memory.length > common:
            self.memory.crop(common)
        if rows > common:
            self.model.extend_memory(self.memory, features[common:rows][None])
        self.memory_ids = ids[:rows].clone()

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> Lattice:
        if not 1 <= request.k <= self.block_size:
            raise ValueError(
                f"k={request.k} draft slots requested; this drafter was trained with block_size={self.block_size}, "
                f"so 1 <= k <= {self.block_size} (set draft_length / ADL k_max accordingly)"
            )
        ids = request.ids.cpu().long()
        self._sync_memory(ids, request.features)
        previous = request.features[-1:] if self.model.config.stem_size and ids.numel() > 1 else None  # row a - 1
        logits = self.model.draft(self.memory, ids[-1:], self._head_rows, previous)[0, : request.k].float()
        if self.vocabulary is None:
            logits[:, self.mask_token_id] = float("-inf")  # the mask token is an input marker, never a draft
        logprobs = torch.log_softmax(logits, dim=-1)
        token_ids = None if self.vocabulary is None else self.vocabulary.ids
        return Lattice.from_logprobs(logprobs.cpu(), request.width, request.eos_token_ids, token_ids)
