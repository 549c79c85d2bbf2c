"""Steps 1 and 2 of data generation: prompts from every supported source, checked and tokenized.

Sources: a JSONL file (``{"prompt"}``, ``{"text"}``, chat ``{"messages"}``, ShareGPT ``{"conversations"}`` or Spec-Bench
``{"question_id", "turns"}``, first turn), a Hub dataset with the same fields, or pre-tokenized ``{"prompt_ids"}`` rows.
Chat rows go through the verifier tokenizer's chat template; plain text is tokenized as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from .. import jsonl
from .config import DataGenerationConfig

CHAT_KINDS = ("messages", "conversations", "turns")  # prompt fields that go through the chat template
TEXT_KINDS = ("prompt", "text")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class PromptSpec:
    """One prompt before tokenization. ``where`` names its source line for error messages."""

    id: str
    where: str
    kind: Literal["text", "chat", "ids"]
    content: Any  # str (text), list of {"role", "content"} (chat) or list[int] (ids)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every non-blank line of a prompts file."""
    return jsonl.read_jsonl(path, "prompts file")


def _messages(value: Any, where: str, sharegpt: bool = False) -> list[dict[str, str]]:
    """Chat turns up to the last non-assistant one: the verifier writes the reply that follows."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of chat turns")
    messages = []
    for turn in value:
        if sharegpt and isinstance(turn, dict) and turn.get("from") in SHAREGPT_ROLES:
            turn = {"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")}
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            raise ValueError(f"{where}: every chat turn needs string 'role' and 'content', got {turn!r:.80}")
        messages.append({"role": turn["role"], "content": turn["content"]})
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    if not messages:
        raise ValueError(f"{where}: the conversation holds only assistant turns; nothing to prompt with")
    return messages


def spec_from_record(record: dict[str, Any], index: int, where: str, chat: bool = False) -> PromptSpec:
    """Find the prompt in a text-source row; fields are tried in the order messages, conversations, turns,
    prompt, text. The row key is its ``id`` or ``question_id`` field, else its index in the source."""
    row_id = str(record.get("id", record.get("question_id", index)))
    if "messages" in record:
        return PromptSpec(row_id, where, "chat", _messages(record["messages"], where))
    if "conversations" in record:
        return PromptSpec(row_id, where, "chat", _messages(record["conversations"], where, sharegpt=True))
    if "turns" in record:
        turns = record["turns"]
        if not (isinstance(turns, list) and turns and isinstance(turns[0], str) and turns[0]):
            raise ValueError(f"{where}: 'turns' must be a non-empty list of strings (Spec-Bench format)")
        return PromptSpec(row_id, where, "chat", [{"role": "user", "content": turns[0]}])
    for key in TEXT_KINDS:
        if key in record:
            text = record[key]
            if not isinstance(text, str) or not text:
                raise ValueError(f"{where}: '{key}' must be a non-empty string")
            if chat:
                return PromptSpec(row_id, where, "chat", [{"role": "user", "content": text}])
            return PromptSpec(row_id, where, "text", text)
    raise ValueError(
        f"{where}: no prompt field; expected one of {list(CHAT_KINDS + TEXT_KINDS)}, found {sorted(record)}"
    )


def spec_from_ids(record: dict[str, Any], index: int, where: str) -> PromptSpec:
    ids = record.get("prompt_ids")
    if not (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise ValueError(f"{where}: 'prompt_ids' must be a non-empty list of ints")
    if min(ids) < 0:
        raise ValueError(f"{where}: 'prompt_ids' holds a negative id")
    return PromptSpec(str(record.get("id", index)), where, "ids", ids)


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").upper() in ("1", "ON", "YES", "TRUE") for flag in flags)


def _hub_records(name: str, split: str, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    if not Path(name).exists() and _hub_offline():
        raise OSError(
            f"--prompts_dataset {name!r} needs the Hugging Face Hub, but offline mode is set "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); pass a local JSONL with --prompts instead"
        )
    dataset = datasets.load_dataset(name, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    yield from enumerate(dataset)


def load_prompt_specs(config: DataGenerationConfig) -> list[PromptSpec]:
    """Every prompt of the configured source, in source order, with unique ids; errors name the bad row."""
    specs: list[PromptSpec] = []
    if config.prompts_dataset is not None:
        for index, record in _hub_records(config.prompts_dataset, config.prompts_split, config.max_prompts):
            specs.append(spec_from_record(record, index, f"{config.prompts_dataset}[{index}]", config.chat))
    else:
        path = config.prompts if config.prompts is not None else config.prompt_token_ids
        for number, record in read_jsonl(path):
            if config.max_prompts is not None and len(specs) == config.max_prompts:
                break
            where = f"{path}:{number}"
            if config.prompt_token_ids is not None:
                specs.append(spec_from_ids(record, len(specs), where))
            else:
                specs.append(spec_from_record(record, len(specs), where, config.chat))
    if not specs:
        source = config.prompts or config.prompts_dataset or config.prompt_token_ids
        raise ValueError(f"{source} holds no prompts")
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.id in seen:
            raise ValueError(f"{spec.where}: id {spec.id!r} repeats {seen[spec.id]}; row ids must be unique")
        seen[spec.id] = spec.where
    return specs


def check_chat_template(specs: Sequence[PromptSpec], tokenizer: Any) -> str | None:
    """The chat template the prompts use (None if no row is a chat); fails if a chat row has no template."""
    chat = next((s for s in specs if s.kind == "chat"), None)
    if chat is None:
        return None
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not template:
        raise ValueError(f"{chat.where}: a chat prompt, but the verifier's tokenizer has no chat_template")
    return template if isinstance(template, str) else json.dumps(template, sort_keys=True)


def encode_prompt(spec: PromptSpec, tokenizer: Any) -> list[int]:
    """Token ids of one prompt: chat turns through the chat template plus the generation prompt."""
    if spec.kind == "ids":
        return list(spec.content)
    if spec.kind == "chat":
        text = tokenizer.apply_chat_template(spec.content, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids  # the template holds the special tokens
    return tokenizer(spec.content).input_ids


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt_ids: list[int]
    skip: str | None = None  # why the row is not generated (recorded in the metadata)


def prompt_row(
    spec: PromptSpec, tokenizer: Any, vocab_size: int, context: int | None, max_new_tokens: int
) -> PromptRow:
    ids = encode_prompt(spec, tokenizer)
    if not ids:
        raise ValueError(f"{spec.where}: the prompt tokenizes to nothing")
    if max(ids) >= vocab_size:
        raise ValueError(
            f"{spec.where}: prompt holds token id {max(ids)} outside the verifier vocabulary [0, {vocab_size})"
        )
    if context is not None and len(ids) + max_new_tokens > context:
        reason = f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} exceeds the context of {context}"
        return PromptRow(spec.id, ids, skip=reason)
    return PromptRow(spec.id, ids)
