"""DiffusionDrafter: a masked-diffusion LM drafts a whole block in one forward pass.

Input is ``prefix ++ [MASK] * k``; every masked slot gets a distribution from the same pass. Dream-style
models keep the AR shift (slot s is read from output row s - 1), LLaDA-style models do not (row s). With
``steps > 1`` the most confident still-masked slots are committed after each pass and the model runs again;
committed slots become point masses in the final lattice.

``context_window`` lets the drafter read only the last W committed tokens. The drafter has no KV cache (its
prefix attends to the masks), so each pass costs O(prefix); on small verifiers, where one verifier step is
cheap, a bounded window keeps the draft affordable. RoPE attention depends only on relative positions, so
a window sees the same local geometry as the full prefix.

``vocabulary`` (a :class:`~diffuspec.drafters.vocabulary.DraftVocabulary`) scores only a subset of the ids: the
decoder's final states go through those rows of the LM head alone, which is most of a small drafter's cost when the
vocabulary is large.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..decoding.drafter import Drafter, DraftRequest
from ..decoding.lattice import Lattice
from ..loading import load_diffusion_model
from .vocabulary import DraftVocabulary

# Config fields that change logits after the LM head; a draft vocabulary computes the head itself, so it refuses them.
HEAD_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def check_bidirectional(model: PreTrainedModel) -> None:
    """Refuse a causal model: changing the last input token must change the first position's logits."""
    device = model.device
    a = torch.tensor([[0, 1]], device=device)
    b = torch.tensor([[0, 2]], device=device)
    with torch.inference_mode():
        first_a = model(input_ids=a).logits[0, 0]
        first_b = model(input_ids=b).logits[0, 0]
    if torch.equal(first_a, first_b):
        raise ValueError(
            f"{type(model).__name__} is causal: position 0 ignores later tokens. A diffusion drafter needs "
            "bidirectional attention (for transformers decoder classes, set config.is_causal = False)."
        )


class DiffusionDrafter(Drafter):
    def __init__(
        self,
        model: PreTrainedModel,
        mask_token_id: int,
        shifted: bool = True,
        steps: int = 1,
        context_window: int | None = None,
        check_attention: bool = True,
        vocabulary: DraftVocabulary | None = None,
    ) -> None:
        self.model = model.eval()
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        if not 0 <= mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the drafter vocabulary [0, {self.vocab_size})")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if context_window is not None and context_window < 1:
            raise ValueError(f"context_window must be >= 1 or None, got {context_window}")
        if check_attention:
            check_bidirectional(model)
        self.mask_token_id = int(mask_token_id)
        self.shifted = bool(shifted)
        self.steps = int(steps)
        self.context_window = context_window
        self.vocabulary = vocabulary
        self._head = None if vocabulary is None else self._vocabulary_head(vocabulary)

    def _vocabulary_head(self, vocabulary: DraftVocabulary) -> tuple[torch.Tensor, torch.Tensor | None]:
        vocabulary.check_drafter(self.vocab_size, self.mask_token_id)
        text_config = self.model.config.get_text_config()
        changed = [k for k in HEAD_POSTPROCESSING if getattr(text_config, k, None) not in (None, 1.0)]
        if changed:
            raise ValueError(f"a draft vocabulary needs a plain LM head; this model post-processes logits ({changed})")
        head = self.model.get_output_embeddings()
        return vocabulary.head(head.weight, head.bias)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        steps: int = 1,
        context_window: int | None = None,
        quantization: str | None = None,
        vocabulary: DraftVocabulary | None = None,
        **load_kwargs,
    ) -> DiffusionDrafter:
        """Load a Dream, LLaDA or diffuspec drafter; mask id and shift convention come from the checkpoint.

        ``quantization="8bit"`` / ``"4bit"`` loads the weights through bitsandbytes (see ``load_diffusion_model``).
        """
        model, mask_token_id, shifted = load_diffusion_model(path, quantization=quantization, **load_kwargs)
        return cls(
            model, mask_token_id, shifted=shifted, steps=steps, context_window=context_window, vocabulary=vocabulary
        )

    def max_length(self) -> int | None:
        if self.context_window is not None:
            return None  # the window keeps every pass inside the model's context
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    def _slot_logprobs(self, x: torch.Tensor, n: int, k: int) -> torch.Tensor:
        """One pass over x [n + k]; log-probs [k, C] of the k slots over the C scored ids (the whole vocabulary but
        the mask token, or the draft vocabulary)."""
        keep = k + 1 if self.shifted else k
        if self._head is None:
            logits = self.model(input_ids=x[None], logits_to_keep=keep).logits[0]
        else:
            states = self.model.get_decoder()(input_ids=x[None]).last_hidden_state[0, -keep:]
            logits = F.linear(states, *self._head)
        rows = logits[:-1] if self.shifted else logits  # slot s reads row s - 1 (shifted) or row s
        rows = rows.float()
        if self._head is None:
            rows[:, self.mask_token_id] = float("-inf")
        return torch.log_softmax(rows, dim=-1)

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> Lattice:
        ids = request.ids if self.context_window is None else request.ids[-self.context_window :]
        n, k = ids.numel(), request.k
        device = self.model.device
        x = torch.cat([ids.to(device), torch.full((k,), self.mask_token_id, device=device)])
        committed = torch.zeros(k, dtype=torch.bool, device=x.device)
        columns = torch.zeros(k, dtype=torch.long, device=x.device)  # the committed slots' columns of logprobs
        per_step = math.ceil(k / self.steps)
        for step in range(self.steps):
            logprobs = self._slot_logprobs(x, n, k)
            if step == self.steps - 1:
                break
            confidence, best = logprobs.max(dim=-1)
            confidence[committed] = float("-inf")
            chosen = torch.topk(confidence, min(per_step, int((~committed).sum()) - 1)).indices
            x[n + chosen] = best[chosen] if self.vocabulary is None else self.vocabulary.ids.to(device)[best[chosen]]
            columns[chosen] = best[chosen]
            committed[chosen] = True
        if committed.any():  # committed slots are point masses on their token
            logprobs[committed] = float("-inf")
            logprobs[committed.nonzero()[:, 0], columns[committed]] = 0.0
        token_ids = None if self.vocabulary is None else self.vocabulary.ids
        return Lattice.from_logprobs(logprobs.cpu(), request.width, request.eos_token_ids, token_ids)
