"""The settings of one data-generation run (the flags of ``train/generate_data.py``), checked before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..dtypes import DTYPE_NAMES, check_dtype_name


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
    teacher_from_generation: bool = field(
        default=False,
        metadata={
            "help": "--backend transformers: take the top-K from the generation pass's own logits (the same "
            "distributions up to batching's rounding) instead of a teacher-forced pass per row."
        },
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
    dtype: str = field(
        default="auto", metadata={"help": "Verifier weight dtype (auto: as stored).", "choices": DTYPE_NAMES}
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
            not self.teacher_from_generation or self.backend == "transformers",
            "teacher_from_generation reads the logits of --backend transformers' batched generation pass",
        )
        _check(
            self.backend in ("diffuspec", "transformers", "vllm"),
            f"backend must be diffuspec, transformers or vllm, got {self.backend!r}",
        )
        _check(
            self.backend != "transformers" or self.temperature == 0,
            "--backend transformers generates greedily only (batched sampling could not reproduce per-row seeds); "
            "use --backend diffuspec to sample",
        )
        check_dtype_name(self.dtype)
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
