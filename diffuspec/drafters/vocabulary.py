"""DraftVocabulary: the ids a drafter's LM head scores, a frequency-ranked subset of the verifier's vocabulary.

A drafter's head multiplies every draft slot by the whole embedding matrix. With a large vocabulary and a small
drafter that product is most of a draft: SmolLM2's head is 49,152 x 576, several times a decoder layer over a
block. Most rows are tokens the verifier seldom emits, so scoring only the S ids most frequent in the verifier's
own text cuts the head's cost by about V / S. A token outside the subset can no longer be drafted: the draft
stops being right where the verifier emits one, and ``coverage`` says how often that happens on held-out text.

Correctness does not depend on the subset. The verifier decides every token at T = 0 and T > 0, and the
acceptance rule never reads the drafter's probabilities (``diffuspec.decoding.acceptance``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..files import write_json

FORMAT = "diffuspec-draft-vocab-v1"


@dataclass(frozen=True, eq=False)
class DraftVocabulary:
    ids: torch.Tensor  # [S] long, ascending and unique: the verifier ids the head scores
    vocab_size: int  # size of the verifier vocabulary the ids index

    def __post_init__(self) -> None:
        ids = self.ids
        if ids.dim() != 1 or ids.numel() == 0 or ids.dtype != torch.long:
            raise ValueError(
                f"a draft vocabulary is a non-empty 1-D long tensor of ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        if bool((ids[1:] <= ids[:-1]).any()):
            raise ValueError("draft vocabulary ids must be ascending and unique")
        if int(ids[0]) < 0 or int(ids[-1]) >= self.vocab_size:
            raise ValueError(
                f"draft vocabulary ids must lie in [0, {self.vocab_size}), got {int(ids[0])}..{int(ids[-1])}"
            )

    def __len__(self) -> int:
        return int(self.ids.numel())

    @classmethod
    def from_counts(
        cls, counts: torch.Tensor, size: int, keep: Iterable[int] = (), drop: Iterable[int] = ()
    ) -> DraftVocabulary:
        """The ``size`` most frequent ids of ``counts`` [V] (ties: the lower id), plus every id of ``keep`` (EOS ids,
        so a draft can still end), never an id of ``drop`` (the mask token, which is never a draft)."""
        counts = torch.as_tensor(counts, dtype=torch.float64).clone()
        vocab_size = counts.numel()
        keep, drop = {int(i) for i in keep}, {int(i) for i in drop}
        bad = sorted(i for i in keep | drop if not 0 <= i < vocab_size)
        if bad:
            raise ValueError(f"ids {bad} are outside the vocabulary [0, {vocab_size})")
        if keep & drop:
            raise ValueError(f"ids {sorted(keep & drop)} are both kept and dropped")
        if not len(keep) <= size <= vocab_size - len(drop) or size < 1:
            raise ValueError(
                f"draft vocabulary size must be in [{max(len(keep), 1)}, {vocab_size - len(drop)}], got {size}"
            )
        counts[list(keep)] = float("inf")  # kept ids rank first, dropped ids last
        counts[list(drop)] = -1.0
        chosen = torch.argsort(-counts, stable=True)[:size]  # stable: the lower id first on ties
        return cls(chosen.sort().values, vocab_size)

    @classmethod
    def from_sequences(
        cls,
        sequences: Iterable[Sequence[int]],
        vocab_size: int,
        size: int,
        keep: Iterable[int] = (),
        drop: Iterable[int] = (),
    ) -> DraftVocabulary:
        """``from_counts`` over the token counts of ``sequences`` (for example the verifier's own answers)."""
        counts = torch.zeros(vocab_size, dtype=torch.float64)
        for sequence in sequences:
            ids = torch.as_tensor(list(sequence), dtype=torch.long)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
                raise ValueError(f"token ids must lie in [0, {vocab_size}), got {int(ids.min())}..{int(ids.max())}")
            counts += torch.bincount(ids, minlength=vocab_size).double()
        return cls.from_counts(counts, size, keep, drop)

    def coverage(self, tokens: Sequence[int] | torch.Tensor) -> float:
        """The fraction of ``tokens`` inside the subset: the share of verifier tokens a drafter can still draft."""
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        if tokens.numel() == 0:
            raise ValueError("coverage needs at least one token")
        return float(torch.isin(tokens, self.ids).double().mean())

    def check_drafter(self, vocab_size: int, mask_token_id: int) -> None:
        """Refuse a drafter this subset does not fit: another vocabulary size, or its mask token among the ids."""
        if self.vocab_size != vocab_size:
            raise ValueError(f"the draft vocabulary indexes {self.vocab_size} ids, the drafter has {vocab_size}")
        if bool((self.ids == mask_token_id).any()):
            raise ValueError(f"the draft vocabulary holds the mask token {mask_token_id}, which is never drafted")

    def head(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rows of an LM head ``weight`` [V, H] (and ``bias``) for the subset, copied once so every draft reads
        a contiguous [S, H] matrix."""
        if weight.shape[0] != self.vocab_size:
            raise ValueError(f"the LM head has {weight.shape[0]} rows, the draft vocabulary indexes {self.vocab_size}")
        ids = self.ids.to(weight.device)
        rows = weight.detach()[ids].contiguous()
        return rows, None if bias is None else bias.detach()[ids].contiguous()

    def columns(self) -> torch.Tensor:
        """``[vocab_size]`` map from a full id to its column among the subset's head rows, -1 for ids outside it
        (the targets a drafter with this subset can never propose)."""
        index = torch.full((self.vocab_size,), -1, dtype=torch.long)
        index[self.ids] = torch.arange(len(self.ids))
        return index

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {"format": FORMAT, "vocab_size": self.vocab_size, "ids": self.ids.tolist()}, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DraftVocabulary:
        try:
            raw = json.loads(open(path, encoding="utf-8").read())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read a draft vocabulary from {path}: {error}") from error
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{path} is not a draft vocabulary (expected format {FORMAT!r})")
        return cls(torch.tensor(raw["ids"], dtype=torch.long), int(raw["vocab_size"]))


def vocabulary_from_dataset(
    dataset_path: str | os.PathLike, verifier: str | os.PathLike, size: int, exclude: Iterable[int] = ()
) -> tuple[DraftVocabulary, float]:
    """A draft vocabulary from the verifier's answers in a ``diffuspec.datagen`` dataset (their ``completion_ids``),
    the verifier's EOS ids kept and ``exclude`` (the drafter's mask id) left out, with its coverage of answers it
    was not built from: built first from the first 90% of the rows and measured on the rest."""
    from datasets import load_from_disk

    from ..eos import folder_eos_ids
    from ..loading import config_vocab_size, resolve_local

    folder = resolve_local(verifier)
    answers = list(load_from_disk(str(dataset_path))["completion_ids"])
    if len(answers) < 2:
        raise ValueError(f"{dataset_path} holds {len(answers)} answer(s); a draft vocabulary needs at least 2")
    settings = dict(vocab_size=config_vocab_size(folder), size=size, keep=folder_eos_ids(folder), drop=tuple(exclude))
    cut = max(1, len(answers) * 9 // 10)
    held_out = [t for answer in answers[cut:] for t in answer]
    coverage = DraftVocabulary.from_sequences(answers[:cut], **settings).coverage(held_out)
    return DraftVocabulary.from_sequences(answers, **settings), coverage
