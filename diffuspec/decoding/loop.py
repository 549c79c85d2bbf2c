"""The round loop: draft -> CPS -> verify -> accept -> ADL.

Each round drafts k slots, picks one path through the lattice, scores ``[pending] + path`` with one verifier
pass and keeps the longest acceptable prefix plus the verifier's own token. With ``DecodeConfig.tree`` the round
verifies a token tree around that path instead and keeps its deepest acceptable branch (``decoding.tree``).
EOS and ``max_new_tokens`` are handled exactly as plain decoding handles them: the path is cut so a round can never overshoot the budget,
and generation stops at the first emitted EOS. With no drafter the same loop is plain decoding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from ..devices import synchronize
from ..eos import as_eos_ids, cut_after_eos, model_eos_ids
from .acceptance import greedy_accept, process_logits, sample_accept
from .adl import make_controller
from .config import DecodeConfig
from .cps import causal_path_search
from .drafter import Drafter, DraftRequest
from .lattice import Lattice
from .tree import NodeBudget, TokenTree, build_tree, greedy_walk, sample_walk
from .verifier import Verifier


@dataclass
class DecodeStats:
    """Per-round records of one ``generate`` call. tau counts the verifier's own token."""

    accepted: list[int] = field(default_factory=list)  # draft tokens accepted per round
    draft_lengths: list[int] = field(default_factory=list)  # k drafted per round (0: plain step)
    path_lengths: list[int] = field(default_factory=list)  # draft tokens sent to the verifier (tree: its nodes)
    depths: list[int] = field(default_factory=list)  # deepest draft position verified (chain: the path length)
    generated_lengths: list[int] = field(default_factory=list)  # L^gen per round (EOS-aware raw length)
    new_tokens: int = 0
    time_draft_s: float = 0.0
    time_search_s: float = 0.0
    time_verify_s: float = 0.0
    time_total_s: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.accepted)

    @property
    def tau(self) -> float:
        """Tokens appended per round, the verifier's correction or bonus token included."""
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def mean_accepted(self) -> float:
        """Draft tokens accepted per round (the verifier's own token excluded)."""
        return sum(self.accepted) / self.rounds if self.rounds else 0.0

    @property
    def time_other_s(self) -> float:
        return max(0.0, self.time_total_s - self.time_draft_s - self.time_search_s - self.time_verify_s)


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # [1, prompt_len + new]
    stats: DecodeStats


#: What ``SpeculativeDecoder.from_pretrained`` builds its models with, by name: ``(verifier, drafter, config,
#: **options) -> (verifier model, drafter or None, decoding)``. ``diffuspec.drafters`` registers ``"diffuspec"``
#: (the package's import runs it), so the decoding core imports no concrete drafter.
PRETRAINED_LOADERS: dict[str, Callable[..., tuple[PreTrainedModel, Drafter | None, DecodeConfig]]] = {}


class SpeculativeDecoder:
    """Lossless speculative decoding of ``verifier_model`` with any :class:`Drafter` (None: plain decoding)."""

    def __init__(
        self,
        verifier_model: PreTrainedModel,
        drafter: Drafter | None = None,
        config: DecodeConfig | None = None,
    ) -> None:
        # No config: the defaults, with ADL within the drafter's block (from_pretrained also reads the drafter
        # folder's recommendation, which a drafter object does not carry).
        block = drafter.max_draft_length() if drafter is not None else None
        self.config = config if config is not None else DecodeConfig.for_block(block)
        self.drafter = drafter
        feature_layers = drafter.feature_layers if drafter is not None else ()
        self.verifier = Verifier(verifier_model.eval(), feature_layers=feature_layers)
        # A drafter may have fewer embedding rows than the verifier (checkpoints pad differently), never more:
        # it could then propose ids the verifier cannot score.
        if drafter is not None and drafter.vocab_size is not None and drafter.vocab_size > self.verifier.vocab_size:
            raise ValueError(
                f"drafter vocabulary ({drafter.vocab_size} ids) differs from the verifier's "
                f"({self.verifier.vocab_size} ids): the drafter could propose ids the verifier cannot score"
            )
        if block is not None and self.config.max_draft_length > block:
            raise ValueError(
                f"draft length {self.config.max_draft_length} (ADL k_max or draft_length) exceeds the drafter's "
                f"block of {block} slots"
            )
        if self.config.tree is not None:
            self.verifier.check_tree_support()
            self.budget = NodeBudget(self.config.tree)  # its measurements outlive a request
        self.controller = make_controller(self.config.adl, self.config.draft_length)

    @classmethod
    def from_pretrained(
        cls,
        verifier: str | os.PathLike,
        drafter: str | os.PathLike | None = None,
        config: DecodeConfig | None = None,
        loader: str = "diffuspec",
        **options: Any,
    ) -> SpeculativeDecoder:
        """Load a verifier and a drafter from folders or Hub ids through ``PRETRAINED_LOADERS[loader]``.

        The ``"diffuspec"`` loader (``diffuspec.drafters.load_pretrained``, whose docstring lists ``options``:
        ``dtype``, ``device_map``, ``drafter_device_map``, ``drafter_quantization``, ``draft_vocab``) knows every
        drafter kind; ``config=None`` decodes as the drafter's folder recommends, else with ADL within its block;
        without a drafter, plain decoding.
        """
        if loader not in PRETRAINED_LOADERS:
            raise ValueError(f"no pretrained loader {loader!r}; registered: {sorted(PRETRAINED_LOADERS)}")
        verifier_model, draft, config = PRETRAINED_LOADERS[loader](verifier, drafter, config, **options)
        return cls(verifier_model, draft, config)

    # -- validation -------------------------------------------------------------------------------------------

    def _check_request(
        self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
    ) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise ValueError(f"batch size must be 1, got input_ids of shape {tuple(input_ids.shape)}")
            input_ids = input_ids[0]
        if input_ids.dim() != 1 or input_ids.numel() == 0:
            raise ValueError(
                f"the prompt must hold at least one token, got input_ids of shape {tuple(input_ids.shape)}"
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        vocab = self.verifier.vocab_size
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
            raise ValueError(f"input_ids hold ids outside the verifier vocabulary [0, {vocab})")
        total = input_ids.numel() + max_new_tokens
        limit = self.verifier.max_length
        if limit is not None and total > limit:
            raise ValueError(
                f"prompt ({input_ids.numel()} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the "
                f"verifier's context of {limit} tokens"
            )
        drafter_limit = self.drafter.max_length() if self.drafter is not None else None
        if drafter_limit is not None and total - 1 + self.config.max_draft_length > drafter_limit:
            raise ValueError(
                f"prompt + max_new_tokens + draft length ({total - 1 + self.config.max_draft_length}) exceeds the "
                f"drafter's context of {drafter_limit} tokens"
            )
        return input_ids.long()

    # -- one round --------------------------------------------------------------------------------------------

    def _draft(self, ids: torch.Tensor, k: int, eos: tuple[int, ...]) -> Lattice:
        request = DraftRequest(
            ids=ids, k=k, width=self.config.draft_width, eos_token_ids=eos, features=self.verifier.features
        )
        return self.drafter.propose(request)

    def _search(self, lattice: Lattice, ids: torch.Tensor, eos: tuple[int, ...]) -> torch.Tensor:
        if lattice.path is not None:  # the drafter already searched it (a hybrid): any path keeps decoding exact
            return lattice.path
        cps = self.config.cps
        if cps is None:
            return cut_after_eos(lattice.draft, eos)
        path = causal_path_search(lattice, ids, cps)
        return torch.as_tensor(path, dtype=torch.long)

    def _tree(self, lattice: Lattice, ids: torch.Tensor, path: torch.Tensor) -> TokenTree:
        cps = self.config.cps
        proxy, lam = (cps.proxy, cps.lam) if cps is not None else (None, 1.0)
        return build_tree(
            lattice, ids, self.config.tree, path=path, proxy=proxy, lam=lam, max_nodes=self.budget.choose()
        )

    # -- generate ---------------------------------------------------------------------------------------------

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        eos_token_id: int | Sequence[int] | None = None,
    ) -> GenerateOutput:
        """Decode one prompt. At temperature 0 the output equals the verifier's greedy decoding token for token;
        above 0 its distribution equals sampling from the verifier with the same temperature, top-k and top-p."""
        prompt = self._check_request(input_ids, max_new_tokens, temperature, top_k, top_p)
        eos = as_eos_ids(eos_token_id) if eos_token_id is not None else model_eos_ids(self.verifier.model)
        device = self.verifier.device
        stats = DecodeStats()
        start = time.perf_counter()

        self.verifier.start(prompt)
        self.controller.reset()
        if self.drafter is not None:
            self.drafter.reset()
        out = [prompt.cpu()]
        ids = prompt.cpu()
        while stats.new_tokens < max_new_tokens:
            remaining = max_new_tokens - stats.new_tokens
            k = min(self.controller.k, remaining - 1) if self.drafter is not None else 0
            path = torch.empty(0, dtype=torch.long)
            tree = None
            generated_len = 0
            t0 = time.perf_counter()
            if k > 0:
                lattice = self._draft(ids, k, eos)
                synchronize(device)
                t1 = time.perf_counter()
                path = self._search(lattice, ids, eos)[:k]
                if self.config.tree is not None:
                    tree = self._tree(lattice.truncate(k), ids, path)
                generated_len = lattice.eos_aware_length()
                stats.time_draft_s += t1 - t0
                stats.time_search_s += time.perf_counter() - t1

            t2 = time.perf_counter()
            if tree is None:
                logits = self.verifier.step(path)
                if temperature == 0:
                    accepted, token = greedy_accept(path.to(logits.device), logits)
                else:
                    probs = process_logits(logits, temperature, top_k, top_p).cpu()
                    accepted, token = sample_accept(path, probs, generator)
                kept, drafted = accepted, path[:accepted]
            else:
                logits = self.verifier.step_tree(tree)
                if temperature == 0:
                    kept, token = greedy_walk(tree, logits)
                else:
                    kept, token = sample_walk(tree, process_logits(logits, temperature, top_k, top_p).cpu(), generator)
                accepted, drafted = len(kept), tree.path_tokens(kept)
            synchronize(device)
            t3 = time.perf_counter()
            stats.time_verify_s += t3 - t2
            if tree is not None:
                self.budget.update(tree, kept, overhead_s=t2 - t0, verify_s=t3 - t2)

            new = cut_after_eos(torch.cat([drafted, torch.tensor([token])]), eos)
            out.append(new)
            ids = torch.cat([ids, new])
            stats.new_tokens += new.numel()
            stats.accepted.append(accepted)
            stats.draft_lengths.append(k)
            stats.path_lengths.append(path.numel() if tree is None else tree.size)
            stats.depths.append(path.numel() if tree is None else max(tree.depths.tolist(), default=0))
            stats.generated_lengths.append(generated_len)
            if eos and int(new[-1]) in eos:
                break  # an EOS was emitted
            self.verifier.commit(kept, token)
            if k > 0:
                self.controller.update(generated_len, accepted)
        stats.time_total_s = time.perf_counter() - start
        return GenerateOutput(sequences=torch.cat(out)[None], stats=stats)
