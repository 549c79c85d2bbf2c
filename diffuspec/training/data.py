"""Drafter training data: the verifier's own continuations of a prompt set, optionally with its top-K log-probs.

``generate_dataset`` (launched by ``train/generate_data.py``) runs five steps:

1. Prompts, checked before any model loads: a JSONL file (``{"prompt"}``, ``{"text"}``, chat ``{"messages"}``,
   ShareGPT ``{"conversations"}`` or Spec-Bench ``{"question_id", "turns"}``, first turn), a Hub dataset with the
   same fields, or pre-tokenized ``{"prompt_ids"}`` rows. Chat rows go through the verifier tokenizer's chat
   template; plain text is tokenized as is (with the tokenizer's own special tokens, e.g. a BOS).
2. Process ``rank`` of ``world`` takes rows ``rank::world``. Prompts that cannot fit ``max_new_tokens`` in the
   verifier's context are skipped and recorded in the metadata, never silently truncated.
3. The verifier continues each row, one at a time, by plain decoding through ``SpeculativeDecoder`` (exact,
   the same code path as every baseline) or, on request, vLLM. Row ``id`` samples with a generator seeded by
   ``(seed, id)``, so its completion does not depend on sharding or resumption.
4. Rows are appended in chunks to ``OUT.shards/rank-R-of-W.jsonl``, one write and fsync per chunk. A kill can only
   tear the last line, which the owner drops on restart; ids already in any shard are skipped.
5. Each rank marks its shard done; rank 0 waits for every marker (a file, not a collective barrier: ranks may
   finish hours apart) and merges the shards in prompt order into a ``datasets`` folder (``save_to_disk`` into a
   temporary folder renamed to OUT) with ``metadata.json``: generation parameters, skipped rows, versions.

Dataset schema (``dataset_features``): ``id`` (str), ``prompt_ids`` and ``completion_ids`` (list[int32]; the
completion ends with EOS when the verifier emitted one) and, with ``teacher_topk = K > 0``,
``teacher_topk_ids`` (list[list[int32]]) and ``teacher_topk_logprobs`` (list[list[float32]]): for completion
token t, the K largest entries of ``log_softmax(logits)`` of ``p(. | prompt, completion[:t])`` at temperature 1
(the verifier's raw distribution, as ``OnlineTeacher`` computes it), largest first.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import torch

from .. import jsonl
from ..decoding.cps import cut_after_eos
from ..hub import resolve_local
from .collator import left_pad

logger = logging.getLogger(__name__)

SCHEMA = "diffuspec-data-v1"
METADATA_FILE = "metadata.json"
PARAMS_FILE = "params.json"  # in the shards folder: what a resumed run must match
CHAT_KINDS = ("messages", "conversations", "turns")  # prompt fields that go through the chat template
TEXT_KINDS = ("prompt", "text")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED_RULE = "row generator seed = blake2b-64('{seed}:{id}') & (2**63 - 1)"
TEACHER_DISTRIBUTION = "top-K of log_softmax(verifier logits) at temperature 1, float32, teacher-forced"


@dataclass
class DataGenerationConfig:
    """Flags of ``train/generate_data.py``: one prompt source, the verifier, sampling and output."""

    verifier: str = field(metadata={"help": "Verifier folder or Hub id (also gives the tokenizer)."})
    out: str = field(metadata={"help": "Output datasets folder (save_to_disk); replaced atomically at the end."})
    prompts: str | None = field(
        default=None,
        metadata={"help": "JSONL of {prompt}, {text}, {messages}, {conversations} or Spec-Bench {turns} rows."},
    )
    prompts_dataset: str | None = field(
        default=None, metadata={"help": "Hub dataset name with the same fields (needs network)."}
    )
    prompts_split: str = field(default="train", metadata={"help": "Split of --prompts_dataset."})
    prompt_token_ids: str | None = field(
        default=None, metadata={"help": "JSONL of {prompt_ids: [...]} rows, for pipelines that tokenize themselves."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts (null: all)."})
    chat: bool = field(
        default=False, metadata={"help": "Also wrap plain prompt/text rows as one user turn in the chat template."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per prompt (EOS stops early)."})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy; > 0: sampling at this temperature."})
    top_k: int | None = field(default=None, metadata={"help": "Sampling only: keep the k most likely tokens."})
    top_p: float | None = field(default=None, metadata={"help": "Sampling only: nucleus mass in (0, 1]."})
    seed: int = field(
        default=0, metadata={"help": "Base seed; row `id` samples with a generator seeded by (seed, id)."}
    )
    teacher_topk: int = field(
        default=0, metadata={"help": "Store the verifier's top-K log-probs per completion token (0: none)."}
    )
    chunk_size: int = field(default=16, metadata={"help": "Rows per shard append (a kill loses at most one chunk)."})
    backend: Literal["diffuspec", "transformers", "vllm"] = field(
        default="diffuspec",
        metadata={
            "help": "diffuspec: exact plain decoding, batch 1; transformers: batched generate, one batch per chunk "
            "(greedy only); vllm: needs vLLM installed."
        },
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM only: GPUs per model replica."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Verifier weight dtype (auto: as stored)."}
    )
    cpu: bool = field(default=False, metadata={"help": "Run on CPU even if an accelerator is present."})
    shards_dir: str | None = field(
        default=None, metadata={"help": "Where shard JSONL files go (null: OUT.shards); keep it to resume/extend."}
    )

    def __post_init__(self) -> None:
        sources = [s for s in (self.prompts, self.prompts_dataset, self.prompt_token_ids) if s is not None]
        _check(len(sources) == 1, "give exactly one of --prompts, --prompts_dataset, --prompt_token_ids")
        _check(self.max_prompts is None or self.max_prompts >= 1, f"max_prompts must be >= 1, got {self.max_prompts}")
        _check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        _check(self.top_k is None or self.top_k >= 1, f"top_k must be >= 1 or null, got {self.top_k}")
        _check(self.top_p is None or 0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1] or null, got {self.top_p}")
        _check(
            self.temperature > 0 or (self.top_k is None and self.top_p is None),
            "top_k / top_p only apply when sampling: set --temperature > 0 or drop them",
        )
        _check(self.teacher_topk >= 0, f"teacher_topk must be >= 0 (0: none), got {self.teacher_topk}")
        _check(self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}")
        _check(
            self.backend in ("diffuspec", "transformers", "vllm"),
            f"backend must be diffuspec, transformers or vllm, got {self.backend!r}",
        )
        _check(
            self.backend != "transformers" or self.temperature == 0,
            "--backend transformers generates greedily only (batched sampling could not reproduce per-row seeds); "
            "use --backend diffuspec to sample",
        )
        _check(self.dtype in DTYPES, f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        _check(self.tensor_parallel_size >= 1, f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        _check(
            self.backend == "vllm" or self.tensor_parallel_size == 1,
            "tensor_parallel_size applies to --backend vllm only",
        )

    @property
    def shards(self) -> Path:
        return Path(self.shards_dir) if self.shards_dir is not None else Path(f"{self.out}.shards")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def dataset_features(teacher_topk: int) -> datasets.Features:
    """The exact schema of a generated dataset (see the module docstring)."""
    columns = {
        "id": datasets.Value("string"),
        "prompt_ids": datasets.List(datasets.Value("int32")),
        "completion_ids": datasets.List(datasets.Value("int32")),
    }
    if teacher_topk > 0:
        columns["teacher_topk_ids"] = datasets.List(datasets.List(datasets.Value("int32")))
        columns["teacher_topk_logprobs"] = datasets.List(datasets.List(datasets.Value("float32")))
    return datasets.Features(columns)


# ---------------------------------------------------------------- step 1: prompts


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


# ---------------------------------------------------------------- step 2: rows of this rank


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


def row_seed(seed: int, row_id: str) -> int:
    """A per-row seed from (seed, id) alone: the same row samples the same way on any rank, in any run."""
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def resolve_eos_ids(verifier_path: str, tokenizer: Any) -> tuple[int, ...]:
    """The verifier's generation-config EOS ids (what ``generate`` stops on), else the tokenizer's EOS."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(verifier_path)
    except OSError:  # no generation_config.json: transformers derives one from config.json
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(verifier_path))
    eos = generation.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


# ---------------------------------------------------------------- step 3: generation backends


def teacher_topk(
    model: torch.nn.Module, prompt_ids: Sequence[int], completion_ids: Sequence[int], k: int
) -> tuple[list[list[int]], list[list[float]]]:
    """The verifier's top-k log-probs for each completion token, by one teacher-forced pass.

    Row t is ``log_softmax`` of the logits after ``prompt + completion[:t]`` (computed in float32 or wider),
    so the pass reads ``prompt + completion[:-1]`` and keeps the last ``len(completion)`` positions.
    """
    tokens = torch.tensor(list(prompt_ids) + list(completion_ids[:-1]), device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=tokens[None], logits_to_keep=len(completion_ids)).logits[0]  # [C, V]
    logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return ids.tolist(), values.float().tolist()


def make_record(row: PromptRow, completion: list[int], topk: tuple[list, list] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": row.id, "prompt_ids": row.prompt_ids, "completion_ids": completion}
    if topk is not None:
        record["teacher_topk_ids"], record["teacher_topk_logprobs"] = topk
    return record


class DecoderBackend:
    """Plain decoding through our KV-cached verifier, one row at a time: exact and sharding-independent."""

    def __init__(self, model: torch.nn.Module, config: DataGenerationConfig, eos: tuple[int, ...]) -> None:
        from ..decoding.loop import SpeculativeDecoder

        self.decoder = SpeculativeDecoder(model)
        self.model, self.config, self.eos = model, config, eos

    def __call__(self, rows: Sequence[PromptRow]) -> list[dict[str, Any]]:
        return [self._one(row) for row in rows]

    def _one(self, row: PromptRow) -> dict[str, Any]:
        c = self.config
        out = self.decoder.generate(
            torch.tensor(row.prompt_ids),
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_k=c.top_k,
            top_p=c.top_p,
            generator=torch.Generator().manual_seed(row_seed(c.seed, row.id)),
            eos_token_id=self.eos,
        )
        completion = out.sequences[0, len(row.prompt_ids) :].tolist()
        topk = teacher_topk(self.model, row.prompt_ids, completion, c.teacher_topk) if c.teacher_topk else None
        return make_record(row, completion, topk)


class BatchedBackend:
    """Greedy continuations of a whole chunk in one left-padded ``generate`` call: several times faster than batch 1
    on a CPU. Padding changes the floating-point sums, so a near-tie argmax can differ from batch-1 decoding;
    fine for training data, which is why the exact backend stays the default."""

    def __init__(self, model: torch.nn.Module, config: DataGenerationConfig, eos: tuple[int, ...], pad: int) -> None:
        self.model, self.config, self.eos, self.pad = model, config, eos, pad

    def __call__(self, rows: Sequence[PromptRow]) -> list[dict[str, Any]]:
        from transformers import GenerationConfig

        batch = left_pad([list(row.prompt_ids) for row in rows], self.pad)  # generate derives the positions
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        width = input_ids.shape[1]
        greedy = GenerationConfig(
            do_sample=False,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=list(self.eos) or None,
            pad_token_id=self.pad,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                generation_config=greedy,
            )
        records = []
        for row, generated in zip(rows, out[:, width:].tolist(), strict=True):
            completion = cut_after_eos(generated, self.eos)  # the rest is padding
            k = self.config.teacher_topk
            topk = teacher_topk(self.model, row.prompt_ids, completion, k) if k else None
            records.append(make_record(row, completion, topk))
        return records


class VLLMBackend:
    """vLLM generation (batched per chunk, per-row seeds) with raw top-K log-probs. Untested in CI.

    Needs vLLM >= 0.10.2 for ``logprobs_mode="raw_logprobs"``. Outputs are not bit-identical to the diffuspec
    backend: vLLM's kernels and batching may break argmax ties differently. One process; use
    ``tensor_parallel_size`` for several GPUs.
    """

    def __init__(self, verifier_path: str, config: DataGenerationConfig, eos: tuple[int, ...]) -> None:
        import vllm

        self.vllm, self.config, self.eos = vllm, config, eos
        extra = {"logprobs_mode": "raw_logprobs", "max_logprobs": max(config.teacher_topk, 20)}
        self.llm = vllm.LLM(
            model=verifier_path,
            dtype=config.dtype,
            seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size,
            **(extra if config.teacher_topk else {}),
        )

    def _params(self, row: PromptRow) -> Any:
        c = self.config
        return self.vllm.SamplingParams(
            n=1,
            temperature=c.temperature,
            top_k=c.top_k or -1,
            top_p=c.top_p or 1.0,
            max_tokens=c.max_new_tokens,
            seed=row_seed(c.seed, row.id),
            stop_token_ids=list(self.eos),
            logprobs=c.teacher_topk or None,
            detokenize=False,
        )

    def _topk(self, position_logprobs: list[dict[int, Any]]) -> tuple[list[list[int]], list[list[float]]]:
        """vLLM adds the sampled token to each position's top-K; keep ranks 1..K, best first."""
        ids, values = [], []
        for entries in position_logprobs:
            best = sorted(
                (lp.rank, token, lp.logprob) for token, lp in entries.items() if lp.rank <= self.config.teacher_topk
            )
            ids.append([token for _, token, _ in best])
            values.append([float(v) for _, _, v in best])
        return ids, values

    def __call__(self, rows: Sequence[PromptRow]) -> list[dict[str, Any]]:
        prompts = [{"prompt_token_ids": row.prompt_ids} for row in rows]
        outputs = self.llm.generate(prompts, [self._params(row) for row in rows], use_tqdm=False)
        records = []
        for row, output in zip(rows, outputs, strict=True):
            sample = output.outputs[0]
            topk = self._topk(sample.logprobs) if self.config.teacher_topk else None
            records.append(make_record(row, list(sample.token_ids), topk))
        return records


def check_backend(config: DataGenerationConfig, world_size: int) -> None:
    """Fail before any work when the asked backend cannot run; there is no fallback to the other one."""
    if config.backend != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ImportError("--backend vllm needs vLLM, which is not installed: pip install 'diffuspec[vllm]'")
    if world_size > 1:
        raise ValueError(
            f"--backend vllm runs as one process (got {world_size}); vLLM batches itself, and "
            "--tensor_parallel_size spreads one model over several GPUs"
        )


def build_backend(config: DataGenerationConfig, verifier_path: str, eos: tuple[int, ...], device: Any):
    if config.backend == "vllm":
        return VLLMBackend(verifier_path, config, eos)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(verifier_path, dtype=DTYPES[config.dtype], device_map=device)
    if config.backend == "transformers":
        return BatchedBackend(model.eval(), config, eos, pad=eos[0] if eos else 0)
    return DecoderBackend(model.eval(), config, eos)


# ---------------------------------------------------------------- step 4: shards


@dataclass(frozen=True)
class ShardEntry:
    """Where one finished row sits in the shards (read back by offset at merge time)."""

    path: Path
    offset: int
    length: int
    prompt_digest: str
    skip: str | None


def shard_path(shards: Path, rank: int, world_size: int) -> Path:
    return shards / f"rank-{rank:05d}-of-{world_size:05d}.jsonl"


def done_marker(shards: Path, rank: int, world_size: int) -> Path:
    """Written by a rank when its shard is complete; rank 0 waits for all of them before merging."""
    return shard_path(shards, rank, world_size).with_suffix(".done")


def wait_for_shards(shards: Path, world_size: int, poll_s: float = 1.0) -> None:
    """Wait on the file system rather than a collective barrier: ranks may finish hours apart, far beyond a
    process group's timeout. A crashed rank ends the whole launch (torchrun / accelerate), so this cannot hang."""
    logged = False
    while missing := [r for r in range(world_size) if not done_marker(shards, r, world_size).exists()]:
        if not logged:
            logger.info("waiting for ranks %s to finish their shards", missing)
            logged = True
        time.sleep(poll_s)


def prompt_digest(prompt_ids: Sequence[int]) -> str:
    return hashlib.blake2b(json.dumps(list(prompt_ids)).encode(), digest_size=8).hexdigest()


def repair_shard(path: Path) -> int:
    """Cut a torn last line (no trailing newline: a write killed midway) off the owner's shard; bytes dropped."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    with path.open("rb+") as handle:
        end = size
        while end > 0:  # scan back to the last newline
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            cut = block.rfind(b"\n")
            if cut != -1:
                end = start + cut + 1
                break
            end = start
        if end < size:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return size - end


def append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append a chunk as one write followed by fsync: after a kill the file ends in whole lines or one torn line."""
    if not records:
        return
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    with path.open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def scan_shards(shards: Path) -> dict[str, ShardEntry]:
    """Index every complete row of every shard (any world size). An unterminated last line is ignored; a
    complete line that is not a record is corruption and an error. The first copy of a repeated id wins."""
    index: dict[str, ShardEntry] = {}
    for path in sorted(shards.glob("rank-*.jsonl")):
        offset = 0
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    break  # torn tail of a killed write
                try:
                    record = json.loads(line)
                    row_id, prompt = record["id"], record["prompt_ids"]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{path}:{number}: corrupt shard line ({error}); delete the file to redo it"
                    ) from error
                if row_id not in index:
                    index[row_id] = ShardEntry(path, offset, len(line), prompt_digest(prompt), record.get("skip"))
                offset += len(line)
    return index


def check_params(shards: Path, params: dict[str, Any]) -> None:
    """A resumed run must generate exactly as the first one did; otherwise the rows would mix settings."""
    stored = json.loads((shards / PARAMS_FILE).read_text(encoding="utf-8"))
    differ = sorted(k for k in set(stored) | set(params) if stored.get(k) != params.get(k))
    if differ:
        changes = ", ".join(f"{k}: {stored.get(k)!r} -> {params.get(k)!r}" for k in differ)
        raise ValueError(f"{shards} was generated with other settings ({changes}); use another --out or delete it")


def write_params(shards: Path, params: dict[str, Any]) -> None:
    shards.mkdir(parents=True, exist_ok=True)
    path = shards / PARAMS_FILE
    if not path.exists():
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def check_resumed_rows(rows: Sequence[PromptRow], done: dict[str, ShardEntry]) -> None:
    """A row already in the shards must have been generated from the same prompt tokens."""
    for row in rows:
        entry = done.get(row.id)
        if entry is not None and entry.prompt_digest != prompt_digest(row.prompt_ids):
            raise ValueError(
                f"row {row.id!r} in {entry.path} was generated from a different prompt (the prompts or the "
                "tokenizer changed); use another --out or delete the shards"
            )


def run_shard(
    rows: Sequence[PromptRow],
    backend: Any,
    path: Path,
    done: dict[str, ShardEntry],
    chunk_size: int,
    progress: bool = True,
) -> int:
    """Generate this rank's rows that no shard holds yet, appending a chunk at a time; returns rows written."""
    from tqdm.auto import tqdm

    todo = [row for row in rows if row.id not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=path.stem, disable=not progress)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        records = [{"id": r.id, "prompt_ids": r.prompt_ids, "skip": r.skip} for r in chunk if r.skip]
        records += backend([r for r in chunk if r.skip is None]) if any(r.skip is None for r in chunk) else []
        append_records(path, records)
        bar.update(len(chunk))
    bar.close()
    return len(todo)


# ---------------------------------------------------------------- step 5: merge


def _checked_row(record: dict[str, Any], teacher_k: int, where: str) -> dict[str, Any]:
    row = {"id": record["id"], "prompt_ids": record["prompt_ids"], "completion_ids": record["completion_ids"]}
    if not row["prompt_ids"] or not row["completion_ids"]:
        raise ValueError(f"{where}: empty prompt or completion")
    if teacher_k:
        n = len(row["completion_ids"])
        ids, logprobs = record["teacher_topk_ids"], record["teacher_topk_logprobs"]
        if (
            len(ids) != n
            or len(logprobs) != n
            or any(len(a) != teacher_k or len(b) != teacher_k for a, b in zip(ids, logprobs, strict=True))
        ):
            raise ValueError(f"{where}: teacher top-k must be [{n} completion tokens, {teacher_k}]")
        row["teacher_topk_ids"], row["teacher_topk_logprobs"] = ids, logprobs
    return row


def _read_rows(entries: list[ShardEntry], teacher_k: int) -> Iterator[dict[str, Any]]:
    handles: dict[Path, Any] = {}
    try:
        for entry in entries:
            if entry.path not in handles:
                handles[entry.path] = entry.path.open("rb")
            handle = handles[entry.path]
            handle.seek(entry.offset)
            record = json.loads(handle.read(entry.length))
            yield _checked_row(record, teacher_k, f"{entry.path}@{entry.offset}")
    finally:
        for handle in handles.values():
            handle.close()


def check_out_dir(out: Path) -> None:
    """Only a folder this module wrote (or an empty one) may be replaced; refuse anything else up front."""
    if out.exists() and any(out.iterdir()) and not (out / METADATA_FILE).is_file():
        raise FileExistsError(
            f"{out} exists and is not a diffuspec dataset (no {METADATA_FILE}); refusing to replace it"
        )


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an older ``dst`` is renamed aside first and removed after."""
    old = dst.with_name(f"{dst.name}.old-{uuid.uuid4().hex[:8]}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def merge_shards(shards: Path, ids: Sequence[str], out: Path, metadata: dict[str, Any]) -> datasets.Dataset:
    """Write the rows ``ids`` (prompt order) from the shards to ``out`` with ``metadata.json``; atomic."""
    teacher_k = int(metadata["teacher_topk"])
    index = scan_shards(shards)
    missing = [i for i in ids if i not in index]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(ids)} rows have no record in {shards} (first: {missing[:5]}); a process "
            "stopped early: rerun the same command to finish them"
        )
    skipped = {i: index[i].skip for i in ids if index[i].skip is not None}
    kept = [index[i] for i in ids if index[i].skip is None]
    if not kept:
        raise ValueError(f"every prompt was skipped ({next(iter(skipped.values()))}); nothing to save")
    check_out_dir(out)
    work = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        features = dataset_features(teacher_k)
        dataset = datasets.Dataset.from_generator(
            _read_rows,
            gen_kwargs={"entries": kept, "teacher_k": teacher_k},
            features=features,
            cache_dir=str(work / "cache"),
            fingerprint=uuid.uuid4().hex,  # never reuse a cached build: the shards may have changed
        )
        if dataset.features != features or len(dataset) != len(kept):
            raise RuntimeError(f"merged dataset has {len(dataset)} rows / {dataset.features}, expected {len(kept)}")
        dataset.save_to_disk(str(work / "dataset"))
        meta = {**metadata, "rows": len(kept), "skipped": skipped, "columns": list(features)}
        (work / "dataset" / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _replace_dir(work / "dataset", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return datasets.load_from_disk(str(out))


def read_metadata(out: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out) / METADATA_FILE).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the pipeline


def generation_params(config: DataGenerationConfig, eos: tuple[int, ...]) -> dict[str, Any]:
    """Everything that decides a row's content; a resumed run must repeat it exactly."""
    keys = ("verifier", "backend", "dtype", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "teacher_topk")
    return {**{k: getattr(config, k) for k in keys}, "eos_token_ids": list(eos), "chat": config.chat}


def _versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    versions = {"diffuspec": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    versions["datasets"] = datasets.__version__
    return versions


def generate_dataset(config: DataGenerationConfig, state: Any = None) -> Path:
    """Generate, resume or extend the dataset at ``config.out``; call it on every process.

    Rank 0 returns once the dataset is saved, the other ranks as soon as their own shard is complete.
    """
    from accelerate import PartialState
    from transformers import AutoConfig, AutoTokenizer

    state = state or PartialState(cpu=config.cpu or not torch.accelerator.is_available())
    rank, world = state.process_index, state.num_processes
    out, shards = Path(config.out), config.shards

    ###############
    # Step 1: inputs, checked before any model loads
    ###############
    check_out_dir(out)
    check_backend(config, world)
    verifier_path = resolve_local(config.verifier)
    specs = load_prompt_specs(config)
    tokenizer = None if config.prompt_token_ids is not None else AutoTokenizer.from_pretrained(verifier_path)
    chat_template = check_chat_template(specs, tokenizer)
    text_config = AutoConfig.from_pretrained(verifier_path).get_text_config()
    vocab_size, context = int(text_config.vocab_size), getattr(text_config, "max_position_embeddings", None)
    _check(
        config.teacher_topk <= vocab_size, f"teacher_topk ({config.teacher_topk}) exceeds the vocabulary ({vocab_size})"
    )
    eos = resolve_eos_ids(verifier_path, tokenizer)
    params = generation_params(config, eos)

    ###############
    # Step 2: this rank's rows
    ###############
    rows = [prompt_row(s, tokenizer, vocab_size, context, config.max_new_tokens) for s in specs[rank::world]]
    if any(r.skip for r in rows):
        logger.warning(
            "rank %d skips %d prompts too long for the context (listed in metadata)",
            rank,
            sum(bool(r.skip) for r in rows),
        )

    ###############
    # Step 3: shards (resume: drop this rank's torn tail, skip finished ids)
    ###############
    if state.is_main_process:
        write_params(shards, params)
    state.wait_for_everyone()
    check_params(shards, params)
    path = shard_path(shards, rank, world)
    done_marker(shards, rank, world).unlink(missing_ok=True)
    dropped = repair_shard(path)
    if dropped:
        logger.warning("%s: dropped a torn last line (%d bytes) left by a killed run", path, dropped)
    state.wait_for_everyone()
    done = scan_shards(shards)
    check_resumed_rows(rows, done)
    if state.is_main_process and done:
        logger.info("resuming: %d of %d prompts already in %s", sum(s.id in done for s in specs), len(specs), shards)
    state.wait_for_everyone()  # nobody appends while another rank is still scanning

    ###############
    # Step 4: generate
    ###############
    if any(row.id not in done for row in rows):
        backend = build_backend(config, verifier_path, eos, state.device)
        run_shard(rows, backend, path, done, config.chunk_size, progress=state.is_local_main_process)
    done_marker(shards, rank, world).touch()

    ###############
    # Step 5: merge on rank 0 (the other ranks are done)
    ###############
    if state.is_main_process:
        wait_for_shards(shards, world)
        source = {"prompts": config.prompts, "prompt_token_ids": config.prompt_token_ids}
        if config.prompts_dataset is not None:
            source.update(prompts_dataset=config.prompts_dataset, prompts_split=config.prompts_split)
        metadata = {
            "schema": SCHEMA,
            **params,
            "verifier_vocab_size": vocab_size,
            "seed_rule": SEED_RULE,
            "teacher_distribution": TEACHER_DISTRIBUTION if config.teacher_topk else None,
            "chat_template": chat_template,
            "prompt_source": {k: v for k, v in source.items() if v is not None},
            "max_prompts": config.max_prompts,
            "prompts": len(specs),
            "versions": _versions(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        dataset = merge_shards(shards, [s.id for s in specs], out, metadata)
        logger.info("wrote %d rows to %s (%d skipped)", len(dataset), out, len(specs) - len(dataset))
    return out
