"""The verifier: any transformers causal LM, driven through its KV cache.

Invariant: the cache holds every committed token except the newest one (the *pending* token). Each call
feeds ``[pending] + path`` and returns the m + 1 next-token logits ``p_1..p_{m+1}``; ``commit`` then crops
the cache to the accepted part, so no accepted token is ever encoded twice. Plain decoding is the same
call with an empty path, which keeps the speculative loop and its baseline on one code path.

If a drafter asks for verifier features, the hidden states of the chosen layers are taken from these same
forward passes (no extra pass) and cropped together with the cache. They are appended to a buffer that doubles
when full, so a round copies only its own rows, whatever the prefix length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel


class Verifier:
    def __init__(self, model: PreTrainedModel, feature_layers: Sequence[int] = ()) -> None:
        self.model = model
        self.feature_layers = tuple(int(i) for i in feature_layers)
        num_layers = model.config.get_text_config().num_hidden_layers
        for layer in self.feature_layers:
            if not 0 <= layer <= num_layers:
                raise ValueError(f"feature layer {layer} outside 0..{num_layers} (0 is the embedding output)")
        self.forward_lengths: list[int] = []  # tokens fed to each forward pass (prefill included)
        self.cache: DynamicCache | None = None
        self._feature_buffer: torch.Tensor | None = None  # [capacity, F]; rows < _feature_rows are valid
        self._feature_rows = 0
        self.pending: int | None = None

    @property
    def features(self) -> torch.Tensor | None:
        """``[committed - 1, F]``: the feature layers' hidden states of every cached token (None without layers)."""
        return None if self._feature_buffer is None else self._feature_buffer[: self._feature_rows]

    def _append_features(self, new: torch.Tensor) -> None:
        rows = self._feature_rows + new.shape[0]
        if self._feature_buffer is None or rows > self._feature_buffer.shape[0]:
            grown = new.new_empty((max(2 * rows, 256), new.shape[1]))
            if self._feature_rows:
                grown[: self._feature_rows] = self._feature_buffer[: self._feature_rows]
            self._feature_buffer = grown
        self._feature_buffer[self._feature_rows : rows] = new
        self._feature_rows = rows

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    @property
    def max_length(self) -> int | None:
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def _forward(self, tokens: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        self.forward_lengths.append(tokens.numel())
        out = self.model(
            input_ids=tokens[None],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            output_hidden_states=bool(self.feature_layers),
        )
        if self.feature_layers:
            self._append_features(torch.cat([out.hidden_states[i][0] for i in self.feature_layers], dim=-1))
        return out.logits[0]

    def start(self, prompt: torch.Tensor) -> None:
        """Prefill all prompt tokens but the last, which becomes the pending token."""
        self.cache = DynamicCache(config=self.model.config)
        self._feature_buffer, self._feature_rows = None, 0
        self.forward_lengths = []
        prompt = prompt.to(self.device)
        if prompt.numel() > 1:
            self._forward(prompt[:-1], logits_to_keep=1)
        self.pending = int(prompt[-1])

    def step(self, path: torch.Tensor) -> torch.Tensor:
        """Score ``path`` [m] in one pass; returns logits [m + 1, V] for the m + 1 next positions."""
        tokens = torch.cat([torch.tensor([self.pending], device=self.device), path.to(self.device)])
        self._committed = self.cache.get_seq_length()
        return self._forward(tokens, logits_to_keep=tokens.numel())

    def commit(self, accepted: int, next_token: int) -> None:
        """Keep the pending token and ``accepted`` path tokens in the cache; ``next_token`` becomes pending."""
        keep = self._committed + 1 + accepted
        extra = self.cache.get_seq_length() - keep
        if extra > 0:
            self.cache.crop(-extra)
            self._feature_rows = min(self._feature_rows, keep)
        self.pending = int(next_token)
