"""Chat prompts the verifier writes itself, steered over the kinds of work a chat benchmark asks for.

A chat model continues its own template's user header (everything a user turn is laid out with, up to its first
content token) with a plausible user request: the "Magpie" self-instruct idea. A short steering text after the
header (``STEERS``) spreads the requests over Spec-Bench's six kinds of work (writing and roleplay, reasoning,
coding, translation, summarization, factual questions, math word problems, answering from a passage) without
reading Spec-Bench: the steers are generic openings, and the written requests are the model's own.

``self_instruct_prompts`` samples in batches (temperature ``T``, nucleus ``top_p``), each batch seeded by
``(seed, batch index)``; batches are appended to a JSONL journal, so a killed run resumes with the batches it had.
Requests that did not end their turn within ``max_tokens`` are dropped. ``PromptFilter`` then keeps one of each
normalised text and drops any that shares a long word n-gram with a held-out benchmark (near-duplicates included),
so no evaluated turn can leak into training.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..jsonl import read_jsonl
from ..training.collator import left_pad
from .shards import repair_shard

SENTINEL = "\u2063SELF-INSTRUCT\u2063"  # an invisible separator pair no template contains
#: kind of work -> steering openings written after the user header (the model writes the rest of the request)
STEERS: dict[str, tuple[str, ...]] = {
    "writing": ("Write", "Compose", "Draft an email", "Write a short story", "Write a blog post"),
    "roleplay": ("Imagine you are", "Pretend to be", "You are a", "Act as"),
    "reasoning": ("Explain why", "Why do", "What would happen if", "Compare"),
    "coding": ("Write a Python function", "How do I", "Fix this code:", "Write a program that"),
    "translation": (
        "Translate the following sentence into English:",
        "Translate from German to English:",
        "Translate into French:",
    ),  # fmt: skip
    "summarization": ("Summarize the following article:", "Give a short summary of this text:"),
    "qa": ("What is", "Who was", "When did", "How does", "Where is"),
    "math": ("Solve this math problem:", "A farmer has", "If a train", "Calculate"),
    "rag": ("Read the passage below and answer the question.", "Based on the following text,"),
}
_WORDS = re.compile(r"[a-z0-9]+")


def user_header(tokenizer: Any) -> str:
    """The text a user turn starts with under the chat template, before its content (system preamble included)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False)
    if SENTINEL not in text:
        raise ValueError("the chat template does not lay out a user turn's content verbatim")
    return text.split(SENTINEL)[0]


def _steer_plan(count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (kind, steer) pairs, kinds in equal shares, steers cycled, the order shuffled by ``seed``."""
    kinds = list(STEERS)
    plan = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        plan.append((kind, STEERS[kind][(i // len(kinds)) % len(STEERS[kind])]))
    generator = torch.Generator().manual_seed(seed)
    return [plan[i] for i in torch.randperm(count, generator=generator).tolist()]


def _batch_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"self-instruct:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def self_instruct_prompts(
    model: torch.nn.Module,
    tokenizer: Any,
    count: int,
    journal: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    max_tokens: int = 96,
    temperature: float = 1.0,
    top_p: float = 0.95,
) -> list[dict[str, str]]:
    """``{"id", "kind", "prompt"}`` rows the model wrote after its user header (see the module docstring); at most
    ``count`` (unfinished requests are dropped), resumed from ``journal``."""
    from transformers import GenerationConfig

    if count < 1 or batch_size < 1 or max_tokens < 1:
        raise ValueError(f"count, batch_size and max_tokens must be >= 1, got {count}, {batch_size}, {max_tokens}")
    if not 0 < top_p <= 1 or temperature <= 0:
        raise ValueError(f"need temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}")
    header = user_header(tokenizer)
    end_of_turn = tokenizer.eos_token_id
    journal = Path(journal)
    repair_shard(journal)  # a write killed midway leaves a torn last line: that batch is generated again
    done = {int(row["batch"]): row["rows"] for _, row in read_jsonl(journal)} if journal.is_file() else {}
    plan = _steer_plan(count, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn
    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_tokens,
        eos_token_id=end_of_turn, pad_token_id=pad,
    )  # fmt: skip
    journal.parent.mkdir(parents=True, exist_ok=True)
    with journal.open("a", encoding="utf-8") as handle:
        for index, start in enumerate(range(0, count, batch_size)):
            if index in done:
                continue
            chunk = plan[start : start + batch_size]
            batch = left_pad([tokenizer(header + steer, add_special_tokens=False).input_ids for _, steer in chunk], pad)
            width = batch["input_ids"].shape[1]
            torch.manual_seed(_batch_seed(seed, index))
            with torch.inference_mode():  # generate derives the positions from the mask
                out = model.generate(
                    batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=config
                )
            rows = []
            for i, ((kind, steer), generated) in enumerate(zip(chunk, out[:, width:].tolist(), strict=True)):
                if end_of_turn not in generated:
                    continue  # the request did not end its turn: cut mid-sentence
                text = steer + tokenizer.decode(generated[: generated.index(end_of_turn)], skip_special_tokens=True)
                rows.append({"id": f"si{start + i}", "kind": kind, "prompt": text.strip()})
            handle.write(json.dumps({"batch": index, "rows": rows}) + "\n")
            handle.flush()
            done[index] = rows
    return [row for index in sorted(done) for row in done[index]]


def normalise(text: str) -> str:
    """Lower-case words and digits joined by single spaces: what two copies of a prompt have in common."""
    return " ".join(_WORDS.findall(text.lower()))


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class PromptFilter:
    """Keeps the first of each normalised prompt and drops every prompt sharing an ``n``-word sequence with a held-out
    text (``heldout``: e.g. every Spec-Bench turn), which catches copies and near-duplicates alike."""

    heldout: Iterable[str]
    n: int = 8
    _banned: set[tuple[str, ...]] = field(init=False, repr=False)
    _heldout_texts: set[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n < 3:
            raise ValueError(f"n must be >= 3 (shorter word sequences are common phrases), got {self.n}")
        heldout = list(self.heldout)
        self._banned = set().union(*(word_ngrams(text, self.n) for text in heldout))
        self._heldout_texts = {normalise(text) for text in heldout}

    def leaks(self, text: str) -> bool:
        """True when ``text`` is a held-out text or shares an ``n``-word sequence with one."""
        return normalise(text) in self._heldout_texts or not word_ngrams(text, self.n).isdisjoint(self._banned)

    def __call__(self, rows: Sequence[dict[str, Any]], key: str = "prompt") -> list[dict[str, Any]]:
        seen: set[str] = set()
        kept = []
        for row in rows:
            norm = normalise(row[key])
            if not norm or norm in seen or self.leaks(row[key]):
                continue
            seen.add(norm)
            kept.append(row)
        return kept
