"""Step 3 of data generation: the backends that continue prompts with the verifier.

``DecoderBackend`` (the default) decodes one row at a time with diffuspec's exact plain decoding; ``BatchedBackend``
runs one left-padded transformers ``generate`` per chunk (greedy only); ``VLLMBackend`` when vLLM is installed. Row
``id`` samples with a generator seeded by ``(seed, id)``, so its completion does not depend on sharding or
resumption.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import torch

from ..decoding.loop import SpeculativeDecoder
from ..eos import cut_after_eos
from ..loading import load_causal_lm
from ..training.collator import left_pad
from .config import DataGenerationConfig
from .prompts import PromptRow

SEED_RULE = "row generator seed = blake2b-64('{seed}:{id}') & (2**63 - 1)"
TEACHER_DISTRIBUTION = "top-K of log_softmax(verifier logits) at temperature 1, float32, teacher-forced"
TEACHER_FROM_GENERATION = (
    "top-K of log_softmax(verifier logits) at temperature 1, float32, from the batched generation pass"
)


def row_seed(seed: int, row_id: str) -> int:
    """A per-row seed from (seed, id) alone: the same row samples the same way on any rank, in any run."""
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


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
    ids, values = topk_logprobs(logits, k)
    return ids.tolist(), values.tolist()


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k ids and float32 log-probs of ``logits`` ``[..., V]`` (log_softmax in float32 or wider): the
    teacher's columns, whether from a teacher-forced pass or recorded during generation."""
    logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return ids, values.float()


def make_record(row: PromptRow, completion: list[int], topk: tuple[list, list] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": row.id, "prompt_ids": row.prompt_ids, "completion_ids": completion}
    if topk is not None:
        record["teacher_topk_ids"], record["teacher_topk_logprobs"] = topk
    return record


class DecoderBackend:
    """Plain decoding through our KV-cached verifier, one row at a time: exact and sharding-independent."""

    def __init__(self, model: torch.nn.Module, config: DataGenerationConfig, eos: tuple[int, ...]) -> None:
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


class TopKRecorder:
    """A logits processor that keeps the top-k log-probs of every generation step and changes no score.

    It replaces ``output_logits=True``, which holds ``[B, steps, V]`` float logits until ``generate`` returns
    (1.6 GB for 64 rows x 128 steps of a 49K vocabulary): this keeps ``[B, steps, k]``."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ids, values = topk_logprobs(scores, self.k)
        self.ids.append(ids.cpu())
        self.values.append(values.cpu())
        return scores

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, steps, k]`` ids and log-probs: step t scored ``p(. | prompt, completion[:t])``."""
        return torch.stack(self.ids, dim=1), torch.stack(self.values, dim=1)


class BatchedBackend:
    """Greedy continuations of a whole chunk in one left-padded ``generate`` call: several times faster than batch 1
    on a CPU. Padding changes the floating-point sums, so a near-tie argmax can differ from batch-1 decoding;
    fine for training data, which is why the exact backend stays the default."""

    def __init__(self, model: torch.nn.Module, config: DataGenerationConfig, eos: tuple[int, ...], pad: int) -> None:
        self.model, self.config, self.eos, self.pad = model, config, eos, pad

    def __call__(self, rows: Sequence[PromptRow]) -> list[dict[str, Any]]:
        from transformers import GenerationConfig, LogitsProcessorList

        batch = left_pad([list(row.prompt_ids) for row in rows], self.pad)  # generate derives the positions
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        width = input_ids.shape[1]
        greedy = GenerationConfig(
            do_sample=False,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=list(self.eos) or None,
            pad_token_id=self.pad,
        )
        k, from_generation = self.config.teacher_topk, self.config.teacher_from_generation
        recorder = TopKRecorder(k) if k and from_generation else None
        with torch.inference_mode():
            sequences = self.model.generate(
                input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                generation_config=greedy,
                logits_processor=LogitsProcessorList([recorder] if recorder is not None else []),
            )
        step_ids, step_values = recorder.rows() if recorder is not None else (None, None)
        records = []
        for i, (row, generated) in enumerate(zip(rows, sequences[:, width:].tolist(), strict=True)):
            completion = cut_after_eos(generated, self.eos)  # the rest is padding
            topk = None
            if step_ids is not None:
                topk = step_ids[i, : len(completion)].tolist(), step_values[i, : len(completion)].tolist()
            elif k:
                topk = teacher_topk(self.model, row.prompt_ids, completion, k)
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
    model = load_causal_lm(verifier_path, dtype=config.dtype, device_map=device)
    if config.backend == "transformers":
        return BatchedBackend(model, config, eos, pad=eos[0] if eos else 0)
    return DecoderBackend(model, config, eos)
