"""The verifier: any transformers causal LM, driven through its KV cache.

Invariant: the cache holds every committed token except the newest one (the *pending* token). Each call
feeds ``[pending] + path`` and returns the m + 1 next-token logits ``p_1..p_{m+1}``; ``commit`` then crops
the cache to the accepted part, so no accepted token is ever encoded twice. Plain decoding is the same
call with an empty path, which keeps the speculative loop and its baseline on one code path.

If a drafter asks for verifier features, the hidden states of the chosen layers are taken from these same
forward passes (no extra pass) and cropped together with the cache. They are appended to a buffer that doubles
when full, so a round copies only its own rows, whatever the prefix length.

A token tree (``diffuspec.decoding.tree``) goes through the same cache: ``step_tree`` feeds the pending token and
every node with a 4D mask (each node sees the cache, the pending token and its ancestors) and positions by depth,
and ``commit`` then keeps the accepted nodes' rows only, moved next to the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .tree import TokenTree

# Attention implementations that apply a custom 4D mask as given (flash attention ignores it).
TREE_ATTENTION = ("eager", "sdpa")


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

    def check_tree_support(self) -> None:
        """Trees need a 4D mask the attention honours and a cache whose rows can be moved: refuse others early."""
        attention = getattr(self.model.config, "_attn_implementation", None)
        if attention not in TREE_ATTENTION:
            raise ValueError(
                f"tree verification needs attn_implementation in {list(TREE_ATTENTION)}, the verifier uses "
                f"{attention!r}; load it with attn_implementation='sdpa'"
            )
        kinds = {type(layer).__name__ for layer in DynamicCache(config=self.model.config).layers}
        if kinds - {DynamicLayer.__name__}:
            raise ValueError(
                f"tree verification needs full-attention cache layers, the verifier's cache has {sorted(kinds)} "
                "(sliding-window layers drop rows a tree's compaction needs)"
            )

    @torch.inference_mode()
    def _forward(self, tokens: torch.Tensor, logits_to_keep: int, **kwargs) -> torch.Tensor:
        self.forward_lengths.append(tokens.numel())
        out = self.model(
            input_ids=tokens[None],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            output_hidden_states=bool(self.feature_layers),
            **kwargs,
        )
        if self.feature_layers:
            self._append_features(torch.cat([out.hidden_states[i][0] for i in self.feature_layers], dim=-1))
        return out.logits[0]

    def start(self, prompt: torch.Tensor) -> None:
        """Prefill all prompt tokens but the last, which becomes the pending token."""
        self.cache = DynamicCache(config=self.model.config)
        self.cache.activate_past_recording()  # sliding-window layers keep a round's rows until commit crops them
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

    def step_tree(self, tree: TokenTree) -> torch.Tensor:
        """Score every node of ``tree`` in one pass; returns logits [N + 1, V], row 0 after the pending token and
        row i + 1 after node i."""
        tokens = torch.cat([torch.tensor([self.pending]), tree.tokens]).to(self.device)
        self._committed = committed = self.cache.get_seq_length()
        positions = committed + torch.cat([torch.zeros(1, dtype=torch.long), tree.depths]).to(self.device)
        dtype = self.model.dtype
        mask = torch.zeros((1, 1, tokens.numel(), committed + tokens.numel()), dtype=dtype, device=self.device)
        mask[0, 0, :, committed:].masked_fill_(~tree.ancestors().to(self.device), torch.finfo(dtype).min)
        return self._forward(tokens, logits_to_keep=tokens.numel(), attention_mask=mask, position_ids=positions[None])

    @torch.inference_mode()
    def commit(self, accepted: int | Sequence[int], next_token: int) -> None:
        """Keep the pending token and the accepted draft tokens in the cache; ``next_token`` becomes pending.

        ``accepted`` counts the path's first tokens after ``step``, or lists the accepted nodes after ``step_tree``
        (their rows are moved next to the prefix when they are not already the first ones)."""
        nodes = list(range(accepted)) if isinstance(accepted, int) else list(accepted)
        keep = self._committed + 1 + len(nodes)
        if nodes != list(range(len(nodes))):
            rows = torch.tensor(nodes, device=self.device) + self._committed + 1
            for layer in self.cache.layers:
                layer.keys[..., self._committed + 1 : keep, :] = layer.keys[..., rows, :]
                layer.values[..., self._committed + 1 : keep, :] = layer.values[..., rows, :]
            if self._feature_buffer is not None:
                self._feature_buffer[self._committed + 1 : keep] = self._feature_buffer[rows]
        extra = self.cache.get_seq_length() - keep
        self.cache.crop(-extra)  # crop(0) too: it trims sliding-window layers back to their window
        self._feature_rows = min(self._feature_rows, keep)
        self.pending = int(next_token)
